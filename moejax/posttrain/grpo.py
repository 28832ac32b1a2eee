"""GRPO: group-relative policy optimisation (Shao et al. 2024, DeepSeekMath), for MoELM.

Each step draws ``prompts_per_step`` prompts, samples ``group_size`` completions of each with the
KV-cache sampler (``evaluation/decoding.py``), scores them with a reward function, and normalises
the rewards within each group: ``A = (r - mean_group) / (std_group + eps)``; every token of a
completion gets its completion's advantage. One jitted optimisation step per batch minimises
the token-level mean over all completion tokens of

  -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A) + kl_coef * KL_k3

with ``ratio = pi / pi_old`` (1 with one step per batch, but its gradient is the policy
gradient) and the k3 estimator ``KL = exp(ref - logp) - (ref - logp) - 1`` against the frozen
starting model. Log-probabilities are those of the sampling distribution,
``softmax(logits / temperature)``, restricted to ids below ``vocab_limit``. The optimisation step
is pre-training's (``training/step.make_train_step``) with this objective: the model's auxiliary
MoE losses are weighted as in its pre-training, the MoE step counter continues from the
pre-training's last step (top-k schedule, router noise) and aux-free balancing biases keep
following the loads.

  state, history = train_grpo(graphdef, state, prompts, reward_fn, cfg, vocab_limit=V)

The algorithm knows nothing about the suites: prompts are token ids and ``reward_fn(i, ids)``
scores completion ``ids`` of prompt ``i`` (``posttrain/study.py`` builds both from the
reasoning suite). ``cfg`` is ``configs/grpo.py``'s config.

Axes: P prompts of a step, G completions per prompt, B = P * G rows, T sequence, V vocabulary.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from moejax.evaluation import batching
from moejax.evaluation import decoding
from moejax.training.optimizer import make_optimizer
from moejax.training.state import TrainState
from moejax.training.step import make_train_step

RewardFn = Callable[[int, Sequence[int]], float]


def group_advantages(rewards_PG: jax.Array, eps: float = 1e-4) -> jax.Array:
  """``(r - mean) / (std + eps)`` within each group (row); equal rewards give zeros."""
  rewards_PG = jnp.asarray(rewards_PG, jnp.float32)
  mean_P1 = jnp.mean(rewards_PG, axis=1, keepdims=True)
  std_P1 = jnp.std(rewards_PG, axis=1, keepdims=True)
  return (rewards_PG - mean_P1) / (std_P1 + eps)


def token_logprobs(model: nnx.Module, batch: dict[str, jax.Array], temperature: float,
                   vocab_limit: int | None):
  """Log-probabilities [B, T] of ``batch["targets"]`` under ``softmax(logits / temperature)``
  over ids below ``vocab_limit``, and the model's aux dict."""
  logits_BTV, aux = model(batch["inputs"], None, batch["real"])
  if vocab_limit is not None and vocab_limit < logits_BTV.shape[-1]:
    logits_BTV = jnp.where(jnp.arange(logits_BTV.shape[-1]) < vocab_limit, logits_BTV, -1e9)
  logp_BTV = jax.nn.log_softmax(logits_BTV / temperature, axis=-1)
  logp_BT = jnp.take_along_axis(logp_BTV, batch["targets"][..., None], axis=-1)[..., 0]
  return logp_BT, aux


