"""Decoder-only MoE language model (Mixtral-style; RESEARCH.md section 1).

Token embedding -> L pre-norm blocks (attention, then a dense or MoE SwiGLU FFN) -> RMSNorm ->
untied output head. Layers are grouped: a group is ``moe_every`` blocks whose last FFN is an
MoE (``moe_every=1``: every layer is MoE; ``moe_every=0``: a dense model). Groups are created with
``nnx.vmap`` and applied with ``nnx.scan`` (optionally rematerialised), so compile time does not
grow with depth.

Generation uses ``init_cache`` and ``decode``: the key/value cache is an explicit pytree
(``KVCache``) passed in and returned, stacked like the parameters (groups first), so a decoding
loop jits with ``nnx.split`` / ``nnx.merge`` like the train step. Prompts are left-padded: row b
holds real tokens from cache slot ``start_B[b]`` on, and a token in slot s has position
``s - start_B[b]``, so a padded row computes what it would compute alone.

Axes: B batch, T sequence, D d_model, V vocabulary, L groups, J blocks per group, S cache slots,
G kv heads, K head dim.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from moejax import sharding
from moejax.layers.attention import Attention, attention_mask, cache_attention_mask
from moejax.layers.embeddings import Embed, OutputHead
from moejax.layers.mlp import SwiGLU
from moejax.layers.norms import RMSNorm
from moejax.moe.layer import EXPERT_LOAD, MoELayer

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
      initial_top_k = cfg.get("initial_top_k")
      self.ffn = MoELayer(
          cfg.d_model, cfg.num_experts, cfg.top_k, cfg.expert_d_ff,
          shared_d_ff=cfg.shared_expert_d_ff, router=cfg.get("router", "softmax_top_k"),
          renormalize=cfg.router_renormalize, strategy=cfg.dispatch,
          capacity_factor=cfg.capacity_factor,
          batch_prioritized=cfg.get("batch_prioritized_routing", False),
          bias_update_rate=cfg.get("router_bias_update_rate", 0.0),
          noise_std=cfg.get("router_noise_std"),
          sinkhorn_iterations=cfg.get("sinkhorn_iterations", 8),
          top_k_schedule=(initial_top_k, cfg.top_k_decay_steps) if initial_top_k else None,
          balance_per_sequence=cfg.get("balance_per_sequence", False),
          chunk_size=cfg.get("sparsity_chunk_size", 8),
          detailed_metrics=cfg.get("detailed_moe_metrics", False), rngs=rngs, **dtypes)
    else:
      self.ffn = SwiGLU(cfg.d_model, cfg.d_ff, rngs=rngs, **dtypes)
    self.use_moe = use_moe

  def __call__(self, x_BTD, positions_BT, mask_B1TT):
    x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD), positions_BT, mask_B1TT).astype(x_BTD.dtype)
    return self._ffn_residual(x_BTD)

  def decode(self, x_BTD, positions_BT, mask_B1TS, k_BSGK, v_BSGK, index):
    """``__call__`` for T new tokens over this layer's cache; returns (x_BTD, k_BSGK, v_BSGK)."""
    attn_BTD, k_BSGK, v_BSGK = self.attn.decode(self.attn_norm(x_BTD), positions_BT, mask_B1TS,
                                                k_BSGK, v_BSGK, index)
    x_BTD, _ = self._ffn_residual(x_BTD + attn_BTD.astype(x_BTD.dtype))
    return x_BTD, k_BSGK, v_BSGK

  def _ffn_residual(self, x_BTD):
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

  @property
  def blocks(self) -> list[DecoderBlock]:
    """The blocks in order of application (J of them)."""
    return list(self.dense_blocks) + ([self.moe_block] if self.moe_block is not None else [])

  def decode(self, x_BTD, positions_BT, mask_B1TS, k_JBSGK, v_JBSGK, index):
    """Runs the blocks over their caches; returns (x_BTD, k_JBSGK, v_JBSGK)."""
    ks, vs = [], []
    for j, block in enumerate(self.blocks):
      x_BTD, k_BSGK, v_BSGK = block.decode(x_BTD, positions_BT, mask_B1TS, k_JBSGK[j],
                                           v_JBSGK[j], index)
      ks.append(k_BSGK)
      vs.append(v_BSGK)
    return x_BTD, jnp.stack(ks), jnp.stack(vs)


