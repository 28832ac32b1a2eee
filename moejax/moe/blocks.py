"""Exact expert computation over blocks of rows, one expert per block, in a loop whose trip count
is the number of *used* blocks: the cost follows the actual load, not the static worst case.

The ``sorted`` dispatch runs its overflow rows (those beyond an expert's batched capacity) here.
Each loop step gathers the R tokens of one block, runs the whole expert FFN on them with that
expert's weight slice, and scatter-adds the weighted output into the tokens, so no buffer grows
with the worst case: only the int32 block tables have static (worst-case) size.

Reverse-mode autodiff cannot differentiate a loop with a traced trip count, so the pass has a
custom VJP: a second loop re-runs each block's forward under ``jax.vjp`` and accumulates the
gradients of the tokens, of the combine weights and of the expert's weight slice in place.

Axes: T tokens, D d_model, A assignments, M block rows (a multiple of R), N blocks of R rows,
E experts.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax


def _single_expert_matmul(x_RI, w_1IO):
  """The grouped matmul of one block: its rows times the (single) expert slice."""
  return jnp.dot(x_RI, w_1IO[0], preferred_element_type=jnp.float32).astype(x_RI.dtype)


def _expert_slice(expert_state, expert):
  return jax.tree.map(lambda w: lax.dynamic_index_in_dim(w, expert, keepdims=True), expert_state)


def _block_inputs(n, block_rows: int, token_M, assignment_M, valid_M):
  rows = functools.partial(lax.dynamic_slice_in_dim, start_index=n * block_rows,
                           slice_size=block_rows)
  return rows(token_M), rows(assignment_M), rows(valid_M)


def _block_output(graphdef, x_RD, slice_state, weight_R):
  """weight * expert(x) for the rows of one block, float32."""
  y_RD = nnx.merge(graphdef, slice_state)(x_RD, _single_expert_matmul)
  return y_RD.astype(jnp.float32) * weight_R[:, None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def block_pass(graphdef, block_rows: int, x_TD, weights_A, expert_state, token_M, assignment_M,
               valid_M, expert_N, num_blocks):
  """sum over used rows m of weights_A[assignment_M[m]] * expert_{e(m)}(x_TD[token_M[m]]),
  scattered into the tokens ([T, D] float32).

  Rows come in blocks of ``block_rows``; block n uses expert ``expert_N[n]`` and only blocks
  n < ``num_blocks`` are computed. Rows with ``valid_M`` False are padding (weight 0).
  ``graphdef``/``expert_state`` are the ``nnx.split`` of the experts module.
  """
  def body(n, y_TD):
    token_R, assignment_R, valid_R = _block_inputs(n, block_rows, token_M, assignment_M, valid_M)
    weight_R = jnp.where(valid_R, jnp.take(weights_A, assignment_R, mode="clip"), 0.0)
    x_RD = jnp.take(x_TD, token_R, axis=0, mode="clip")
    out_RD = _block_output(graphdef, x_RD, _expert_slice(expert_state, expert_N[n]), weight_R)
    return y_TD.at[token_R].add(out_RD, mode="promise_in_bounds")

  return lax.fori_loop(0, num_blocks, body, jnp.zeros(x_TD.shape, jnp.float32))


def _block_pass_fwd(graphdef, block_rows, x_TD, weights_A, expert_state, token_M, assignment_M,
                    valid_M, expert_N, num_blocks):
  y_TD = block_pass(graphdef, block_rows, x_TD, weights_A, expert_state, token_M, assignment_M,
                    valid_M, expert_N, num_blocks)
  return y_TD, (x_TD, weights_A, expert_state, token_M, assignment_M, valid_M, expert_N,
                num_blocks)


def _block_pass_bwd(graphdef, block_rows, residuals, dy_TD):
  x_TD, weights_A, expert_state, token_M, assignment_M, valid_M, expert_N, num_blocks = residuals

  def body(n, grads):
    dx_TD, dweights_A, dstate = grads
    token_R, assignment_R, valid_R = _block_inputs(n, block_rows, token_M, assignment_M, valid_M)
    weight_R = jnp.where(valid_R, jnp.take(weights_A, assignment_R, mode="clip"), 0.0)
    x_RD = jnp.take(x_TD, token_R, axis=0, mode="clip")
    expert = expert_N[n]
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

  zeros = (jnp.zeros(x_TD.shape, jnp.float32), jnp.zeros(weights_A.shape, jnp.float32),
           jax.tree.map(lambda w: jnp.zeros(w.shape, jnp.float32), expert_state))
  dx_TD, dweights_A, dstate = lax.fori_loop(0, num_blocks, body, zeros)
  dstate = jax.tree.map(lambda d, w: d.astype(w.dtype), dstate, expert_state)
  return (dx_TD.astype(x_TD.dtype), dweights_A.astype(weights_A.dtype), dstate,
          None, None, None, None, None)


block_pass.defvjp(_block_pass_fwd, _block_pass_bwd)
