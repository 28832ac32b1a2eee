"""Decoder-only MoE language model (Mixtral-style; RESEARCH.md section 1).

Token embedding -> L pre-norm blocks (attention, then a dense or MoE SwiGLU FFN) -> RMSNorm ->
untied output head. Layers are grouped: a group is ``moe_every`` blocks whose last FFN is an
MoE (``moe_every=1``: every layer is MoE; ``moe_every=0``: a dense model). Groups are created with
``nnx.vmap`` and applied with ``nnx.scan`` (optionally rematerialised), so compile time does not
grow with depth.

Axes: B batch, T sequence, D d_model, V vocabulary, L groups.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from moejax import sharding
from moejax.layers.attention import Attention, attention_mask
from moejax.layers.embeddings import Embed, OutputHead
from moejax.layers.mlp import SwiGLU
from moejax.layers.norms import RMSNorm
from moejax.moe.layer import MoELayer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class DecoderBlock(nnx.Module):
  """x + attn(norm(x)), then x + ffn(norm(x)); the FFN is dense SwiGLU or an MoE layer."""

  def __init__(self, cfg: ml_collections.ConfigDict, use_moe: bool, *, rngs: nnx.Rngs):
    dtypes = {"param_dtype": DTYPES[cfg.param_dtype], "dtype": DTYPES[cfg.dtype]}
    self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=dtypes["param_dtype"],
                             rngs=rngs)
    self.attn = Attention(cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                          rope_base=cfg.rope_base, rngs=rngs, **dtypes)
    self.ffn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=dtypes["param_dtype"],
                            rngs=rngs)
    if use_moe:
      self.ffn = MoELayer(cfg.d_model, cfg.num_experts, cfg.top_k, cfg.expert_d_ff,
                          shared_d_ff=cfg.shared_expert_d_ff, renormalize=cfg.router_renormalize,
                          strategy=cfg.dispatch, capacity_factor=cfg.capacity_factor,
                          rngs=rngs, **dtypes)
    else:
      self.ffn = SwiGLU(cfg.d_model, cfg.d_ff, rngs=rngs, **dtypes)
    self.use_moe = use_moe

  def __call__(self, x_BTD, positions_BT, mask_B1TT):
    x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD), positions_BT, mask_B1TT).astype(x_BTD.dtype)
    x_BTD = sharding.constrain(x_BTD, ("batch", "seq", "act_embed"))
    h_BTD = self.ffn_norm(x_BTD)
    if self.use_moe:
      y_BTD, aux = self.ffn(h_BTD)
    else:
      y_BTD, aux = self.ffn(h_BTD), {}
    x_BTD = sharding.constrain(x_BTD + y_BTD.astype(x_BTD.dtype), ("batch", "seq", "act_embed"))
    return x_BTD, aux


class BlockGroup(nnx.Module):
  """``moe_every`` consecutive blocks: dense ones, then one MoE block (all dense if 0)."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    num_dense = max(cfg.moe_every - 1, 0) if cfg.moe_every else 1
    self.dense_blocks = nnx.List([DecoderBlock(cfg, use_moe=False, rngs=rngs)
                                  for _ in range(num_dense)])
    self.moe_block = DecoderBlock(cfg, use_moe=True, rngs=rngs) if cfg.moe_every else None

  def __call__(self, x_BTD, positions_BT, mask_B1TT):
    for block in self.dense_blocks:
      x_BTD, _ = block(x_BTD, positions_BT, mask_B1TT)
    aux = {}
    if self.moe_block is not None:
      x_BTD, aux = self.moe_block(x_BTD, positions_BT, mask_B1TT)
    return x_BTD, aux


def num_groups(cfg: ml_collections.ConfigDict) -> int:
  return cfg.num_layers // max(cfg.moe_every, 1)


class MoELM(nnx.Module):
  """The language model. ``__call__`` returns float32 logits [B, T, V] and the aux dict
  (each MoE loss/metric averaged over the MoE layers)."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    dtypes = {"param_dtype": DTYPES[cfg.param_dtype], "dtype": DTYPES[cfg.dtype]}
    self.remat = cfg.remat
    self.embed = Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, **dtypes)

    @nnx.split_rngs(splits=num_groups(cfg))
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_groups(rngs):
      return BlockGroup(cfg, rngs=rngs)

    self.groups = make_groups(rngs)
    self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=dtypes["param_dtype"],
                              rngs=rngs)
    self.head = OutputHead(cfg.d_model, cfg.vocab_size, rngs=rngs, **dtypes)

  def __call__(self, ids_BT, positions_BT=None, segment_ids_BT=None):
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(ids_BT.shape[1]), ids_BT.shape)
    if segment_ids_BT is None:
      segment_ids_BT = jnp.ones_like(ids_BT)
    mask_B1TT = attention_mask(segment_ids_BT)
    x_BTD = sharding.constrain(self.embed(ids_BT), ("batch", "seq", "act_embed"))

    def apply_group(x_BTD, group):
      return group(x_BTD, positions_BT, mask_B1TT)

    if self.remat != "none":
      apply_group = nnx.remat(apply_group, policy=REMAT_POLICIES[self.remat])
    scan = nnx.scan(apply_group, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    x_BTD, aux_L = scan(x_BTD, self.groups)
    logits_BTV = self.head(self.final_norm(x_BTD))
    aux = {name: jnp.mean(values_L) for name, values_L in aux_L.items()}
    return logits_BTV, aux
