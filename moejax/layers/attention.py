"""Grouped-query self-attention (causal or bidirectional) with RoPE and packed-segment masking.

Two paths share the projections: ``__call__`` attends within one sequence (training, scoring);
``decode`` attends T new tokens over a key/value cache of S slots, passed in and returned as
explicit arrays (autoregressive generation; the cache layout is in models/lm.py).

Axes: B batch, T query length, S key length, D d_model, H query heads, G kv heads, K head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moejax import sharding
from moejax.layers.embeddings import apply_rope
from moejax.layers.params import fan_in_init, param


def attention_mask(segment_ids_BT, causal: bool = True):
  """Boolean mask [B, 1, T, T]: causal (or bidirectional), and only within the same
  non-padding segment."""
  t = segment_ids_BT.shape[1]
  same_BTT = segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]
  valid_BT = segment_ids_BT != 0
  mask_BTT = same_BTT & valid_BT[:, None, :]
  if causal:
    mask_BTT = jnp.tril(jnp.ones((t, t), dtype=jnp.bool_))[None] & mask_BTT
  # A padding query still attends to itself so its softmax is well defined.
  mask_BTT = mask_BTT | jnp.eye(t, dtype=jnp.bool_)[None]
  return mask_BTT[:, None]


def cache_attention_mask(start_B, index, num_queries: int, num_slots: int):
  """Boolean mask [B, 1, T, S] for T queries at cache slots ``index + t`` over S cache slots.

  Row b holds real tokens from slot ``start_B[b]`` on (slots before it are left padding): a
  query sees the real slots up to its own. A padding query sees only itself, so its softmax is
  well defined.
  """
  query_slots_T = index + jnp.arange(num_queries)
  slots_S = jnp.arange(num_slots)
  causal_TS = slots_S[None, :] <= query_slots_T[:, None]
  real_BS = slots_S[None, :] >= start_B[:, None]
  mask_BTS = (causal_TS[None] & real_BS[:, None, :]) | (slots_S[None, :] == query_slots_T[:, None])
  return mask_BTS[:, None]


class Attention(nnx.Module):
  """Multi-head attention with ``num_kv_heads`` key/value groups (GQA; MHA when equal)."""

  def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
               rope_base: float | None = 10000.0, param_dtype=jnp.float32, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.rope_base = rope_base
    self.dtype = dtype
    init = fan_in_init((0,))
    self.wq_DHK = param(rngs, init, (d_model, num_heads, head_dim), ("embed", "heads", None),
                        param_dtype)
    self.wk_DGK = param(rngs, init, (d_model, num_kv_heads, head_dim),
                        ("embed", "kv_heads", None), param_dtype)
    self.wv_DGK = param(rngs, init, (d_model, num_kv_heads, head_dim),
                        ("embed", "kv_heads", None), param_dtype)
    self.wo_HKD = param(rngs, fan_in_init((0, 1)), (num_heads, head_dim, d_model),
                        ("heads", None, "embed"), param_dtype)

  def _project(self, x_BTD, positions_BT):
    """Rotated queries [B, T, H, K], rotated keys and values [B, T, G, K]."""
    dt = self.dtype
    x_BTD = x_BTD.astype(dt)
    q_BTHK = jnp.einsum("btd,dhk->bthk", x_BTD, self.wq_DHK[...].astype(dt))
    k_BTGK = jnp.einsum("btd,dgk->btgk", x_BTD, self.wk_DGK[...].astype(dt))
    v_BTGK = jnp.einsum("btd,dgk->btgk", x_BTD, self.wv_DGK[...].astype(dt))
    if self.rope_base is not None:  # None: positions come from the embeddings (ViT, DiT)
      q_BTHK = apply_rope(q_BTHK, positions_BT, self.rope_base)
      k_BTGK = apply_rope(k_BTGK, positions_BT, self.rope_base)
    q_BTHK = sharding.constrain(q_BTHK, ("batch", "seq", "act_heads", None))
    return q_BTHK, k_BTGK, v_BTGK

  def _attend(self, q_BTHK, k_BSGK, v_BSGK, mask_B1TS):
    out_BTHK = jax.nn.dot_product_attention(q_BTHK, k_BSGK, v_BSGK, mask=mask_B1TS)
    return jnp.einsum("bthk,hkd->btd", out_BTHK, self.wo_HKD[...].astype(self.dtype))

  def __call__(self, x_BTD, positions_BT, mask_B1TS):
    q_BTHK, k_BSGK, v_BSGK = self._project(x_BTD, positions_BT)
    return self._attend(q_BTHK, k_BSGK, v_BSGK, mask_B1TS)

  def decode(self, x_BTD, positions_BT, mask_B1TS, k_BSGK, v_BSGK, index):
    """Attention of T new tokens over a cache of S slots.

    Args:
      x_BTD: the new tokens' inputs.
      positions_BT: their RoPE positions.
      mask_B1TS: which cache slots each new token sees (``cache_attention_mask``).
      k_BSGK, v_BSGK: the cache (rotated keys, values) of this layer.
      index: int32 scalar, the slot of the first new token; slots ``[index, index + T)`` are
        overwritten with the new keys and values before attending.

    Returns:
      (out_BTD, k_BSGK, v_BSGK): the attention output and the updated cache.
    """
    q_BTHK, k_BTGK, v_BTGK = self._project(x_BTD, positions_BT)
    k_BSGK = jax.lax.dynamic_update_slice_in_dim(k_BSGK, k_BTGK.astype(k_BSGK.dtype), index, 1)
    v_BSGK = jax.lax.dynamic_update_slice_in_dim(v_BSGK, v_BTGK.astype(v_BSGK.dtype), index, 1)
    out_BTD = self._attend(q_BTHK, k_BSGK.astype(self.dtype), v_BSGK.astype(self.dtype),
                           mask_B1TS)
    return out_BTD, k_BSGK, v_BSGK
