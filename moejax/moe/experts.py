"""Stacked expert weights and their computation. Experts know nothing about routing.

An expert FFN is written once against a *grouped matmul* ``matmul(x, w_EIO) -> y`` that the
dispatch strategy supplies; the strategy decides which rows meet which expert's weights:
  batched_matmul      x_ECI: group e is expert e, one batched matmul (einsum dispatch);
  expert_matmul       the same function with its own VJP, each of whose GEMMs runs on XLA's dot
                      or on a CPU BLAS kernel, whichever was measured faster for its shapes on
                      this machine (kernels_cpu/expert_matmul.py; the batched pass of sorted);
  one expert's slice  a block of rows times w_1IO[0] (dispatch/sorted_blocks.py: the
                      overflow pass of sorted);
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

from kernels_cpu.expert_matmul import expert_matmul, uses_cpu_kernel  # re-exported (dispatch)
from moejax.layers.params import fan_in_init, param

GroupedMatmul = Callable[[jax.Array, jax.Array], jax.Array]
__all__ = ["EXPERTS", "GeluExperts", "GroupedMatmul", "SwiGLUExperts", "batched_matmul",
           "expert_matmul", "uses_cpu_kernel"]


def batched_matmul(x_ECI, w_EIO):
  """Group e of the rows times expert e's weights: one batched matmul."""
  return jnp.einsum("eci,eio->eco", x_ECI, w_EIO)


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

