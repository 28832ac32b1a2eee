"""Auxiliary router losses, the aux-free bias update and routing metrics: returned as values,
never hidden in module state. The model weighs the losses with coefficients from the config.

Axes: T tokens, E experts, K choice slots per token, G groups (sequences) of tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
  from moejax.moe.routers import Routing


def _active_one_hot(routing: Routing) -> jax.Array:
  """[T, E] float32: number of active choices of token t on expert e (0 or 1)."""
  num_tokens = routing.expert_ids_TK.shape[0]
  rows_TK = jnp.broadcast_to(jnp.arange(num_tokens)[:, None], routing.expert_ids_TK.shape)
  return jnp.zeros((num_tokens, routing.num_experts), jnp.float32).at[
      rows_TK, routing.expert_ids_TK].add(routing.active().astype(jnp.float32))


def expert_load(routing: Routing) -> jax.Array:
  """Active token-choices assigned to each expert, [E] float32 (no gradient)."""
  return jax.lax.stop_gradient(jnp.sum(_active_one_hot(routing), axis=0))


def load_balance_loss(routing: Routing, group_size: Optional[int] = None) -> jax.Array:
  """Switch Transformer balance loss (Fedus et al. 2021): E * sum_i f_i * P_i.

  f_i is the fraction of the active choices routed to expert i, P_i the mean router probability
  of i. It equals 1 under perfectly uniform routing. DiT-MoE's expert-level balance loss
  (Fei et al. 2024), sum_i f'_i P_i with f'_i = E/(K T) * #tokens to i, is the same quantity.
  With ``group_size`` (e.g. the sequence length) the loss is computed per group of consecutive
  tokens and averaged: the sequence-wise balance of DeepSeek-V3 and of the DiT-MoE code.
  """
  counts_TE = jax.lax.stop_gradient(_active_one_hot(routing))
  num_tokens, num_experts = counts_TE.shape
  group = num_tokens if group_size is None else group_size
  counts_GTE = counts_TE.reshape(-1, group, num_experts)
  probs_GTE = routing.probs_TE.reshape(-1, group, num_experts)
  fraction_GE = jnp.sum(counts_GTE, axis=1) / jnp.maximum(
      jnp.sum(counts_GTE, axis=(1, 2))[:, None], 1.0)
  per_group_G = num_experts * jnp.sum(fraction_GE * jnp.mean(probs_GTE, axis=1), axis=-1)
  return jnp.mean(per_group_G)


def router_z_loss(routing: Routing) -> jax.Array:
  """ST-MoE z-loss (Zoph et al. 2022): mean squared log-partition of the router logits."""
  return jnp.mean(jnp.square(jax.nn.logsumexp(routing.logits_TE, axis=-1)))


def squared_cv(values_E) -> jax.Array:
  """Squared coefficient of variation over the last axis, var / mean^2 (V-MoE's balance
  measure)."""
  return jnp.var(values_E, axis=-1) / (jnp.square(jnp.mean(values_E, axis=-1)) + 1e-10)


def _group_squared_cv(values_TE, group_size: Optional[int]) -> jax.Array:
  """Mean over groups of ``group_size`` consecutive tokens (None: one group) of the squared
  cv over experts of the per-expert sums."""
  num_tokens, num_experts = values_TE.shape
  group = num_tokens if group_size is None else group_size
  return jnp.mean(squared_cv(jnp.sum(values_TE.reshape(-1, group, num_experts), axis=1)))


def importance_loss(routing: Routing, group_size: Optional[int] = None) -> jax.Array:
  """V-MoE importance loss (Riquelme et al. 2021): cv^2 over experts of sum_t p_te, per
  group of ``group_size`` tokens (V-MoE routes and balances each group on its own)."""
  return _group_squared_cv(routing.probs_TE, group_size)


def noisy_load_loss(logits_TE, threshold_T1, noise_std: float,
                    group_size: Optional[int] = None) -> jax.Array:
  """V-MoE load loss: cv^2 over experts of sum_t P(logit_te + fresh noise > threshold_t), the
  threshold being the token's k-th largest noisy logit (Shazeer et al. 2017; V-MoE eq. A.4),
  per group of ``group_size`` tokens."""
  noise_to_win_TE = (jax.lax.stop_gradient(threshold_T1) - logits_TE) / noise_std
  prob_selected_TE = 1.0 - jax.scipy.stats.norm.cdf(noise_to_win_TE)
  return _group_squared_cv(prob_selected_TE, group_size)


def aux_free_bias_update(bias_E, load_E, rate: float) -> jax.Array:
  """Aux-loss-free balancing (Wang et al. 2024, eq. 3): b_i <- b_i + u * sign(mean load - load_i).

  Overloaded experts lose selection bias, underloaded ones gain it; no gradient is involved.
  Leading axes (e.g. stacked layers, [L, E]) are independent: the mean is over experts.
  """
  error_E = jnp.mean(load_E, axis=-1, keepdims=True) - load_E
  return (bias_E + rate * jnp.sign(error_E)).astype(bias_E.dtype)


def routing_metrics(routing: Routing, seq_len: Optional[int] = None, chunk_size: int = 8,
                    detailed: bool = False) -> dict[str, jax.Array]:
  """Scalar routing statistics.

  Always: max/mean expert load and router entropy (nats, mean over tokens). ``detailed`` adds
  min/mean load, the load cv^2, the importance cv^2 (the quantity of ``importance_loss``, here a
  metric whatever the router), active experts per token, token-level activation sparsity
  (1 - mean fraction of experts a token uses) and chunk-level sparsity (1 - mean fraction of
  experts used by a chunk of ``chunk_size`` consecutive tokens of one sequence; BlockFFN,
  Song et al. 2025).
  """
  used_TE = jax.lax.stop_gradient(_active_one_hot(routing))
  load_E = jnp.sum(used_TE, axis=0)
  mean_load = jnp.maximum(jnp.mean(load_E), 1e-9)
  entropy_T = -jnp.sum(routing.probs_TE * jnp.log(routing.probs_TE + 1e-9), axis=-1)
  metrics = {"max_load": jnp.max(load_E) / mean_load, "router_entropy": jnp.mean(entropy_T)}
  if detailed:
    num_tokens, num_experts = used_TE.shape
    seq_len = seq_len or num_tokens
    chunk = min(chunk_size, seq_len)
    usable = seq_len // chunk * chunk
    used_BSE = used_TE.reshape(-1, seq_len, num_experts)[:, :usable]
    chunk_used = jnp.max(used_BSE.reshape(used_BSE.shape[0], -1, chunk, num_experts), axis=2)
    metrics.update({
        "min_load": jnp.min(load_E) / mean_load,
        "load_cv2": squared_cv(load_E),
        "importance_cv2": importance_loss(routing),
        "active_experts": jnp.mean(jnp.sum(used_TE, axis=-1)),
        "token_sparsity": 1.0 - jnp.mean(used_TE),
        "chunk_sparsity": 1.0 - jnp.mean(chunk_used),
    })
  return metrics
