"""GRPO post-training of finished language-model runs (moejax/posttrain/). Presets: ``tiny``
(the CPU study: well under a minute per d64 model on 2 cores), ``smoke`` (seconds, tests).

  python -m experiments.reproduce_optimal_sparsity --preset=tiny --workdir=DIR --grpo \
      --grpo_config=configs/grpo.py:tiny --grpo_config.steps=60

Evaluation afterwards uses the run's own ``config.eval`` settings.
"""

from __future__ import annotations

import ml_collections

PRESETS = ("smoke", "tiny")


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} for configs/grpo.py; choose from {PRESETS}")
  cfg = ml_collections.ConfigDict(dict(
      steps=30,
      prompts_per_step=8,      # reasoning training prompts per step (P)
      group_size=8,            # completions sampled per prompt (G)
      temperature=1.0,         # sampling temperature (log-probs use the same scaling)
      max_new_tokens=0,        # 0: the longest reference answer of the training prompts,
                               # rounded up to a power of two (tiny: 64)
      clip_eps=0.2,            # PPO ratio clip
      kl_coef=0.04,            # weight of the k3 KL to the frozen pre-trained model
      adv_eps=1e-4,            # advantages (r - mean) / (std + adv_eps) within each group
      reward_window=5,         # grpo_reward_start / _end average this many first / last steps
      seed=0,
      progress_bar=True,
  ))
  # moejax.training.optimizer.make_optimizer fields: constant lr (lr == min_lr, no warmup).
  cfg.optim = ml_collections.ConfigDict(dict(
      lr=3e-4, min_lr=3e-4, warmup_steps=0, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0,
      grad_clip=1.0))
  if preset == "smoke":
    cfg.update(steps=3, prompts_per_step=4, group_size=4, max_new_tokens=32, reward_window=1)
  return cfg
