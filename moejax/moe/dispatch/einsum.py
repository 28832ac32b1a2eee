"""``einsum``: GShard one-hot dispatch and combine tensors (Lepikhin et al. 2020), the reference.

Each expert has C = capacity rows; choice (t, k) of rank c < C on expert e fills row (e, c). The
one-hot tensor dispatch_TEC gathers x_ECD = dispatch^T x, the experts run as one batched matmul
over [E, C, D], and combine_TEC (the one-hot times the combine weight) sums the rows back per
token. O(T*E*C) memory, so dropless use (C = T) is for small T only.

Axes: T tokens, D d_model, E experts, K choice slots per token, C rows per expert.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from moejax.moe import plan as planning
from moejax.moe.dispatch.base import ExpertFn, Strategy
from moejax.moe.experts import batched_matmul
from moejax.moe.routers import Routing


@flax.struct.dataclass
class EinsumContext:
  """combine_TEC: float32 combine weight of token t in row (e, c), 0 elsewhere; plan and
  capacity: for the dropped fraction; tokens: the shape and dtype of x_TD."""
  combine_TEC: jax.Array
  plan: planning.SortedAssignments
  capacity: int = flax.struct.field(pytree_node=False)
  tokens: jax.ShapeDtypeStruct = flax.struct.field(pytree_node=False)


def permute(x_TD, routing: Routing, *, capacity_factor: Optional[float] = None,
            batch_prioritized: bool = False, rows_per_expert: Optional[int] = None):
  """x_ECD: expert e's kept choices in priority order, zero rows past them."""
  del rows_per_expert  # the einsum buffers are always sized by the capacity
  num_tokens, num_choices = routing.expert_ids_TK.shape
  num_experts = routing.num_experts
  cap = planning.capacity(num_tokens, num_choices, num_experts, capacity_factor)
  if routing.max_load is not None:
    cap = min(cap, routing.max_load)
  plan, rank_TK, kept_TK = planning.fit_capacity(routing, cap, batch_prioritized)
  expert_TKE = jax.nn.one_hot(routing.expert_ids_TK, num_experts, dtype=x_TD.dtype)
  slot_TKC = jax.nn.one_hot(jnp.where(kept_TK, rank_TK, cap), cap, dtype=x_TD.dtype)
  dispatch_TEC = jnp.einsum("tke,tkc->tec", expert_TKE, slot_TKC)
  combine_TEC = jnp.einsum("tke,tkc,tk->tec", expert_TKE.astype(jnp.float32),
                           slot_TKC.astype(jnp.float32), routing.weights_TK)
  x_ECD = jnp.einsum("tec,td->ecd", dispatch_TEC, x_TD)
  tokens = jax.ShapeDtypeStruct(x_TD.shape, x_TD.dtype)
  return x_ECD, EinsumContext(combine_TEC=combine_TEC, plan=plan, capacity=cap, tokens=tokens)


def compute(x_ECD, experts: ExpertFn, ctx: EinsumContext):
  """Every expert on its C rows: one batched matmul."""
  del ctx
  return experts(x_ECD, batched_matmul)


def combine(y_ECD, ctx: EinsumContext):
  """y_t = sum over rows (e, c) of combine_TEC * y_ECD, accumulated in float32."""
  y_TD = jnp.einsum("tec,ecd->td", ctx.combine_TEC.astype(y_ECD.dtype), y_ECD,
                    preferred_element_type=jnp.float32)
  dropped = planning.dropped_fraction(ctx.plan, ctx.capacity)
  return y_TD.astype(ctx.tokens.dtype), {"dropped_fraction": dropped}


STRATEGY = Strategy(permute=permute, compute=compute, combine=combine)
