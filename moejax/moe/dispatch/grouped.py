"""``ragged_dot`` and ``pallas``: every active choice as one row, sorted by expert, and a grouped
matmul given the group sizes (the dropless grouping of MegaBlocks, Gale et al. 2023).

``group_matmul(x_AI, w_EIO, group_sizes_E) -> y_AO`` multiplies the first ``group_sizes_E[0]``
rows by expert 0's weights, the next by expert 1's, and so on:
  ragged_dot  ``jax.lax.ragged_dot`` (efficient in XLA on TPU/GPU; on CPU XLA computes every
              group densely, E/K times the work);
  pallas      the Pallas grouped matmul of kernels_pallas/ (Mosaic on TPU, Triton on GPU, its
              own VJP; interpreted on CPU, where it is a correctness reference, not fast).
With a capacity factor the choices past each expert's capacity are deactivated first.

Axes: T tokens, D d_model, E experts, A = T*K assignments (rows), I/O matmul features.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp

from moejax import sharding
from moejax.moe import plan as planning
from moejax.moe.dispatch.base import ExpertFn, Strategy, scatter_weighted, take_rows
from moejax.moe.routers import Routing


@flax.struct.dataclass
class GroupedContext:
  """token_A, weight_A: the token and combine weight of each sorted row (inactive rows, sorted
  last, weigh 0); sizes_E: rows per expert; tokens: the shape and dtype of x_TD."""
  token_A: jax.Array
  weight_A: jax.Array
  sizes_E: jax.Array
  dropped: jax.Array
  tokens: jax.ShapeDtypeStruct = flax.struct.field(pytree_node=False)


def permute(x_TD, routing: Routing, *, capacity_factor: Optional[float] = None,
            batch_prioritized: bool = False, rows_per_expert: Optional[int] = None):
  """x_AD: one row per choice, sorted by expert, the inactive (and dropped) ones last."""
  del rows_per_expert
  dropped = jnp.zeros((), jnp.float32)
  if capacity_factor is not None:
    num_tokens, num_choices = routing.expert_ids_TK.shape
    cap = planning.capacity(num_tokens, num_choices, routing.num_experts, capacity_factor)
    routing, dropped = planning.drop_over_capacity(routing, cap, batch_prioritized)
  plan = planning.sort_assignments(routing)
  token_A = plan.assignment_S // routing.num_choices
  weight_A = jnp.where(routing.active().reshape(-1), routing.weights_TK.reshape(-1), 0.0)
  weight_A = take_rows(weight_A, plan.assignment_S)
  tokens = jax.ShapeDtypeStruct(x_TD.shape, x_TD.dtype)
  return take_rows(x_TD, token_A), GroupedContext(token_A=token_A, weight_A=weight_A,
                                                  sizes_E=plan.sizes_E, dropped=dropped,
                                                  tokens=tokens)


def compute(x_AD, experts: ExpertFn, ctx: GroupedContext, *, group_matmul: Callable):
  """The experts over the sorted rows with ``group_matmul`` given the group sizes."""
  return experts(x_AD, functools.partial(group_matmul, group_sizes=ctx.sizes_E))


def combine(y_AD, ctx: GroupedContext):
  """The weighted scatter-add of the rows into their tokens, in float32."""
  y_TD = scatter_weighted(jnp.zeros(ctx.tokens.shape, jnp.float32), ctx.token_A, ctx.weight_A,
                          y_AD)
  return y_TD.astype(ctx.tokens.dtype), {"dropped_fraction": ctx.dropped}


def _ragged_dot(x_AI, w_EIO, group_sizes):
  return jax.lax.ragged_dot(x_AI, w_EIO, group_sizes)


def _pallas_gmm(x_AI, w_EIO, group_sizes):
  from kernels_pallas import grouped_matmul  # pylint: disable=import-outside-toplevel
  # No TPU or GPU: the TPU kernel runs in the Pallas interpreter.
  return grouped_matmul.gmm(x_AI, w_EIO, group_sizes,
                            interpret=sharding.platform() == "cpu")


def _strategy(group_matmul: Callable) -> Strategy:
  return Strategy(permute=permute, compute=functools.partial(compute, group_matmul=group_matmul),
                  combine=combine)


RAGGED_DOT = _strategy(_ragged_dot)
PALLAS = _strategy(_pallas_gmm)
