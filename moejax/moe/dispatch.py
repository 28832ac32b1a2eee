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
              as one batched matmul [E, C, D] (fast when routing is balanced); with a capacity
              factor that is all; dropless, the overflow rows run exactly in a second pass over
              blocks of one expert each, whose loop length follows the actual overflow
              (gmm.py). Combine is a weighted scatter-add into the tokens.
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
from flax import nnx

from moejax.moe import plan as planning
from moejax.moe.experts import batched_matmul
from moejax.moe.gmm import block_matmul
from moejax.moe.routers import Routing

ExpertFn = Callable[..., jax.Array]


def _take_rows(x_TD, index):
  """Rows of ``x_TD`` at ``index`` (any shape), indices promised in bounds (a fast gather)."""
  return jnp.take(x_TD, index, axis=0, mode="clip")


def _combine(y_TD, token_R, weight_R, out_RD):
  """y_TD[token] += weight * out, accumulated in float32."""
  weighted_RD = out_RD.reshape(-1, out_RD.shape[-1]).astype(jnp.float32) * weight_R.reshape(-1, 1)
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


def _overflow_rows_bound(num_assign: int, cap: int, num_experts: int, rows: int) -> int:
  """Static bound on the block-padded overflow rows: with j overflowing experts (each holding
  more than C) at most A - j*C rows overflow, and each expert pads at most R - 1 rows."""
  most = max(0, min(num_experts, num_assign // (cap + 1)))
  bound = max((num_assign - j * cap + j * (rows - 1) for j in range(1, most + 1)), default=0)
  return -(-bound // rows) * rows


def overflow_classes(num_assign: int, cap: int, num_experts: int,
                     block_rows: Optional[int] = None) -> list[tuple[int, int]]:
  """Static (rows, block rows) sizes of the overflow pass, smallest first.

  The largest holds the worst case; smaller ones (A/4, A/16, ... rows, blocks of about 1/16 of
  that) serve the usual small overflow at a proportional cost, since every buffer of a pass has
  its static size. Each size is a separately compiled branch; the smallest that fits runs.
  """
  def rows_for(size):
    return block_rows or int(min(128, max(8, 2 ** int(math.log2(max(size // 16, 1))))))

  full_rows = rows_for(num_assign)
  largest = _overflow_rows_bound(num_assign, cap, num_experts, full_rows)
  if largest == 0:
    return []
  classes = [(largest, full_rows)]
  size = num_assign // 4
  while size >= 8 * rows_for(size) and size < largest:
    rows = rows_for(size)
    classes.append((-(-size // rows) * rows, rows))
    size //= 4
  return sorted(classes)


def _overflow_blocks(x_TD, weights_A, expert_state, assignment_S, starts_E, over_E, *,
                     experts_graphdef, cap: int, num_choices: int, num_rows: int, rows: int):
  """The overflow rows of every expert, padded to blocks of ``rows``, through the experts."""
  num_experts = over_E.shape[0]
  padded_E = -(-over_E // rows) * rows
  padded_end_E = jnp.cumsum(padded_E)
  num_blocks = padded_end_E[-1] // rows
  block_start_N = jnp.arange(num_rows // rows, dtype=jnp.int32) * rows
  expert_N = jnp.minimum(jnp.searchsorted(padded_end_E, block_start_N, side="right"),
                         num_experts - 1).astype(jnp.int32)
  expert_M = jnp.repeat(expert_N, rows)
  offset_M = jnp.arange(num_rows, dtype=jnp.int32) - (padded_end_E - padded_E)[expert_M]
  valid_M = offset_M < over_E[expert_M]
  assignment_M = _take_rows(assignment_S, starts_E[expert_M] + cap + offset_M)
  token_M = assignment_M // num_choices
  weight_M = jnp.where(valid_M, _take_rows(weights_A, assignment_M), 0.0)
  matmul = functools.partial(block_matmul, expert_N=expert_N, num_blocks=num_blocks,
                             block_rows=rows)
  experts = nnx.merge(experts_graphdef, expert_state)
  y_MD = experts(_take_rows(x_TD, token_M), matmul)
  return _combine(jnp.zeros(x_TD.shape, jnp.float32), token_M, weight_M, y_MD)


def _switch_recomputing(index, branches, diff_args, int_args):
  """``lax.switch`` whose backward recomputes the taken branch.

  Differentiating a plain switch makes every branch emit the residuals of all branches (the
  untaken ones zero-filled), which costs the largest branch's buffers on every call. Here the
  residuals are the inputs only; the backward pass re-runs the forward of the taken branch.
  """

  @jax.custom_vjp
  def run(diff_args, int_args):
    return jax.lax.switch(index, [lambda d, i, b=b: b(*d, *i) for b in branches],
                          diff_args, int_args)

  def run_fwd(diff_args, int_args):
    return run(diff_args, int_args), (diff_args, int_args)

  def run_bwd(residuals, cotangent):
    diff_args, int_args = residuals

    def branch_vjp(diff_args, int_args, cotangent, branch):
      _, vjp = jax.vjp(lambda *d: branch(*d, *int_args), *diff_args)
      return vjp(cotangent)

    grads = jax.lax.switch(index, [functools.partial(branch_vjp, branch=b) for b in branches],
                           diff_args, int_args, cotangent)
    return tuple(grads), jax.tree.map(lambda _: None, int_args)

  run.defvjp(run_fwd, run_bwd)
  return run(diff_args, int_args)


def _overflow_pass(x_TD, routing: Routing, experts: ExpertFn, plan, cap: int,
                   block_rows: Optional[int]):
  """Exact pass over the choices beyond the first ``cap`` rows of each expert, in blocks of one
  expert; only used blocks are computed, in the smallest buffer size that holds them, and the
  pass is skipped when nothing overflows."""
  num_tokens, num_choices = routing.expert_ids_TK.shape
  classes = overflow_classes(num_tokens * num_choices, cap, routing.num_experts, block_rows)
  if not classes:
    return jnp.zeros(x_TD.shape, jnp.float32)
  over_E = jnp.maximum(plan.sizes_E - cap, 0)
  fits = jnp.stack([jnp.sum(-(-over_E // rows) * rows) <= size for size, rows in classes])
  index = jnp.where(jnp.sum(over_E) == 0, 0, 1 + jnp.argmax(fits))
  graphdef, expert_state = nnx.split(experts)

  def skip(x_TD, *unused):
    del unused
    return jnp.zeros(x_TD.shape, jnp.float32)

  branches = [skip] + [
      functools.partial(_overflow_blocks, experts_graphdef=graphdef, cap=cap,
                        num_choices=num_choices, num_rows=size, rows=rows)
      for size, rows in classes]
  return _switch_recomputing(index, branches,
                             (x_TD, routing.weights_TK.reshape(-1), expert_state),
                             (plan.assignment_S, plan.starts_E, over_E))


def sorted_dispatch(x_TD, routing: Routing, experts: ExpertFn, *,
                    capacity_factor: Optional[float] = None, batch_prioritized: bool = False,
                    rows_per_expert: Optional[int] = None, block_rows: Optional[int] = None):
  """Sort by expert; a batched pass over the first C rows of every expert; dropless, an exact
  block pass over the overflow.

  C is the capacity with a capacity factor, else ``rows_per_expert`` (default: the balanced
  load ceil(A/E), so balanced routing never overflows and wastes no rows).
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

  y_TD = jnp.zeros(x_TD.shape, jnp.float32)
  if cap > 0:
    slot_C = jnp.arange(cap, dtype=jnp.int32)
    filled_EC = slot_C < plan.sizes_E[:, None]
    assignment_EC = _take_rows(plan.assignment_S, plan.starts_E[:, None] + slot_C)
    token_EC = assignment_EC // num_choices
    weight_EC = jnp.where(filled_EC, _take_rows(routing.weights_TK.reshape(-1), assignment_EC),
                          0.0)
    y_ECD = experts(_take_rows(x_TD, token_EC), batched_matmul)
    y_TD = _combine(y_TD, token_EC, weight_EC, y_ECD)
  if dropless:
    y_TD = y_TD + _overflow_pass(x_TD, routing, experts, plan, cap, block_rows)
    dropped = jnp.zeros((), jnp.float32)
  else:
    dropped = 1.0 - planning.kept_fraction(plan, cap)
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
  weight_A = routing.weights_TK.reshape(-1)[plan.assignment_S]
  weight_A = jnp.where(routing.active().reshape(-1)[plan.assignment_S], weight_A, 0.0)
  matmul = functools.partial(group_matmul, group_sizes=plan.sizes_E)
  y_AD = experts(_take_rows(x_TD, token_A), lambda x, w: matmul(x, w))
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
