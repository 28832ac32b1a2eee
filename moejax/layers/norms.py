"""RMSNorm (Zhang & Sennrich 2019), computed in float32."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from moejax.layers.params import param


class RMSNorm(nnx.Module):
  """y = x / rms(x) * scale over the last axis D."""

  def __init__(self, dim: int, *, eps: float = 1e-5, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = param(rngs, nnx.initializers.ones, (dim,), ("embed",), param_dtype)

  def __call__(self, x_BTD):
    x32 = x_BTD.astype(jnp.float32)
    inv_rms = jnp.reciprocal(jnp.sqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps))
    return (x32 * inv_rms * self.scale[...].astype(jnp.float32)).astype(x_BTD.dtype)
