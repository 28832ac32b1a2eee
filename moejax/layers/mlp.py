"""Dense feed-forward blocks: SwiGLU (Shazeer 2020) and the GELU MLP. Axes: B, T, D, F hidden."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.layers.params import fan_in_init, param


class SwiGLU(nnx.Module):
  """y = (silu(x W_gate) * (x W_up)) W_down, no biases."""

  def __init__(self, d_model: int, d_ff: int, *, param_dtype=jnp.float32, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.dtype = dtype
    init = fan_in_init()
    self.w_gate_DF = param(rngs, init, (d_model, d_ff), ("embed", "mlp"), param_dtype)
    self.w_up_DF = param(rngs, init, (d_model, d_ff), ("embed", "mlp"), param_dtype)
    self.w_down_FD = param(rngs, init, (d_ff, d_model), ("mlp", "embed"), param_dtype)

  def __call__(self, x_BTD):
    dt = self.dtype
    x_BTD = x_BTD.astype(dt)
    gate_BTF = jnp.einsum("btd,df->btf", x_BTD, self.w_gate_DF[...].astype(dt))
    up_BTF = jnp.einsum("btd,df->btf", x_BTD, self.w_up_DF[...].astype(dt))
    return jnp.einsum("btf,fd->btd", jax.nn.silu(gate_BTF) * up_BTF,
                      self.w_down_FD[...].astype(dt))


class GeluMLP(nnx.Module):
  """y = gelu(x W_in) W_out, no biases (the ViT / DiT MLP)."""

  def __init__(self, d_model: int, d_ff: int, *, param_dtype=jnp.float32, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.dtype = dtype
    init = fan_in_init()
    self.w_in_DF = param(rngs, init, (d_model, d_ff), ("embed", "mlp"), param_dtype)
    self.w_out_FD = param(rngs, init, (d_ff, d_model), ("mlp", "embed"), param_dtype)

  def __call__(self, x_BTD):
    dt = self.dtype
    hidden_BTF = jax.nn.gelu(jnp.einsum("btd,df->btf", x_BTD.astype(dt),
                                        self.w_in_DF[...].astype(dt)))
    return jnp.einsum("btf,fd->btd", hidden_BTF, self.w_out_FD[...].astype(dt))


DENSE_FFNS = {"swiglu": SwiGLU, "gelu": GeluMLP}
