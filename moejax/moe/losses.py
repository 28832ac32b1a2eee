"""Auxiliary router losses and routing metrics, returned as values (never hidden in state).

Axes: T tokens, E experts, K choices per token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.moe.routers import Routing


def expert_counts(routing: Routing) -> jax.Array:
  """Number of token-choices assigned to each expert, [E] float32."""
  one_hot_TKE = jax.nn.one_hot(routing.expert_ids_TK, routing.num_experts, dtype=jnp.float32)
  return jnp.sum(one_hot_TKE, axis=(0, 1))


def load_balance_loss(routing: Routing) -> jax.Array:
  """Switch Transformer balance loss (Fedus et al. 2021): E * sum_i f_i * P_i.

  f_i is the fraction of the T*K choices routed to expert i, P_i the mean router probability
  of i. It equals 1 under perfectly uniform routing.
  """
  num_choices = routing.expert_ids_TK.size
  fraction_E = jax.lax.stop_gradient(expert_counts(routing)) / num_choices
  mean_prob_E = jnp.mean(routing.probs_TE, axis=0)
  return routing.num_experts * jnp.sum(fraction_E * mean_prob_E)


def router_z_loss(routing: Routing) -> jax.Array:
  """ST-MoE z-loss (Zoph et al. 2022): mean squared log-partition of the router logits."""
  return jnp.mean(jnp.square(jax.nn.logsumexp(routing.logits_TE, axis=-1)))


def routing_metrics(routing: Routing) -> dict[str, jax.Array]:
  """Load statistics: max/mean expert load and router entropy (nats, mean over tokens)."""
  counts_E = expert_counts(routing)
  entropy_T = -jnp.sum(routing.probs_TE * jnp.log(routing.probs_TE + 1e-9), axis=-1)
  return {
      "max_load": jnp.max(counts_E) / jnp.maximum(jnp.mean(counts_E), 1e-9),
      "router_entropy": jnp.mean(entropy_T),
  }
