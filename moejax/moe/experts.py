"""Stacked expert weights and their computation. Experts know nothing about routing.

An expert FFN is written once against a *grouped matmul* ``matmul(x, w_EIO) -> y`` that the
dispatch strategy supplies; the strategy decides which rows meet which expert's weights:
  batched_matmul      x_ECI: group e is expert e, one batched matmul (einsum dispatch);
  expert_matmul       the same function with a VJP tuned for XLA:CPU: a loop of 2D matmuls when
                      experts have few rows (the batched pass of sorted, see its docstring);
  one expert's slice  a block of rows times w_1IO[0] (blocks.py: the overflow pass of sorted);
  jax.lax.ragged_dot  rows sorted by expert with group sizes (ragged_dot, Pallas kernels).
Elementwise activations act row by row, so every grouping computes the same function.

Axes: E experts, C rows per expert, M rows, D d_model, F expert hidden size, I/O the input and
output features of one matmul.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from moejax.layers.params import fan_in_init, param

GroupedMatmul = Callable[[jax.Array, jax.Array], jax.Array]


def batched_matmul(x_ECI, w_EIO):
  """Group e of the rows times expert e's weights: one batched matmul."""
  return jnp.einsum("eci,eio->eco", x_ECI, w_EIO)


def _dot(a_CI, b_IO):
  """a @ b accumulated in float32, in a's dtype."""
  return jnp.dot(a_CI, b_IO, preferred_element_type=jnp.float32).astype(a_CI.dtype)


LOOP_BELOW_ROWS = 512  # expert_matmul loops over experts with fewer rows each


def _per_expert(matmul, a_ECI, b_E):
  """matmul(a[e], b[e]) for every expert e: a loop over E when the experts have fewer than
  ``LOOP_BELOW_ROWS`` rows each, else one batched dot."""
  if a_ECI.shape[1] < LOOP_BELOW_ROWS:
    return lax.map(lambda ab: matmul(*ab), (a_ECI, b_E))
  return jax.vmap(matmul)(a_ECI, b_E)


@jax.custom_vjp
def expert_matmul(x_ECI, w_EIO):
  """``batched_matmul`` with a VJP tuned for XLA:CPU (the batched pass of ``sorted``).

  With few rows per expert (C < 512) the matmuls run as a loop of one 2D dot per expert:
  XLA:CPU runs a batched dot with C = 64-256 well below its 2D throughput (E=64, C=64, one
  core: 46-53 GF/s batched, 60-67 GF/s as a loop, 70-85 GF/s for one large 2D dot); with more
  rows, as one batched dot (which keeps two cores busier than the loop). The weight gradient
  contracts the rows; contracting the row axis of both [E, C, .] operands sends the dot to a
  slower XLA:CPU path (one core, D=1024, E=64: 28 GF/s), so the input is transposed to
  [E, I, C] first (65 GF/s). Accumulates in float32. The loop reads expert slices of the
  weights: the expert axis must be local (expert parallelism wraps the dispatch in
  ``shard_map``).
  """
  return _per_expert(_dot, x_ECI, w_EIO)


def _expert_matmul_fwd(x_ECI, w_EIO):
  return expert_matmul(x_ECI, w_EIO), (x_ECI, w_EIO)


def _expert_matmul_bwd(residuals, dy_ECO):
  x_ECI, w_EIO = residuals
  dx_ECI = _per_expert(lambda dy_CO, w_IO: _dot(dy_CO, w_IO.T), dy_ECO, w_EIO)
  # The barrier keeps XLA from folding the transpose back into the dot's dimension numbers.
  x_EIC = lax.optimization_barrier(jnp.swapaxes(x_ECI, 1, 2))
  dw_EIO = jnp.einsum("eic,eco->eio", x_EIC, dy_ECO, preferred_element_type=jnp.float32)
  return dx_ECI.astype(x_ECI.dtype), dw_EIO.astype(w_EIO.dtype)


expert_matmul.defvjp(_expert_matmul_fwd, _expert_matmul_bwd)


def _stacked(rngs, num_experts: int, rows: int, cols: int, axes, param_dtype):
  return param(rngs, fan_in_init((1,)), (num_experts, rows, cols), ("expert", *axes),
               param_dtype)


class SwiGLUExperts(nnx.Module):
  """E independent SwiGLU FFNs (Shazeer 2020) with weights stacked on a leading expert axis."""

  def __init__(self, num_experts: int, d_model: int, d_ff: int, *, param_dtype=jnp.float32,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.w_gate_EDF = _stacked(rngs, num_experts, d_model, d_ff, ("embed", "mlp"), param_dtype)
    self.w_up_EDF = _stacked(rngs, num_experts, d_model, d_ff, ("embed", "mlp"), param_dtype)
    self.w_down_EFD = _stacked(rngs, num_experts, d_ff, d_model, ("mlp", "embed"), param_dtype)

  def __call__(self, x, matmul: GroupedMatmul = batched_matmul):
    dt = self.dtype
    x = x.astype(dt)
    gate = matmul(x, self.w_gate_EDF[...].astype(dt))
    up = matmul(x, self.w_up_EDF[...].astype(dt))
    return matmul(jax.nn.silu(gate) * up, self.w_down_EFD[...].astype(dt))


class GeluExperts(nnx.Module):
  """E independent GELU MLPs, y = gelu(x W_in) W_out (the ViT / DiT MLP, without biases)."""

  def __init__(self, num_experts: int, d_model: int, d_ff: int, *, param_dtype=jnp.float32,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.w_in_EDF = _stacked(rngs, num_experts, d_model, d_ff, ("embed", "mlp"), param_dtype)
    self.w_out_EFD = _stacked(rngs, num_experts, d_ff, d_model, ("mlp", "embed"), param_dtype)

  def __call__(self, x, matmul: GroupedMatmul = batched_matmul):
    dt = self.dtype
    hidden = jax.nn.gelu(matmul(x.astype(dt), self.w_in_EDF[...].astype(dt)))
    return matmul(hidden, self.w_out_EFD[...].astype(dt))


EXPERTS = {"swiglu": SwiGLUExperts, "gelu": GeluExperts}

