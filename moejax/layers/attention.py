"""Causal grouped-query self-attention with RoPE and packed-segment masking.

Axes: B batch, T query length, S key length, D d_model, H query heads, G kv heads, K head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moejax import sharding
from moejax.layers.embeddings import apply_rope
from moejax.layers.params import fan_in_init, param


def attention_mask(segment_ids_BT):
  """Boolean mask [B, 1, T, T]: causal, and only within the same non-padding segment."""
  t = segment_ids_BT.shape[1]
  causal_TT = jnp.tril(jnp.ones((t, t), dtype=jnp.bool_))
  same_BTT = segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]
  valid_BT = segment_ids_BT != 0
  mask_BTT = causal_TT[None] & same_BTT & valid_BT[:, None, :]
  # A padding query still attends to itself so its softmax is well defined.
  mask_BTT = mask_BTT | jnp.eye(t, dtype=jnp.bool_)[None]
  return mask_BTT[:, None]


class Attention(nnx.Module):
  """Multi-head attention with ``num_kv_heads`` key/value groups (GQA; MHA when equal)."""

  def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
               rope_base: float = 10000.0, param_dtype=jnp.float32, dtype=jnp.float32,
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

  def __call__(self, x_BTD, positions_BT, mask_B1TS):
    dt = self.dtype
    x_BTD = x_BTD.astype(dt)
    q_BTHK = jnp.einsum("btd,dhk->bthk", x_BTD, self.wq_DHK[...].astype(dt))
    k_BSGK = jnp.einsum("bsd,dgk->bsgk", x_BTD, self.wk_DGK[...].astype(dt))
    v_BSGK = jnp.einsum("bsd,dgk->bsgk", x_BTD, self.wv_DGK[...].astype(dt))
    q_BTHK = sharding.constrain(apply_rope(q_BTHK, positions_BT, self.rope_base),
                                ("batch", "seq", "act_heads", None))
    k_BSGK = apply_rope(k_BSGK, positions_BT, self.rope_base)
    out_BTHK = jax.nn.dot_product_attention(q_BTHK, k_BSGK, v_BSGK, mask=mask_B1TS)
    return jnp.einsum("bthk,hkd->btd", out_BTHK, self.wo_HKD[...].astype(dt))
