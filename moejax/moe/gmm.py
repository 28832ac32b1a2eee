"""Grouped matmul over row blocks, with a loop whose trip count is the number of *used* blocks.

``block_matmul(x_MI, w_EIO, expert_N, num_blocks, block_rows)`` multiplies block n (rows
``[n*R, (n+1)*R)`` of ``x_MI``) by ``w_EIO[expert_N[n]]`` for ``n < num_blocks`` and leaves the
remaining rows zero. ``num_blocks`` is a traced scalar, so the work follows the actual load,
not the static worst case: this is what makes the exact overflow path of the ``sorted``
dispatch cheap when routing is balanced and still correct when it is not.

Reverse-mode autodiff cannot differentiate a loop with a traced trip count, so the op has a
custom VJP made of the two other grouped products (the megablox ``gmm``/``tgmm`` pair, which
the Pallas kernels in kernels_pallas/ implement for TPU/GPU):
  dx_MI = block_matmul(dy_MO, w_EIO^T)      (same blocks, weights transposed)
  dw_EIO[e] = sum over blocks n of expert e of x_n^T dy_n.

Axes: M rows (a multiple of R), N blocks of R rows, E experts, I input and O output features.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _block_products(x_MI, w_EIO, expert_N, num_blocks, block_rows: int, transpose_w: bool):
  """y[block n] = x[block n] @ w[expert_N[n]] (or @ w[...]^T) for n < num_blocks."""
  out_features = w_EIO.shape[1] if transpose_w else w_EIO.shape[2]
  contract_w = 2 if transpose_w else 1

  def body(n, y_MO):
    x_RI = lax.dynamic_slice_in_dim(x_MI, n * block_rows, block_rows)
    w_IO = lax.dynamic_index_in_dim(w_EIO, expert_N[n], keepdims=False)
    y_RO = lax.dot_general(x_RI, w_IO, (((1,), (contract_w - 1,)), ((), ())),
                           preferred_element_type=jnp.float32)
    return lax.dynamic_update_slice_in_dim(y_MO, y_RO.astype(y_MO.dtype), n * block_rows, 0)

  y_MO = jnp.zeros((x_MI.shape[0], out_features), x_MI.dtype)
  return lax.fori_loop(0, num_blocks, body, y_MO)


def _block_weight_grads(x_MI, dy_MO, expert_N, num_blocks, block_rows: int, num_experts: int):
  """dw[e] = sum over used blocks n with expert_N[n] == e of x_n^T dy_n (float32)."""

  def body(n, dw_EIO):
    x_RI = lax.dynamic_slice_in_dim(x_MI, n * block_rows, block_rows)
    dy_RO = lax.dynamic_slice_in_dim(dy_MO, n * block_rows, block_rows)
    expert = expert_N[n]
    dw_1IO = lax.dynamic_index_in_dim(dw_EIO, expert, keepdims=True)
    dw_1IO = dw_1IO + lax.dot_general(x_RI, dy_RO, (((0,), (0,)), ((), ())),
                                      preferred_element_type=jnp.float32)[None]
    return lax.dynamic_update_index_in_dim(dw_EIO, dw_1IO, expert, 0)

  dw_EIO = jnp.zeros((num_experts, x_MI.shape[1], dy_MO.shape[1]), jnp.float32)
  return lax.fori_loop(0, num_blocks, body, dw_EIO)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def block_matmul(x_MI, w_EIO, expert_N, num_blocks, block_rows: int):
  """Rows of block n times ``w_EIO[expert_N[n]]`` for the first ``num_blocks`` blocks."""
  return _block_products(x_MI, w_EIO, expert_N, num_blocks, block_rows, transpose_w=False)


def _block_matmul_fwd(x_MI, w_EIO, expert_N, num_blocks, block_rows):
  y_MO = _block_products(x_MI, w_EIO, expert_N, num_blocks, block_rows, transpose_w=False)
  return y_MO, (x_MI, w_EIO, expert_N, num_blocks)


def _block_matmul_bwd(block_rows, residuals, dy_MO):
  x_MI, w_EIO, expert_N, num_blocks = residuals
  dy_MO = dy_MO.astype(x_MI.dtype)
  dx_MI = _block_products(dy_MO, w_EIO, expert_N, num_blocks, block_rows, transpose_w=True)
  dw_EIO = _block_weight_grads(x_MI, dy_MO, expert_N, num_blocks, block_rows, w_EIO.shape[0])
  return dx_MI, dw_EIO.astype(w_EIO.dtype), None, None


block_matmul.defvjp(_block_matmul_fwd, _block_matmul_bwd)
