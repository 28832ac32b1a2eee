"""Dispatch strategies: route tokens to experts, run them, and combine the outputs.

Every strategy has the signature ``strategy(x_TD, routing, experts, **options) -> (y_TD, stats)``
where ``experts(x_GCD, expert_of_group_G)`` runs expert ``expert_of_group_G[g]`` on group g
(see experts.py) and ``stats`` holds at least ``dropped_fraction``. They compute the same
function (up to dropped tokens when capacity is finite); tests check values and gradients
against a per-token reference.

Axes: T tokens, D d_model, E experts, K choices per token, C capacity (rows per expert),
A = T*K assignments, M padded assignment rows, N blocks of R rows.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from moejax.moe.routers import Routing

ExpertFn = Callable[..., jax.Array]


def capacity(num_tokens: int, top_k: int, num_experts: int,
             capacity_factor: Optional[float]) -> int:
  """Rows per expert: ceil(T*K*cf/E); ``None`` means dropless (every token fits: C = T)."""
  if capacity_factor is None:
    return num_tokens
  return max(1, min(num_tokens, math.ceil(num_tokens * top_k * capacity_factor / num_experts)))


def einsum_dispatch(x_TD, routing: Routing, experts: ExpertFn, *,
                    capacity_factor: Optional[float] = None):
  """GShard-style one-hot dispatch and combine tensors [T, E, C]: the readable reference.

  Priority: all first choices fill the experts before any second choice (GShard); a choice
  beyond an expert's capacity is dropped (the token keeps its residual path only).
  Memory is O(T*E*C), so dropless use (C = T) is for small T only.
  """
  num_tokens, top_k = routing.expert_ids_TK.shape
  num_experts = routing.num_experts
  cap = capacity(num_tokens, top_k, num_experts, capacity_factor)
  one_hot_KTE = jax.nn.one_hot(routing.expert_ids_TK.T, num_experts, dtype=jnp.int32)
  # Position of each choice inside its expert, counting choices in (k, t) order.
  position_KTE = jnp.cumsum(one_hot_KTE.reshape(-1, num_experts), axis=0).reshape(
      one_hot_KTE.shape) - 1
  position_KT = jnp.sum(position_KTE * one_hot_KTE, axis=-1)
  kept_KT = position_KT < cap
  slot_KTC = jax.nn.one_hot(jnp.where(kept_KT, position_KT, cap), cap, dtype=x_TD.dtype)
  dispatch_TEC = jnp.einsum("kte,ktc->tec", one_hot_KTE.astype(x_TD.dtype), slot_KTC)
  combine_TEC = jnp.einsum("kte,ktc,kt->tec", one_hot_KTE.astype(jnp.float32),
                           slot_KTC.astype(jnp.float32), routing.weights_TK.T)
  x_ECD = jnp.einsum("tec,td->ecd", dispatch_TEC, x_TD)
  y_ECD = experts(x_ECD, None)
  y_TD = jnp.einsum("tec,ecd->td", combine_TEC.astype(y_ECD.dtype), y_ECD)
  dropped = 1.0 - jnp.mean(kept_KT.astype(jnp.float32))
  return y_TD.astype(x_TD.dtype), {"dropped_fraction": dropped}


def default_block_rows(num_assignments: int, num_experts: int) -> int:
  """Rows per block for ``sorted``: large enough for efficient matmuls, small enough that the
  padding (at most E*(R-1) rows) stays a fraction of the A real rows."""
  rows = num_assignments // (4 * num_experts)
  return int(min(512, max(8, 2 ** max(0, int(math.log2(max(rows, 1)))))))


def sorted_dispatch(x_TD, routing: Routing, experts: ExpertFn, *,
                    block_rows: Optional[int] = None):
  """Dropless: sort the T*K choices by expert, pad each expert's rows to a multiple of R,
  and run one grouped matmul over blocks of R rows that each belong to a single expert.

  Static shapes: the padded buffer always has M = roundup(A + E*(R-1), R) rows.
  """
  num_tokens, top_k = routing.expert_ids_TK.shape
  num_experts = routing.num_experts
  num_assign = num_tokens * top_k
  rows = block_rows or default_block_rows(num_assign, num_experts)
  num_blocks = -(-(num_assign + num_experts * (rows - 1)) // rows)

  expert_A = routing.expert_ids_TK.reshape(-1)
  order_A = jnp.argsort(expert_A, stable=True)
  sorted_expert_A = expert_A[order_A]
  token_A = order_A // top_k
  sizes_E = jnp.bincount(expert_A, length=num_experts)
  padded_sizes_E = -(-sizes_E // rows) * rows
  padded_end_E = jnp.cumsum(padded_sizes_E)
  rank_A = jnp.arange(num_assign) - (jnp.cumsum(sizes_E) - sizes_E)[sorted_expert_A]
  dest_A = (padded_end_E - padded_sizes_E)[sorted_expert_A] + rank_A

  x_MD = jnp.zeros((num_blocks * rows, x_TD.shape[-1]), x_TD.dtype).at[dest_A].set(
      x_TD[token_A], unique_indices=True)
  block_start_N = jnp.arange(num_blocks) * rows
  expert_of_block_N = jnp.minimum(
      jnp.searchsorted(padded_end_E, block_start_N, side="right"), num_experts - 1)
  y_NRD = experts(x_MD.reshape(num_blocks, rows, -1), expert_of_block_N)
  y_AD = y_NRD.reshape(num_blocks * rows, -1)[dest_A]
  weights_A = routing.weights_TK.reshape(-1)[order_A]
  y_TD = jnp.zeros_like(x_TD, dtype=jnp.float32).at[token_A].add(
      y_AD.astype(jnp.float32) * weights_A[:, None])
  return y_TD.astype(x_TD.dtype), {"dropped_fraction": jnp.zeros((), jnp.float32)}


STRATEGIES: dict[str, Callable] = {
    "einsum": einsum_dispatch,
    "sorted": sorted_dispatch,
}


def dispatch(strategy: str, x_TD, routing: Routing, experts: ExpertFn, **options):
  """Runs the named strategy; ``options`` are passed through (e.g. capacity_factor)."""
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown dispatch strategy {strategy!r}; known: {sorted(STRATEGIES)}")
  return STRATEGIES[strategy](x_TD, routing, experts, **options)
