"""Dispatch strategies: route tokens to experts, run them, and combine the outputs.

Every strategy has the signature
  ``strategy(x_TD, routing, experts, *, capacity_factor=None, batch_prioritized=False,
             rows_per_expert=None) -> (y_TD, stats)``
where ``experts(x, matmul)`` runs the expert FFN with a grouped matmul the strategy supplies
(experts.py) and ``stats`` holds ``dropped_fraction``. ``capacity_factor=None`` is dropless;
otherwise each expert keeps C = ceil(T*K*cf/E) choices in priority order (plan.py) and the rest
are dropped (the token keeps its residual path). All strategies compute the same function; the
tests check values and gradients against a per-token loop.

  einsum      GShard one-hot dispatch/combine tensors [T, E, C] (Lepikhin et al. 2020): the
              readable reference; O(T*E*C) memory, so dropless use (C = T) is for small T only.
  sorted      sort the choices by expert; the first ``rows_per_expert`` rows of every expert run
              as a padded batch [E, C, D] through ``expert_matmul`` (experts.py; fast when
              routing is balanced); with a capacity factor that is all; dropless, the overflow
              rows run exactly in a second pass over blocks of one expert each, whose loop
              length follows the actual overflow (blocks.py). Combine is a weighted
              scatter-add into the tokens.
  ragged_dot  sort by expert, ``jax.lax.ragged_dot`` over the expert groups (efficient in XLA on
              TPU/GPU; on CPU XLA computes every group densely, E/K times the work).
  pallas      the same layout with the grouped matmul of kernels_pallas/ (a later issue).

Axes: T tokens, D d_model, E experts, K choice slots per token, A = T*K assignments,
C rows per expert in the batched pass, M rows and N blocks of R rows in the overflow pass.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from moejax.moe import plan as planning
from moejax.moe.blocks import BlockTables, batched_and_blocks, split_experts
from moejax.moe.experts import batched_matmul, expert_matmul
from moejax.moe.routers import Routing

ExpertFn = Callable[..., jax.Array]


def _take_rows(x_TD, index):
  """Rows of ``x_TD`` at ``index`` (any shape), indices promised in bounds (a fast gather)."""
  return jnp.take(x_TD, index, axis=0, mode="clip")


def _combine(y_TD, token_R, weight_R, out_RD):
  """y_TD[token] += weight * out, accumulated in float32."""
  weighted_RD = (out_RD.reshape(-1, out_RD.shape[-1]).astype(jnp.float32)
                 * weight_R.reshape(-1, 1))
  return y_TD.at[token_R.reshape(-1)].add(weighted_RD, mode="promise_in_bounds")


def drop_over_capacity(routing: Routing, capacity_rows: int, batch_prioritized: bool):
  """Deactivates the choices beyond each expert's capacity in priority order.

  Returns the routing and the dropped fraction of active choices.
  """
  plan = planning.sort_assignments(routing, batch_prioritized)
  kept_TK = routing.active() & (planning.assignment_ranks(routing, plan) < capacity_rows)
  dropped = 1.0 - planning.kept_fraction(plan, capacity_rows)
  routing = routing.replace(weights_TK=jnp.where(kept_TK, routing.weights_TK, 0.0),
                            active_TK=kept_TK)
  return routing, dropped


def einsum_dispatch(x_TD, routing: Routing, experts: ExpertFn, *,
                    capacity_factor: Optional[float] = None, batch_prioritized: bool = False,
                    rows_per_expert: Optional[int] = None):
  """GShard-style one-hot dispatch and combine tensors [T, E, C]: the readable reference."""
  del rows_per_expert  # the einsum buffers are always sized by the capacity
  num_tokens, num_choices = routing.expert_ids_TK.shape
  num_experts = routing.num_experts
  cap = planning.capacity(num_tokens, num_choices, num_experts, capacity_factor)
  if routing.max_load is not None:
    cap = min(cap, routing.max_load)
  plan = planning.sort_assignments(routing, batch_prioritized)
  rank_TK = planning.assignment_ranks(routing, plan)
  kept_TK = routing.active() & (rank_TK < cap)
  expert_TKE = jax.nn.one_hot(routing.expert_ids_TK, num_experts, dtype=x_TD.dtype)
  slot_TKC = jax.nn.one_hot(jnp.where(kept_TK, rank_TK, cap), cap, dtype=x_TD.dtype)
  dispatch_TEC = jnp.einsum("tke,tkc->tec", expert_TKE, slot_TKC)
  combine_TEC = jnp.einsum("tke,tkc,tk->tec", expert_TKE.astype(jnp.float32),
                           slot_TKC.astype(jnp.float32), routing.weights_TK)
  x_ECD = jnp.einsum("tec,td->ecd", dispatch_TEC, x_TD)
  y_ECD = experts(x_ECD, batched_matmul)
  y_TD = jnp.einsum("tec,ecd->td", combine_TEC.astype(y_ECD.dtype), y_ECD,
                    preferred_element_type=jnp.float32)
  dropped = 1.0 - planning.kept_fraction(plan, cap)
  return y_TD.astype(x_TD.dtype), {"dropped_fraction": dropped}


def default_rows_per_expert(num_assignments: int, num_experts: int) -> int:
  """Rows per expert of the batched pass of ``sorted``: the balanced load ceil(A/E)."""
  return max(1, -(-num_assignments // num_experts))


def _block_tables(rows_E, first_E, plan, cap: int, block_rows: int,
                  max_rows: int) -> BlockTables:
  """Tables of one block pass: ``rows_E`` overflow rows of expert e, starting at its overflow
  row ``first_E``, padded to blocks of ``block_rows``, in at most ``max_rows`` rows."""
  num_experts = rows_E.shape[0]
  padded_E = -(-rows_E // block_rows) * block_rows
  padded_end_E = jnp.cumsum(padded_E)
  block_start_N = jnp.arange(max_rows // block_rows, dtype=jnp.int32) * block_rows
  expert_N = jnp.minimum(jnp.searchsorted(padded_end_E, block_start_N, side="right"),
                         num_experts - 1).astype(jnp.int32)
  expert_M = jnp.repeat(expert_N, block_rows)
  offset_M = jnp.arange(max_rows, dtype=jnp.int32) - (padded_end_E - padded_E)[expert_M]
  assignment_M = _take_rows(plan.assignment_S,
                            plan.starts_E[expert_M] + cap + first_E[expert_M] + offset_M)
  return BlockTables(token_M=assignment_M // plan.num_choices, assignment_M=assignment_M,
                     valid_M=offset_M < rows_E[expert_M], expert_N=expert_N,
                     num_blocks=padded_end_E[-1] // block_rows)


def overflow_passes(num_assign: int, num_experts: int, plan, cap: int,
                    block_rows: Optional[int]) -> list[tuple[int, BlockTables]]:
  """The block passes over the choices beyond the first ``cap`` of each expert.

  Each expert's overflow runs as whole blocks of 8R rows, then its remainder in blocks of R
  (default 16): large blocks keep the matmuls efficient, small ones keep the padding (at most
  R - 1 rows per expert) small when many experts overflow by a little. Static sizes cover the
  worst case (every choice on one expert); the loops only visit used blocks.
  """
  bound = num_assign - min(cap, num_assign)  # the most rows that can overflow
  small = block_rows or 16
  large = 8 * small
  over_E = jnp.maximum(plan.sizes_E - cap, 0)
  bulk_E = over_E // large * large
  sizes = (bound // large * large,
           min(num_experts * large, -(-(bound + num_experts * (small - 1)) // small) * small))
  passes = []
  for rows_E, first_E, rows, max_rows in ((bulk_E, jnp.zeros_like(bulk_E), large, sizes[0]),
                                          (over_E - bulk_E, bulk_E, small, sizes[1])):
    if bound and max_rows:
      passes.append((rows, _block_tables(rows_E, first_E, plan, cap, rows, max_rows)))
  return passes


def sorted_dispatch(x_TD, routing: Routing, experts: ExpertFn, *,
                    capacity_factor: Optional[float] = None, batch_prioritized: bool = False,
                    rows_per_expert: Optional[int] = None, block_rows: Optional[int] = None):
  """Sort by expert; a batched pass over the first C rows of every expert; dropless, exact
  block passes over the overflow (blocks.py). ``experts`` must be an nnx Module.

  C is the capacity with a capacity factor, else ``rows_per_expert`` (default: the balanced
  load ceil(A/E), so balanced routing never overflows and wastes no rows). ``block_rows`` sets
  the small block size of the overflow passes.
  """
  num_tokens, num_choices = routing.expert_ids_TK.shape
  num_experts = routing.num_experts
  num_assign = num_tokens * num_choices
  dropless = capacity_factor is None
  if dropless:
    cap = (default_rows_per_expert(num_assign, num_experts) if rows_per_expert is None
           else rows_per_expert)
    cap = min(cap, num_assign)
  else:
    cap = planning.capacity(num_tokens, num_choices, num_experts, capacity_factor)
  plan = planning.sort_assignments(routing, batch_prioritized and not dropless)

  slot_C = jnp.arange(cap, dtype=jnp.int32)
  filled_EC = slot_C < plan.sizes_E[:, None]
  assignment_EC = _take_rows(plan.assignment_S, plan.starts_E[:, None] + slot_C)
  token_EC = assignment_EC // num_choices
  weights_A = routing.weights_TK.reshape(-1)
  weight_EC = jnp.where(filled_EC, _take_rows(weights_A, assignment_EC), 0.0)
  x_ECD = _take_rows(x_TD, token_EC)
  passes = []
  if dropless and (routing.max_load is None or cap < routing.max_load):
    passes = overflow_passes(num_assign, num_experts, plan, cap, block_rows)
  if passes:
    graphdef, expert_state = split_experts(experts)
    block_rows, tables = zip(*passes)
    y_ECD, y_TD = batched_and_blocks(graphdef, tuple(block_rows), x_ECD, x_TD, weights_A,
                                     expert_state, tuple(tables))
  else:
    y_ECD, y_TD = experts(x_ECD, expert_matmul), jnp.zeros(x_TD.shape, jnp.float32)
  y_TD = _combine(y_TD, token_EC, weight_EC, y_ECD)
  dropped = (jnp.zeros((), jnp.float32) if dropless
             else 1.0 - planning.kept_fraction(plan, cap))
  return y_TD.astype(x_TD.dtype), {"dropped_fraction": dropped}


def grouped_dispatch(x_TD, routing: Routing, experts: ExpertFn, *, group_matmul: Callable,
                     capacity_factor: Optional[float] = None, batch_prioritized: bool = False,
                     rows_per_expert: Optional[int] = None):
  """Rows sorted by expert (inactive ones last) and a grouped matmul given the group sizes:
  ``group_matmul(x_AI, w_EIO, group_sizes_E) -> y_AO`` (``jax.lax.ragged_dot``, Pallas gmm)."""
  del rows_per_expert
  dropped = jnp.zeros((), jnp.float32)
  if capacity_factor is not None:
    num_tokens, num_choices = routing.expert_ids_TK.shape
    cap = planning.capacity(num_tokens, num_choices, routing.num_experts, capacity_factor)
    routing, dropped = drop_over_capacity(routing, cap, batch_prioritized)
  plan = planning.sort_assignments(routing)
  token_A = plan.assignment_S // routing.num_choices
  weight_A = jnp.where(routing.active().reshape(-1), routing.weights_TK.reshape(-1), 0.0)
  weight_A = _take_rows(weight_A, plan.assignment_S)  # inactive rows, sorted last, weigh 0
  matmul = functools.partial(group_matmul, group_sizes=plan.sizes_E)
  y_AD = experts(_take_rows(x_TD, token_A), matmul)
  y_TD = _combine(jnp.zeros(x_TD.shape, jnp.float32), token_A, weight_A, y_AD)
  return y_TD.astype(x_TD.dtype), {"dropped_fraction": dropped}


def _ragged_dot(x_AI, w_EIO, group_sizes):
  return jax.lax.ragged_dot(x_AI, w_EIO, group_sizes)


def _pallas_gmm(x_AI, w_EIO, group_sizes):
  from kernels_pallas import grouped_matmul  # pylint: disable=import-outside-toplevel
  return grouped_matmul.gmm(x_AI, w_EIO, group_sizes)


STRATEGIES: dict[str, Callable] = {
    "einsum": einsum_dispatch,
    "sorted": sorted_dispatch,
    "ragged_dot": functools.partial(grouped_dispatch, group_matmul=_ragged_dot),
    "pallas": functools.partial(grouped_dispatch, group_matmul=_pallas_gmm),
}


def dispatch(strategy: str, x_TD, routing: Routing, experts: ExpertFn, **options):
  """Runs the named strategy; ``options`` are passed through (e.g. capacity_factor)."""
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown dispatch strategy {strategy!r}; known: {sorted(STRATEGIES)}")
  return STRATEGIES[strategy](x_TD, routing, experts, **options)