def grpo_loss(logp_BT, old_logp_BT, ref_logp_BT, advantages_B, mask_BT, *, clip_eps: float,
              kl_coef: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clipped policy-gradient loss plus ``kl_coef`` * k3 KL, averaged over completion tokens."""
  ratio_BT = jnp.exp(logp_BT - old_logp_BT)
  adv_B1 = advantages_B[:, None]
  clipped_BT = jnp.clip(ratio_BT, 1.0 - clip_eps, 1.0 + clip_eps)
  pg_BT = -jnp.minimum(ratio_BT * adv_B1, clipped_BT * adv_B1)
  log_ref_ratio_BT = ref_logp_BT - logp_BT
  kl_BT = jnp.exp(log_ref_ratio_BT) - log_ref_ratio_BT - 1.0
  tokens = jnp.maximum(jnp.sum(mask_BT), 1.0)

  def mean(x_BT):
    return jnp.sum(x_BT * mask_BT) / tokens

  loss = mean(pg_BT + kl_coef * kl_BT)
  clipped = (jnp.abs(ratio_BT - 1.0) > clip_eps).astype(jnp.float32)
  return loss, {"pg_loss": mean(pg_BT), "kl": mean(kl_BT), "clip_fraction": mean(clipped)}


def grpo_objective(*, temperature: float, clip_eps: float, kl_coef: float,
                   vocab_limit: int | None):
  """The train-step objective ``(model, batch) -> (loss, aux)``; the batch carries the frozen
  reference model's log-probabilities as ``ref_logp``."""

  def objective(model, batch):
    logp_BT, aux = token_logprobs(model, batch, temperature, vocab_limit)
    loss, metrics = grpo_loss(logp_BT, jax.lax.stop_gradient(logp_BT), batch["ref_logp"],
                              batch["advantages"], batch["mask"], clip_eps=clip_eps,
                              kl_coef=kl_coef)
    return loss, {**aux, **metrics}

  return objective


def make_grpo_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                   aux_weights: dict[str, float], *, temperature: float, clip_eps: float,
                   kl_coef: float, vocab_limit: int | None, step_offset: int = 0,
                   schedule: optax.Schedule | None = None) -> Callable:
  """``step(state, ref_params, batch) -> (state, metrics)``: one optimisation step on a batch of
  sampled completions (``pack_batch``); ``ref_params`` is the frozen reference model."""
  train_step = make_train_step(
      graphdef, tx, schedule or (lambda _: 0.0),
      grpo_objective(temperature=temperature, clip_eps=clip_eps, kl_coef=kl_coef,
                     vocab_limit=vocab_limit), aux_weights, step_offset=step_offset)

  def step(state: TrainState, ref_params, batch):
    reference = nnx.merge(graphdef, ref_params, state.model_state, copy=True)
    ref_logp_BT, _ = token_logprobs(reference, batch, temperature, vocab_limit)
    return train_step(state, {**batch, "ref_logp": jax.lax.stop_gradient(ref_logp_BT)})

  return step


def pack_batch(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
               advantages_B: np.ndarray, length: int) -> dict[str, np.ndarray]:
  """Teacher-forcing arrays of ``prompt + completion`` rows, right-padded to ``length`` + 1.

  ``mask`` is 1 at the positions that predict a completion token (EOS included).
  """
  rows = len(prompts)
  sequences = [tuple(p) + tuple(c) for p, c in zip(prompts, completions, strict=True)]
  inputs_BT, real_BT = batching.right_pad([s[:-1] for s in sequences], rows, length)
  targets_BT, _ = batching.right_pad([s[1:] for s in sequences], rows, length)
  mask_BT = np.zeros((rows, length), np.float32)
  for b, (prompt, completion) in enumerate(zip(prompts, completions)):
    mask_BT[b, len(prompt) - 1:len(prompt) - 1 + len(completion)] = 1.0
  return {"inputs": inputs_BT, "targets": targets_BT, "real": real_BT, "mask": mask_BT,
          "advantages": np.asarray(advantages_B, np.float32)}


def init_state(params, model_state, tx: optax.GradientTransformation) -> TrainState:
  """A fresh train state for post-training (step 0, new optimizer moments)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    model_state=model_state)


def _window_mean(values: Sequence[float], window: int, last: bool) -> float:
  values = list(values)[-window:] if last else list(values)[:window]
  return float(np.mean(values)) if values else float("nan")


def summarize(history: Sequence[dict[str, float]], window: int) -> dict[str, float]:
  """Mean reward over the first and last ``window`` steps, and the last step's KL."""
  rewards = [h["reward"] for h in history]
  return {"reward_start": _window_mean(rewards, window, last=False),
          "reward_end": _window_mean(rewards, window, last=True),
          "kl_end": float(history[-1]["kl"]) if history else float("nan"),
          "steps": float(len(history))}