def num_groups(cfg: ml_collections.ConfigDict) -> int:
  return cfg.num_layers // max(cfg.moe_every, 1)


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for S slots, and where each row's real tokens are.

  Attributes:
    k_LJBSGK: rotated keys; block j of group l at ``[l, j]``.
    v_LJBSGK: values, laid out like the keys.
    start_B: int32, the first slot of each row holding a real token (left padding before it).
    end: int32 scalar, the number of slots written (the slot of the next token).
  """
  k_LJBSGK: jax.Array
  v_LJBSGK: jax.Array
  start_B: jax.Array
  end: jax.Array


class MoELM(nnx.Module):
  """The language model. ``__call__`` returns float32 logits [B, T, V] and the aux dict: each
  MoE loss/metric averaged over the MoE layers, except ``expert_load`` [L, E] (per layer, with
  aux-free balancing), which the train step hands to ``update_router_biases``."""

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
    aux = {name: values_L if name == EXPERT_LOAD else jnp.mean(values_L)
           for name, values_L in aux_L.items()}
    return logits_BTV, aux

  def update_router_biases(self, expert_load_LE):
    """The aux-free balancing update of every MoE layer's bias [L, E] (stacked over groups)
    from the step's ``aux["expert_load"]``; call it outside the gradient."""
    self.groups.moe_block.ffn.update_bias(expert_load_LE)

  def init_cache(self, batch: int, num_slots: int, start_B=None) -> KVCache:
    """An empty cache of ``num_slots`` slots; ``start_B`` (default 0) = left padding per row."""
    blocks = self.groups.blocks
    wk_LDGK = blocks[0].attn.wk_DGK
    num_groups_, _, kv_heads, head_dim = wk_LDGK.shape
    shape = (num_groups_, len(blocks), batch, num_slots, kv_heads, head_dim)
    dtype = blocks[0].attn.dtype
    if start_B is None:
      start_B = jnp.zeros((batch,), jnp.int32)
    return KVCache(k_LJBSGK=jnp.zeros(shape, dtype), v_LJBSGK=jnp.zeros(shape, dtype),
                   start_B=jnp.asarray(start_B, jnp.int32), end=jnp.zeros((), jnp.int32))

  def decode(self, ids_BT, cache: KVCache):
    """Feeds T new tokens (a left-padded prompt, or one generated token) through the cache.

    The tokens take slots ``[cache.end, cache.end + T)``; row b's token in slot s has position
    ``s - start_B[b]`` and sees the real slots up to its own. Logits of slot s equal those of
    ``__call__`` at position ``s - start_B[b]`` on the row's real tokens (exactly so with
    dropless dispatch; with a capacity limit, which tokens are dropped depends on the batch).

    Returns:
      (logits_BTV float32, the updated cache).
    """
    num_new = ids_BT.shape[1]
    num_slots = cache.k_LJBSGK.shape[3]
    slots_T = cache.end + jnp.arange(num_new, dtype=jnp.int32)
    positions_BT = jnp.maximum(slots_T[None, :] - cache.start_B[:, None], 0)
    mask_B1TS = cache_attention_mask(cache.start_B, cache.end, num_new, num_slots)
    x_BTD = sharding.constrain(self.embed(ids_BT), ("batch", "seq", "act_embed"))

    def apply_group(x_BTD, group, k_JBSGK, v_JBSGK):
      return group.decode(x_BTD, positions_BT, mask_B1TS, k_JBSGK, v_JBSGK, cache.end)

    scan = nnx.scan(apply_group, in_axes=(nnx.Carry, 0, 0, 0), out_axes=(nnx.Carry, 0, 0))
    x_BTD, k_LJBSGK, v_LJBSGK = scan(x_BTD, self.groups, cache.k_LJBSGK, cache.v_LJBSGK)
    logits_BTV = self.head(self.final_norm(x_BTD))
    cache = cache.replace(k_LJBSGK=k_LJBSGK, v_LJBSGK=v_LJBSGK, end=cache.end + num_new)
    return logits_BTV, cache
