"""``sorted``: sort the choices by expert, run the first C of each as a padded batch, scatter-add.

permute sorts the choices by (expert, priority) (plan.py) and gathers the first C of every
expert into x_ECD (an empty row reads some token and weighs 0): the sort by expert of MegaBlocks
(Gale et al. 2023) in GShard's fixed-capacity layout, so that the expert FFN is one batched
matmul with static shapes (``expert_matmul``, experts.py). C is the capacity with a capacity
factor, else ``rows_per_expert`` (default: the balanced load ceil(A/E), so balanced routing
wastes no rows and never overflows); with a capacity factor the choices past C are dropped.

Dropless, the choices past C (the *overflow*) still run, exactly, in block passes of one
expert per block (sorted_blocks.py). Those blocks are computed token-local: compute reads
their rows straight from x_TD and scatter-adds their weighted outputs straight into a float32
[T, D], because their number follows the routing at run time, and a grouped buffer for them
would have the static worst-case size [A, D]. compute therefore returns (y_ECD, overflow_TD),
and combine scatter-adds the weighted y_ECD rows into overflow_TD. Only x_ECD and y_ECD have
the shape an expert-parallel all-to-all would ship; the overflow would need its own exchange
(or no overflow: a capacity factor, or ``rows_per_expert`` at the routing's ``max_load``).

Axes: T tokens, D d_model, E experts, K choice slots per token, A = T*K assignments,
C rows per expert in the batched pass.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from kernels_pallas.shard import match_varying
from moejax.moe import plan as planning
from moejax.moe.dispatch import sorted_blocks
from moejax.moe.dispatch.base import Strategy, scatter_weighted, take_rows
from moejax.moe.experts import expert_matmul
from moejax.moe.routers import Routing


def default_rows_per_expert(num_assignments: int, num_experts: int) -> int:
  """Rows per expert of the batched pass: the balanced load ceil(A/E)."""
  return max(1, -(-num_assignments // num_experts))


@flax.struct.dataclass
class SortedContext:
  """token_EC, weight_EC: the token and combine weight of each batched row (0: an empty row).
  x_TD, weights_A, tables: what the overflow blocks read (``tables``: one ``BlockTables`` per
  block pass, none without overflow; ``block_rows``: their block sizes). plan and
  drop_capacity (None: dropless): for the dropped fraction."""
  token_EC: jax.Array
  weight_EC: jax.Array
  x_TD: jax.Array
  weights_A: jax.Array
  tables: tuple[sorted_blocks.BlockTables, ...]
  plan: planning.SortedAssignments
  block_rows: tuple[int, ...] = flax.struct.field(pytree_node=False)
  drop_capacity: Optional[int] = flax.struct.field(pytree_node=False)


def permute(x_TD, routing: Routing, *, capacity_factor: Optional[float] = None,
            batch_prioritized: bool = False, rows_per_expert: Optional[int] = None,
            block_rows: Optional[int] = None):
  """x_ECD: the first C choices of every expert in priority order. ``block_rows`` sets the
  small block size of the overflow passes (dropless only)."""
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
  assignment_EC = take_rows(plan.assignment_S, plan.starts_E[:, None] + slot_C)
  token_EC = assignment_EC // num_choices
  weights_A = routing.weights_TK.reshape(-1)
  weight_EC = jnp.where(filled_EC, take_rows(weights_A, assignment_EC), 0.0)
  x_ECD = take_rows(x_TD, token_EC)
  passes = []
  if dropless and (routing.max_load is None or cap < routing.max_load):
    passes = sorted_blocks.overflow_passes(num_assign, num_experts, plan, cap, block_rows)
  block_rows, tables = tuple(rows for rows, _ in passes), tuple(t for _, t in passes)
  return x_ECD, SortedContext(token_EC=token_EC, weight_EC=weight_EC, x_TD=x_TD,
                              weights_A=weights_A, tables=tables, plan=plan,
                              block_rows=block_rows, drop_capacity=None if dropless else cap)


def compute(x_ECD, experts: nnx.Module, ctx: SortedContext):
  """(experts(x_ECD) batched by expert, the overflow blocks' weighted outputs in [T, D] float32).

  With overflow, one custom VJP covers both passes (sorted_blocks.py), so the blocks'
  weight gradients accumulate into the batched pass's buffer; ``experts`` must then be an nnx
  Module (its graphdef is a static argument of that VJP).
  """
  if not ctx.tables:
    return experts(x_ECD, expert_matmul), jnp.zeros(ctx.x_TD.shape, jnp.float32)
  graphdef, expert_state = sorted_blocks.split_experts(experts)
  # Under shard_map: one varying type for every operand of the custom VJP (kernels_pallas/
  # shard.py); the transposes of these casts sum the gradients of the less varying ones.
  leaves, treedef = jax.tree.flatten(expert_state)
  x_ECD, x_TD, weights_A, *leaves = match_varying(x_ECD, ctx.x_TD, ctx.weights_A, *leaves)
  return sorted_blocks.batched_and_blocks(graphdef, ctx.block_rows, x_ECD, x_TD, weights_A,
                                          treedef.unflatten(leaves), ctx.tables)


def combine(outputs, ctx: SortedContext):
  """y_TD = overflow_TD + the weighted scatter-add of the batched rows."""
  y_ECD, overflow_TD = outputs
  y_TD = scatter_weighted(overflow_TD, ctx.token_EC, ctx.weight_EC, y_ECD)
  dropped = planning.dropped_fraction(ctx.plan, ctx.drop_capacity)
  return y_TD.astype(ctx.x_TD.dtype), {"dropped_fraction": dropped}


STRATEGY = Strategy(permute=permute, compute=compute, combine=combine)