def train_grpo(graphdef: nnx.GraphDef, params, model_state,
               prompts: Sequence[Sequence[int]], reward_fn: RewardFn,
               cfg: ml_collections.ConfigDict, *, max_new_tokens: int,
               vocab_limit: int | None = None, aux_weights: dict[str, float] | None = None,
               step_offset: int = 0, progress: bool = True) -> tuple[Any, list[dict[str, float]]]:
  """Runs ``cfg.steps`` GRPO steps from ``params``; returns (final params, per-step history).

  Args:
    graphdef, params, model_state: the model (``training/state.split_model``).
    prompts: the prompt pool (token ids, as the model reads them: ``[PAD] + encode(prompt)``).
    reward_fn: ``reward_fn(i, completion_ids)`` for prompt ``i``; ids end with EOS if sampled.
    cfg: ``configs/grpo.py`` (steps, prompts_per_step, group_size, temperature, clip_eps,
      kl_coef, adv_eps, seed, optim).
    max_new_tokens: most tokens sampled per completion.
    vocab_limit: ids >= this are never sampled (the tokenizer's vocabulary size).
    aux_weights: auxiliary MoE loss weights (``training.task.aux_loss_weights`` of the run).
    step_offset: the pre-training's steps (the MoE step counter continues from there).
    progress: show a tqdm bar.
  """
  num_prompts, group = min(cfg.prompts_per_step, len(prompts)), cfg.group_size
  rows = num_prompts * group
  prompt_bucket = batching.bucket_length(max(len(p) for p in prompts))
  length = batching.bucket_length(prompt_bucket + max_new_tokens - 1)
  tx, schedule = make_optimizer(cfg.optim, cfg.steps)
  step_fn = jax.jit(make_grpo_step(graphdef, tx, aux_weights or {}, temperature=cfg.temperature,
                                   clip_eps=cfg.clip_eps, kl_coef=cfg.kl_coef,
                                   vocab_limit=vocab_limit, step_offset=step_offset,
                                   schedule=schedule), donate_argnums=0)
  # The step donates its state: train a copy, keep the caller's params as the frozen reference.
  state = init_state(*jax.tree.map(jnp.copy, (params, model_state)), tx)
  ref_params = params
  history: list[dict[str, float]] = []
  bar = tqdm(range(cfg.steps), desc="grpo", unit="step", disable=not progress)
  for step in bar:
    chosen_P = np.random.default_rng([cfg.seed, step]).choice(len(prompts), num_prompts,
                                                              replace=False)
    row_prompts = [prompts[i] for i in chosen_P for _ in range(group)]
    keys = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), step), rows)
    completions = decoding.generate(
        (graphdef, state.params, state.model_state), row_prompts, max_new_tokens=max_new_tokens,
        temperature=cfg.temperature, keys=keys, batch_size=rows, vocab_limit=vocab_limit,
        min_bucket=prompt_bucket)
    rewards_PG = np.array([reward_fn(int(chosen_P[b // group]), ids)
                           for b, ids in enumerate(completions)], np.float32).reshape(-1, group)
    advantages_B = np.asarray(group_advantages(rewards_PG, cfg.adv_eps)).reshape(rows)
    batch = pack_batch(row_prompts, completions, advantages_B, length)
    state, metrics = step_fn(state, ref_params, {k: jnp.asarray(v) for k, v in batch.items()})
    row = {k: float(v) for k, v in jax.device_get(metrics).items()}
    row.update(step=step + 1, reward=float(rewards_PG.mean()),
               groups_with_signal=float(np.mean(rewards_PG.std(axis=1) > 0)),
               completion_tokens=float(np.mean([len(c) for c in completions])))
    history.append(row)
    bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.4f}")
  bar.close()
  return state.params, history
