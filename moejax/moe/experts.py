"""Stacked expert weights and their computation. Experts know nothing about routing.

An expert FFN is written once against a *grouped matmul* ``matmul(x, w_EIO) -> y`` that the
dispatch strategy supplies; the strategy decides which rows meet which expert's weights:
  batched_matmul      x_ECI: group e is expert e, one batched matmul (einsum dispatch);
  expert_matmul       the same function with a weight gradient tuned for XLA:CPU (the batched
                      pass of sorted);
  one expert's slice  a block of rows times w_1IO[0] (blocks.py: the overflow pass of sorted);
  jax.lax.ragged_dot  rows sorted by expert with group sizes (ragged_dot, Pallas kernels).
Elementwise activations act row by row, so every grouping computes the same function.

Axes: E experts, C rows per expert, M rows, D d_model, F expert hidden size, I/O the input and
output features of one matmul.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from kernels_cpu import batched_gemm
from moejax.layers.params import fan_in_init, param

GroupedMatmul = Callable[[jax.Array, jax.Array], jax.Array]


def batched_matmul(x_ECI, w_EIO):
  """Group e of the rows times expert e's weights: one batched matmul."""
  return jnp.einsum("eci,eio->eco", x_ECI, w_EIO)


def uses_cpu_kernel(dtype) -> bool:
  """Whether ``expert_matmul`` runs on the CPU BLAS kernel (kernels_cpu/) for this dtype here:
  float32 on an XLA:CPU default backend where the kernel could be built (no CPU kernel build on
  GPU/TPU hosts)."""
  return (jnp.dtype(dtype) == jnp.float32 and jax.default_backend() == "cpu"
          and batched_gemm.available())


def _grouped_dot(a, b, *, trans_a: bool = False, trans_b: bool = False, cpu_kernel: bool = True):
  """op(a[e]) @ op(b[e]) for every group e, accumulated in float32.

  On XLA:CPU, float32 goes to OpenBLAS (kernels_cpu/batched_gemm.py: 1.1-1.4x faster than
  XLA's batched dot at 64 rows per expert); elsewhere, and where that kernel cannot be
  built, XLA's batched dot.
  """
  def xla_dot(a, b):
    if trans_a:  # contracting the row axis of both [E, C, .] operands sends XLA:CPU's dot to a
      # slower path (E=64, C=64, 256x512: 13-17 ms against 11-13 ms for a transposed input);
      # the barrier keeps XLA from folding the transpose back into the dot's dimensions.
      a = lax.optimization_barrier(jnp.swapaxes(a, 1, 2))
    return jnp.einsum("eci,eoi->eco" if trans_b else "eci,eio->eco", a, b,
                      preferred_element_type=jnp.float32)

  if cpu_kernel and a.dtype == b.dtype and uses_cpu_kernel(a.dtype):
    blas_dot = functools.partial(batched_gemm.batched_gemm, trans_a=trans_a, trans_b=trans_b)
    return lax.platform_dependent(a, b, cpu=blas_dot, default=xla_dot)
  return xla_dot(a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def expert_matmul(x_ECI, w_EIO, cpu_kernel: bool = True):
  """``batched_matmul`` tuned for the batched pass of ``sorted``: each of the forward,
  input-gradient and weight-gradient matmuls is one grouped dot (``_grouped_dot``: OpenBLAS on
  XLA:CPU unless ``cpu_kernel`` is False). Measured with the allocator setting of
  moejax/host_memory.py, a loop of one 2D dot per expert was no faster than XLA's batched dot
  at C = 64-256 rows.
  """
  return _grouped_dot(x_ECI, w_EIO, cpu_kernel=cpu_kernel).astype(x_ECI.dtype)


def _expert_matmul_fwd(x_ECI, w_EIO, cpu_kernel):
  return expert_matmul(x_ECI, w_EIO, cpu_kernel), (x_ECI, w_EIO)


def _expert_matmul_bwd(cpu_kernel, residuals, dy_ECO):
  x_ECI, w_EIO = residuals
  dx_ECI = _grouped_dot(dy_ECO, w_EIO, trans_b=True, cpu_kernel=cpu_kernel)
  dw_EIO = _grouped_dot(x_ECI, dy_ECO, trans_a=True, cpu_kernel=cpu_kernel)
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

