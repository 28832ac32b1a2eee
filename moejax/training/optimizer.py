"""AdamW with linear warmup and cosine decay, global-norm clipping (the study's recipe); with
``optim.ema_decay`` an EMA of the parameters in the optimizer state (training/ema.py)."""

from __future__ import annotations

import jax
import ml_collections
import optax

from moejax.training.ema import with_param_ema


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """0 -> lr over ``warmup_steps``, then cosine to ``min_lr`` at ``total_steps``."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.lr, warmup_steps=optim.warmup_steps,
      decay_steps=total_steps, end_value=optim.min_lr)


def _decay_mask(params):
  """Weight decay on matrices only: norm scales are excluded (as in Megatron-LM)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any("norm" in str(getattr(k, "key", k)) for k in path), params)


def make_optimizer(optim: ml_collections.ConfigDict,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = learning_rate_schedule(optim, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(optim.grad_clip),
      optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                  weight_decay=optim.weight_decay, mask=_decay_mask),
  )
  return with_param_ema(tx, optim.get("ema_decay")), schedule
