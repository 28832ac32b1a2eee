"""Sharded dispatch and expert parallelism: the MoE dispatch of each data shard, on its own device.

Under a mesh, ``sharded_dispatch`` runs the dispatch inside one ``jax.shard_map`` over the whole
mesh, so every buffer (sort keys, capacity rows, dropless rows) is sized by the device's own
tokens, never by the global batch:
  tokens   x_TD and the routing are split over the mesh axes of the logical ``batch`` axis
           (replicated over the others, e.g. ``tensor``);
  experts  the weights enter split over the mesh axes of their ``expert`` and ``mlp`` axes;
           other axes (``embed`` on ``fsdp``) are gathered at the boundary, FSDP-style, and
           their gradients reduce-scattered by the transpose;
  tensor   with ``mlp`` on a mesh axis each device computes its slice of the hidden units,
           and the partial outputs are summed (``psum``) over that axis.
Without an ``expert`` mesh axis (size 1) each device dispatches its tokens to all experts with
the configured strategy: the per-shard dispatch. With one (n devices, E/n experts each),
``ep_dispatch`` exchanges rows (the design of MaxText's dropless MoE and of GShard):
  1. the device sorts its choices by expert (``plan.sort_assignments``): the rows for device d
     are then contiguous (d's experts are e in [d*E/n, (d+1)*E/n));
  2. the group sizes [n, E] are all-gathered, so every device knows every chunk's size and
     where it goes;
  3. the rows travel with ``exchange_rows``: ``lax.ragged_all_to_all`` ("ragged"), or a dense
     ``lax.all_to_all`` of chunks padded to their static bound followed by a scatter ("dense",
     exact in values and gradients; the only choice on XLA:CPU, where ragged-all-to-all does
     not run);
  4. the receiver runs the configured strategy on the received rows as tokens with one choice
     each (weight 1) over its local experts: the local computation is the one-device code;
  5. the outputs travel back the same way, and the sender combines them into its tokens.
Chunk bounds (a chunk is the rows one device sends another): with a capacity factor, C rows
per expert from the local tokens, so E/n * C (GShard's [E, C] buffers, no padding beyond the
capacity); dropless, T_loc * min(E/n, K), every local choice on one device (MaxText's worst-case
buffer). Capacity is therefore per data shard (per ``group_size`` group when that is set).

Axes: T tokens (local), D d_model, K choices, E experts, L local experts (E/n), A = T*K
assignments, P devices on the expert axis (n), B rows of a chunk bound, R = P*B received rows.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from moejax import sharding
from moejax.moe import plan as planning
from moejax.moe.dispatch import dispatch
from moejax.moe.dispatch.base import scatter_weighted, take_rows
from moejax.moe.routers import Routing

EP_EXCHANGES = ("auto", "ragged", "dense")


def exclusive_cumsum(x, axis: int = 0):
  return jnp.cumsum(x, axis=axis) - x


def exchange_rows(rows_AD, output_RD, input_offsets_P, send_sizes_P, output_offsets_P,
                  recv_sizes_P, *, axis, chunk_rows: int, dense: bool):
  """``lax.ragged_all_to_all`` of ``rows_AD`` (same arguments); ``dense``: its stand-in.

  The stand-in pads each outgoing chunk to ``chunk_rows`` (a static bound of every chunk),
  exchanges the [P, B, D] buffer with a dense all-to-all, and scatters each received chunk at
  its offset: the ragged result, at P times the send buffer. It ignores ``output_offsets_P``:
  ``ep_dispatch`` packs every receiver's chunks in source order, so a receiver's offsets are the
  exclusive cumulative sum of its receive sizes, computed locally without a second exchange.
  """
  if not dense:
    return jax.lax.ragged_all_to_all(rows_AD, output_RD, input_offsets_P, send_sizes_P,
                                      output_offsets_P, recv_sizes_P, axis_name=axis)
  slot_B = jnp.arange(chunk_rows, dtype=jnp.int32)
  source_PB = input_offsets_P[:, None] + slot_B
  send_PBD = jnp.where((slot_B < send_sizes_P[:, None])[..., None],
                       take_rows(rows_AD, source_PB), 0).astype(output_RD.dtype)
  recv_PBD = jax.lax.all_to_all(send_PBD, axis, 0, 0, tiled=True)
  at_P = exclusive_cumsum(recv_sizes_P)  # chunks arrive packed in source order
  target_PB = jnp.where(slot_B < recv_sizes_P[:, None], at_P[:, None] + slot_B,
                        output_RD.shape[0])  # past the end: dropped
  return output_RD.at[target_PB.reshape(-1)].set(
      recv_PBD.reshape(-1, recv_PBD.shape[-1]), mode="drop")


def ep_dispatch(strategy: str, x_TD, routing: Routing, experts, *, axis, num_devices: int,
                capacity_factor: Optional[float], batch_prioritized: bool, dense: bool):
  """(y_TD, stats) of the tokens of this device with its experts' share on ``axis`` (inside
  shard_map; the module docstring lists the steps). ``experts`` holds the local E/P experts.
  """
  num_tokens, num_choices = routing.expert_ids_TK.shape
  num_experts, size = routing.num_experts, num_devices
  local = num_experts // size
  dropped = jnp.zeros((), jnp.float32)
  if capacity_factor is not None:
    cap = planning.capacity(num_tokens, num_choices, num_experts, capacity_factor)
    routing, dropped = planning.drop_over_capacity(routing, cap, batch_prioritized)
    chunk_rows, per_expert = local * cap, size * cap
  else:
    chunk_rows = num_tokens * min(local, num_choices)
    per_expert = size * num_tokens
  if routing.max_load is not None:
    per_expert = min(per_expert, size * routing.max_load)
  # 1. the choices sorted by expert (inactive and dropped last), rows and weights in that order
  plan = planning.sort_assignments(routing)
  token_A = plan.assignment_S // num_choices
  weight_A = jnp.where(routing.active().reshape(-1), routing.weights_TK.reshape(-1), 0.0)
  weight_A = take_rows(weight_A, plan.assignment_S)
  # 2. every device's group sizes: sizes_PPL[s, d, l] = rows from s for d's local expert l
  me = jax.lax.axis_index(axis)
  sizes_PPL = jax.lax.all_gather(plan.sizes_E, axis).reshape(size, size, local)
  chunk_PP = jnp.sum(sizes_PPL, axis=-1)  # [source, destination]
  send_P, recv_P = chunk_PP[me], chunk_PP[:, me]
  send_offsets_P = exclusive_cumsum(send_P)
  recv_offsets_P = exclusive_cumsum(recv_P)
  at_receiver_P = exclusive_cumsum(chunk_PP, axis=0)[me]  # my chunk's offset at each receiver
  at_sender_P = exclusive_cumsum(chunk_PP, axis=1)[:, me]  # each sender's chunk for me
  # 3. the rows to their experts' devices
  received = size * chunk_rows
  exchange = lambda *a: exchange_rows(*a, axis=axis, chunk_rows=chunk_rows, dense=dense)
  x_RD = exchange(take_rows(x_TD, token_A), jnp.zeros((received, x_TD.shape[1]), x_TD.dtype),
                  send_offsets_P, send_P, at_receiver_P, recv_P)
  # 4. the local strategy on the received rows: one choice each, on local expert l
  group_ends_G = jnp.cumsum(sizes_PPL[:, me].reshape(-1))  # groups (source, local expert)
  row_R = jnp.arange(received, dtype=jnp.int32)
  group_R = jnp.searchsorted(group_ends_G, row_R, side="right").astype(jnp.int32)
  active_R = row_R < group_ends_G[-1]
  local_routing = Routing(expert_ids_TK=(group_R % local)[:, None],
                          weights_TK=active_R.astype(jnp.float32)[:, None],
                          probs_TE=jnp.zeros((received, local), jnp.float32),
                          logits_TE=jnp.zeros((received, local), jnp.float32),
                          active_TK=active_R[:, None], max_load=per_expert)
  # The batched rows per local expert: the capacity, or dropless the balanced load (the sorted
  # strategy runs the overflow exactly, in blocks).
  rows_per_expert = (per_expert if capacity_factor is not None
                     else math.ceil(size * num_tokens * num_choices / num_experts))
  y_RD, _ = dispatch(strategy, x_RD, local_routing, experts,
                     rows_per_expert=min(rows_per_expert, per_expert))
  # 5. back to the senders, combined into their tokens
  y_AD = exchange(y_RD, jnp.zeros((token_A.shape[0], x_TD.shape[1]), y_RD.dtype),
                  recv_offsets_P, recv_P, at_sender_P, send_P)
  y_TD = scatter_weighted(jnp.zeros(x_TD.shape, jnp.float32), token_A, weight_A, y_AD)
  return y_TD.astype(x_TD.dtype), {"dropped_fraction": dropped}


def mesh_layout(mesh, num_rows: int):
  """(token axes, expert axes, hidden axes) of the active rules on ``mesh``: the mesh axes that
  split the batch rows (only if they divide ``num_rows``), the experts and the experts' hidden
  units."""
  names = mesh.axis_names
  axes_of = lambda *logical: [sharding.rule_axes(s)
                              for s in sharding.logical_to_spec(logical, mesh_axes=names)]
  (token_axes,) = axes_of("batch")
  if num_rows % math.prod(mesh.shape[a] for a in token_axes):
    token_axes = ()
  expert_axes, hidden_axes = axes_of("expert", "mlp")
  return token_axes, expert_axes, hidden_axes


def _weight_spec(variable, keep: tuple[str, ...]) -> PartitionSpec:
  """The in_spec of an expert weight: its sharding less the mesh axes not in ``keep``."""
  spec = sharding.logical_to_spec(sharding.variable_axes(variable) or ())
  return PartitionSpec(*(tuple(a for a in sharding.rule_axes(s) if a in keep) or None
                         for s in spec))


def sharded_dispatch(local_fn, x_BSD, routing_TK: Routing, experts: nnx.Module, *,
                     num_experts: int, check_vma: bool = True):
  """``local_fn(x_TD, routing, experts, expert_axes, num_expert_devices) -> (y_TD, stats,
  kept_TK)`` on each device's tokens and experts (the module docstring); None when no mesh with
  rules is active or the batch rows do not divide over the token axes (then the caller runs
  ``local_fn`` on all tokens, as on one device).

  ``check_vma=False`` only for the Pallas interpreter (the ``pallas`` strategy on CPU): it
  evaluates a kernel's index maps with loop indices typed invariant and the scalar-prefetched
  schedule typed varying, which jax 0.10.2 rejects ("dynamic_slice requires varying manual axes
  to match"). Compiled kernels keep the check (tests/test_pallas_lowering.py); the gradients
  without it are tested equal to one device's (tests/test_expert_parallel.py)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1 or not sharding.active_rules():
    return None
  batch = x_BSD.shape[0]
  token_axes, expert_axes, hidden_axes = mesh_layout(mesh, batch)
  num_expert_devices = math.prod(mesh.shape[a] for a in expert_axes)
  if num_experts % num_expert_devices:
    raise ValueError(f"{num_experts} experts do not divide over the {num_expert_devices} "
                     f"devices of mesh axes {expert_axes}")
  if not token_axes and num_expert_devices > 1:
    return None  # e.g. decoding one row: the experts are gathered instead (GSPMD)
  graphdef, state = nnx.split(experts)
  keep = expert_axes + hidden_axes
  state_specs = jax.tree.map(lambda v: _weight_spec(v, keep), state,
                             is_leaf=lambda v: isinstance(v, nnx.Variable))
  rows = PartitionSpec(token_axes or None)

  def body(x_BSD, routing, state):
    b, s, d = x_BSD.shape
    y_TD, stats, kept_TK = local_fn(x_BSD.reshape(b * s, d), routing, nnx.merge(graphdef, state),
                                    expert_axes, num_expert_devices)
    if hidden_axes:  # each device computed its slice of the hidden units: sum the parts
      y_TD = jax.lax.psum(y_TD, hidden_axes)
    if token_axes:
      stats = {k: jax.lax.pmean(v, token_axes) for k, v in stats.items()}
    return y_TD.reshape(b, s, d), stats, kept_TK

  routing_specs = jax.tree.map(lambda _: rows, routing_TK)
  return jax.shard_map(body, in_specs=(rows, routing_specs, state_specs),
                       out_specs=(rows, PartitionSpec(), rows),
                       check_vma=check_vma)(x_BSD, routing_TK, state)
