"""The overflow of the ``sorted`` dispatch: its block tables, and the one custom VJP over the
batched pass of the first C rows of every expert and exact passes over the overflow rows in
blocks of one expert each (variable rows per expert in fixed-size blocks, as in MegaBlocks'
block-sparse matmuls, Gale et al. 2023).

The block passes loop over *used* blocks only (a traced trip count), so their cost follows the
actual overflow, not the static worst case: each step gathers the R tokens of one block, runs
the whole expert FFN on them with that expert's weight slice, and scatter-adds the weighted
output into the tokens. No buffer grows with the worst case; only the int32 block tables do.

Reverse-mode autodiff cannot differentiate a loop with a traced trip count, so the whole expert
computation has one custom VJP: the backward pass takes the batched pass's gradients from
``jax.vjp``, then a loop re-runs each used block's forward under ``jax.vjp`` and accumulates
the gradients of the tokens, of the combine weights and of the expert weight slice in place,
into the same weight-gradient buffer (an untouched overflow path costs no [E, D, F] buffers).

Axes: T tokens, D d_model, A assignments, E experts, C rows per expert in the batched pass,
M block rows (a multiple of R), N blocks of R rows.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from kernels_pallas.shard import match_varying
from moejax.moe.dispatch.base import take_rows
from moejax.moe.experts import expert_matmul


class BlockTables(NamedTuple):
  """One block pass: row m reads token ``token_M[m]`` for assignment ``assignment_M[m]``
  (padding where ``valid_M`` is False); block n uses expert ``expert_N[n]``; blocks at or past
  ``num_blocks`` are unused."""
  token_M: jax.Array
  assignment_M: jax.Array
  valid_M: jax.Array
  expert_N: jax.Array
  num_blocks: jax.Array


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
  assignment_M = take_rows(plan.assignment_S,
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


def _single_expert_matmul(x_RI, w_1IO):
  """The grouped matmul of one block: its rows times the (single) expert slice, with XLA's dot.

  A block (16-128 rows of one expert) is too small to share out over threads in the CPU BLAS
  kernel of ``expert_matmul``: with it, skewed routing measured 2.9x the dense FFN instead of
  2.25x (T=4096, d_model=256, E=64, k=1).
  """
  return expert_matmul(x_RI[None], w_1IO, False)[0]


def _expert_slice(expert_state, expert):
  return jax.tree.map(lambda w: lax.dynamic_index_in_dim(w, expert, keepdims=True), expert_state)


def _block_rows(n, block_rows: int, tables: BlockTables, x_TD, weights_A):
  """Token ids, assignment ids, validity, inputs and combine weights of block n's rows."""
  rows = functools.partial(lax.dynamic_slice_in_dim, start_index=n * block_rows,
                           slice_size=block_rows)
  token_R, assignment_R, valid_R = rows(tables.token_M), rows(tables.assignment_M), rows(
      tables.valid_M)
  weight_R = jnp.where(valid_R, jnp.take(weights_A, assignment_R, mode="clip"), 0.0)
  x_RD = jnp.take(x_TD, token_R, axis=0, mode="clip")
  return token_R, assignment_R, valid_R, x_RD, weight_R


def _block_output(graphdef, x_RD, slice_state, weight_R):
  """weight * expert(x) for the rows of one block, float32."""
  y_RD = nnx.merge(graphdef, slice_state)(x_RD, _single_expert_matmul)
  return y_RD.astype(jnp.float32) * weight_R[:, None]


def _blocks_forward(graphdef, block_rows: int, tables: BlockTables, x_TD, weights_A,
                    expert_state, y_TD):
  """y_TD += sum over used rows of weight * expert(x), one block per loop step."""

  def body(n, y_TD):
    token_R, _, _, x_RD, weight_R = _block_rows(n, block_rows, tables, x_TD, weights_A)
    expert = tables.expert_N[n]
    out_RD = _block_output(graphdef, x_RD, _expert_slice(expert_state, expert), weight_R)
    return y_TD.at[token_R].add(out_RD, mode="promise_in_bounds")

  return lax.fori_loop(0, tables.num_blocks, body, y_TD)


