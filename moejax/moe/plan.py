"""Dispatch planning shared by every strategy: capacity, priority order, expert-sorted choices.

A token-choice (t, k) is an *assignment*; ``a = t * K + k`` indexes the A = T*K of them.
Assignments compete for an expert's capacity in *priority order*: all first choices before any
second choice (GShard, Lepikhin et al. 2020), and within a choice rank the tokens in batch order,
or, with Batch Prioritized Routing (V-MoE, Riquelme et al. 2021), by decreasing top gate.
``sort_assignments`` sorts the assignments by (expert, priority) once; a choice's *rank* (its
position within its expert) decides whether it fits the capacity (``fit_capacity``).

Axes: T tokens, K choice slots, A = T*K assignments, E experts, C capacity.
"""

from __future__ import annotations

import math
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from moejax.moe.routers import Routing


def capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: Optional[float],
             multiple_of: int = 1) -> int:
  """Rows per expert: ceil(T*K*cf/E) rounded up to ``multiple_of`` (V-MoE uses 4), at most T;
  ``None`` means dropless (every token fits: C = T)."""
  if capacity_factor is None:
    return num_tokens
  rows = math.ceil(num_tokens * top_k * capacity_factor / num_experts)
  rows = -(-rows // multiple_of) * multiple_of
  return max(1, min(num_tokens, rows))


@flax.struct.dataclass
class SortedAssignments:
  """The active assignments sorted by (expert, priority); inactive ones come last.

  assignment_S: [A] int32, assignment index a = t*K + k of each sorted position.
  sizes_E: [E] int32, active assignments per expert.
  starts_E: [E] int32, first sorted position of each expert.
  num_choices: K (static), so that token = a // K.
  """
  assignment_S: jax.Array
  sizes_E: jax.Array
  starts_E: jax.Array
  num_choices: int = flax.struct.field(pytree_node=False, default=1)


def token_priority_order(routing: Routing, batch_prioritized: bool) -> jax.Array:
  """[T] tokens in the order they claim capacity: batch order, or by decreasing top combine
  weight (Batch Prioritized Routing)."""
  num_tokens = routing.expert_ids_TK.shape[0]
  if not batch_prioritized:
    return jnp.arange(num_tokens, dtype=jnp.int32)
  top_gate_T = jnp.max(jnp.where(routing.active(), routing.weights_TK, -1.0), axis=-1)
  return jnp.argsort(-jax.lax.stop_gradient(top_gate_T), stable=True).astype(jnp.int32)


def sort_assignments(routing: Routing, batch_prioritized: bool = False) -> SortedAssignments:
  """Stable-sorts the assignments, listed in priority order, by expert (inactive ones last)."""
  num_tokens, num_choices = routing.expert_ids_TK.shape
  num_experts = routing.num_experts
  order_T = token_priority_order(routing, batch_prioritized)
  key_TK = jnp.where(routing.active(), routing.expert_ids_TK, num_experts)
  key_P = key_TK[order_T].T.reshape(-1)  # priority order: choice-major, then token order
  sorted_P = jnp.argsort(key_P, stable=True).astype(jnp.int32)
  assignment_S = order_T[sorted_P % num_tokens] * num_choices + sorted_P // num_tokens
  sizes_E = jnp.bincount(key_TK.reshape(-1), length=num_experts + 1)[:num_experts]
  sizes_E = sizes_E.astype(jnp.int32)
  return SortedAssignments(assignment_S=assignment_S, sizes_E=sizes_E,
                           starts_E=jnp.cumsum(sizes_E) - sizes_E, num_choices=num_choices)


def assignment_ranks(routing: Routing, plan: SortedAssignments) -> jax.Array:
  """[T, K] position of each choice within its expert in priority order (inactive: A)."""
  num_assign = routing.expert_ids_TK.size
  expert_S = jnp.clip(routing.expert_ids_TK.reshape(-1)[plan.assignment_S], 0,
                      routing.num_experts - 1)
  rank_S = jnp.arange(num_assign, dtype=jnp.int32) - plan.starts_E[expert_S]
  active_S = routing.active().reshape(-1)[plan.assignment_S]
  rank_S = jnp.where(active_S, rank_S, num_assign)
  rank_A = jnp.zeros((num_assign,), jnp.int32).at[plan.assignment_S].set(
      rank_S, unique_indices=True)
  return rank_A.reshape(routing.expert_ids_TK.shape)


def dropped_fraction(plan: SortedAssignments, capacity_rows: Optional[int]) -> jax.Array:
  """Fraction of the active assignments past ``capacity_rows`` rows per expert (None: 0)."""
  if capacity_rows is None:
    return jnp.zeros((), jnp.float32)
  kept = jnp.sum(jnp.minimum(plan.sizes_E, capacity_rows))
  return 1.0 - kept / jnp.maximum(jnp.sum(plan.sizes_E), 1)


def fit_capacity(routing: Routing, capacity_rows: int, batch_prioritized: bool):
  """(the plan, [T, K] rank of each choice in its expert, [T, K] whether it is active and
  fits ``capacity_rows``)."""
  plan = sort_assignments(routing, batch_prioritized)
  rank_TK = assignment_ranks(routing, plan)
  return plan, rank_TK, routing.active() & (rank_TK < capacity_rows)


def drop_over_capacity(routing: Routing, capacity_rows: int, batch_prioritized: bool):
  """The routing with the choices past each expert's capacity deactivated (weight 0), and the
  dropped fraction of the active choices."""
  plan, _, kept_TK = fit_capacity(routing, capacity_rows, batch_prioritized)
  dropped = dropped_fraction(plan, capacity_rows)
  routing = routing.replace(weights_TK=jnp.where(kept_TK, routing.weights_TK, 0.0),
                            active_TK=kept_TK)
  return routing, dropped


def drop_over_group_capacity(routing: Routing, group_size: int, capacity_rows: int,
                             batch_prioritized: bool):
  """``drop_over_capacity`` for each group of ``group_size`` consecutive tokens on its own
  (V-MoE's per-group routing: every group has ``capacity_rows`` rows per expert); the dropped
  fraction is the mean over groups."""
  num_tokens = routing.expert_ids_TK.shape[0]
  if num_tokens % group_size:
    raise ValueError(f"group_size={group_size} does not divide the {num_tokens} tokens of the "
                     "batch (config.model.moe.group_size)")
  split = lambda a: a.reshape(num_tokens // group_size, group_size, *a.shape[1:])
  kept_G, dropped_G = jax.vmap(lambda r: drop_over_capacity(r, capacity_rows, batch_prioritized)
                               )(jax.tree.map(split, routing))
  kept = jax.tree.map(lambda a: a.reshape(num_tokens, *a.shape[2:]), kept_G)
  return kept, jnp.mean(dropped_G)
