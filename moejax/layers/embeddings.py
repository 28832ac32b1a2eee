"""Token embedding, untied output head and rotary position embedding (RoPE, Su et al. 2021).

Axes: B batch, T sequence, D d_model, V vocabulary, H heads, K head dim.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from moejax.layers.params import fan_in_init, param


class Embed(nnx.Module):
  """Token ids [B, T] -> vectors [B, T, D]."""

  def __init__(self, vocab_size: int, d_model: int, *, param_dtype=jnp.float32, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.dtype = dtype
    self.embedding_VD = param(rngs, nnx.initializers.normal(1.0), (vocab_size, d_model),
                              ("vocab", "embed"), param_dtype)

  def __call__(self, ids_BT):
    return jnp.take(self.embedding_VD[...], ids_BT, axis=0).astype(self.dtype)


class OutputHead(nnx.Module):
  """Vectors [B, T, D] -> float32 logits [B, T, V] (not tied to the input embedding)."""

  def __init__(self, d_model: int, vocab_size: int, *, param_dtype=jnp.float32,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.w_DV = param(rngs, fan_in_init(), (d_model, vocab_size), ("embed", "vocab"), param_dtype)

  def __call__(self, x_BTD):
    logits_BTV = jnp.einsum("btd,dv->btv", x_BTD.astype(self.dtype),
                            self.w_DV[...].astype(self.dtype))
    return logits_BTV.astype(jnp.float32)


def apply_rope(x_BTHK, positions_BT, base: float = 10000.0):
  """Rotates pairs (first half, second half) of the head dim by position-dependent angles."""
  half = x_BTHK.shape[-1] // 2
  inv_freq_K = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles_BTK = positions_BT[..., None].astype(jnp.float32) * inv_freq_K
  sin_BT1K = jnp.sin(angles_BTK)[:, :, None, :]
  cos_BT1K = jnp.cos(angles_BTK)[:, :, None, :]
  x1, x2 = jnp.split(x_BTHK.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos_BT1K - x2 * sin_BT1K, x2 * cos_BT1K + x1 * sin_BT1K], -1)
  return rotated.astype(x_BTHK.dtype)