def _blocks_backward(graphdef, block_rows: int, tables: BlockTables, x_TD, weights_A,
                     expert_state, dy_TD, grads):
  """Accumulates the gradients of the block pass into ``grads`` = (dx_TD, dweights_A, dstate)."""

  def body(n, grads):
    dx_TD, dweights_A, dstate = grads
    token_R, assignment_R, valid_R, x_RD, weight_R = _block_rows(n, block_rows, tables, x_TD,
                                                                 weights_A)
    expert = tables.expert_N[n]
    _, vjp = jax.vjp(functools.partial(_block_output, graphdef), x_RD,
                     _expert_slice(expert_state, expert), weight_R)
    dx_RD, dslice, dweight_R = vjp(jnp.take(dy_TD, token_R, axis=0, mode="clip"))
    dx_TD = dx_TD.at[token_R].add(dx_RD.astype(dx_TD.dtype), mode="promise_in_bounds")
    dweights_A = dweights_A.at[assignment_R].add(jnp.where(valid_R, dweight_R, 0.0),
                                                 mode="promise_in_bounds")
    dstate = jax.tree.map(
        lambda acc, d: lax.dynamic_update_index_in_dim(
            acc, lax.dynamic_index_in_dim(acc, expert, keepdims=True) + d.astype(acc.dtype),
            expert, 0),
        dstate, dslice)
    return dx_TD, dweights_A, dstate

  return lax.fori_loop(0, tables.num_blocks, body, grads)


def split_experts(experts: nnx.Module):
  """``nnx.split`` of the experts for ``batched_and_blocks``, whose graphdef must be static.

  The graphdef is a non-differentiated argument of the custom VJP, reused by the backward
  pass, possibly in another trace (a scanned or rematerialised layer). Flax keeps a module's
  plain array attributes (not in an ``nnx.Variable``) in the graphdef, so a traced one would
  escape into the backward pass as an ``UnexpectedTracerError``; it is refused here instead
  (a tracer makes the graphdef unhashable).
  """
  graphdef, expert_state = nnx.split(experts)
  try:
    hash(graphdef)
  except TypeError as error:
    raise TypeError(
        f"{type(experts).__name__} has an unhashable attribute outside an nnx.Variable (a "
        "traced array?); the sorted dispatch passes the experts' graphdef to a custom VJP as "
        "a static argument, so every array must live in a Variable (nnx.Param, ...)"
    ) from error
  return graphdef, expert_state


def _zeros_like_varying(shape, like):
  """float32 zeros that vary over the mesh axes ``like`` varies over (inside shard_map; the
  loops' carries must keep one type)."""
  return match_varying(jnp.zeros(shape, jnp.float32), like)[0]


def _batched(graphdef, x_ECD, expert_state):
  return nnx.merge(graphdef, expert_state)(x_ECD, expert_matmul)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def batched_and_blocks(graphdef, block_rows: tuple[int, ...], x_ECD, x_TD, weights_A,
                       expert_state, tables: tuple[BlockTables, ...]):
  """(experts(x_ECD) batched by expert, sum of the block passes scattered into [T, D] float32).

  ``graphdef``/``expert_state`` are the ``nnx.split`` of the experts module; ``tables[i]``
  describes block pass i, whose blocks have ``block_rows[i]`` rows. Inside shard_map the
  differentiable operands must vary over the same mesh axes (``match_varying``).
  """
  y_TD = _zeros_like_varying(x_TD.shape, x_TD)
  for rows, pass_tables in zip(block_rows, tables):
    y_TD = _blocks_forward(graphdef, rows, pass_tables, x_TD, weights_A, expert_state, y_TD)
  return _batched(graphdef, x_ECD, expert_state), y_TD


def _batched_and_blocks_fwd(graphdef, block_rows, x_ECD, x_TD, weights_A, expert_state, tables):
  y_ECD, batched_vjp = jax.vjp(functools.partial(_batched, graphdef), x_ECD, expert_state)
  y_TD = _zeros_like_varying(x_TD.shape, x_TD)
  for rows, pass_tables in zip(block_rows, tables):
    y_TD = _blocks_forward(graphdef, rows, pass_tables, x_TD, weights_A, expert_state, y_TD)
  return (y_ECD, y_TD), (batched_vjp, x_TD, weights_A, expert_state, tables)


def _batched_and_blocks_bwd(graphdef, block_rows, residuals, cotangents):
  batched_vjp, x_TD, weights_A, expert_state, tables = residuals
  dy_ECD, dy_TD = cotangents
  dx_ECD, dstate = batched_vjp(dy_ECD)
  grads = (_zeros_like_varying(x_TD.shape, x_TD), _zeros_like_varying(weights_A.shape, x_TD),
           dstate)
  for rows, pass_tables in zip(block_rows, tables):
    grads = _blocks_backward(graphdef, rows, pass_tables, x_TD, weights_A, expert_state, dy_TD,
                             grads)
  dx_TD, dweights_A, dstate = grads
  return dx_ECD, dx_TD.astype(x_TD.dtype), dweights_A.astype(weights_A.dtype), dstate, None


batched_and_blocks.defvjp(_batched_and_blocks_fwd, _batched_and_blocks_bwd)
