"""Decoder-only MoE language model (Mixtral-style; Nakamura et al. 2025, arXiv 2508.18672).

Token embedding -> the trunk (models/trunk.py: causal pre-norm blocks, dense or MoE SwiGLU FFNs,
stacked and scanned) -> RMSNorm -> untied output head.

Generation uses ``init_cache`` and ``decode``: the key/value cache is an explicit pytree
(``KVCache``) passed in and returned, stacked like the parameters (one array per trunk stage,
groups first), so a decoding loop jits with ``nnx.split`` / ``nnx.merge`` like the train step.
Prompts are left-padded: row b holds real tokens from cache slot ``start_B[b]`` on, and a token
in slot s has position ``s - start_B[b]``, so a padded row computes what it would compute alone.

Axes: B batch, T sequence, D d_model, V vocabulary, L groups of a stage, J blocks per group,
S cache slots, G kv heads, K head dim.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from moejax import sharding
from moejax.errors import require
from moejax.layers import params as params_lib
from moejax.layers.attention import attention_mask, cache_attention_mask
from moejax.layers.embeddings import Embed, OutputHead
from moejax.layers.norms import RMSNorm
from moejax.models.trunk import Trunk, TrunkConfig


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for S slots, and where each row's real tokens are.

  Attributes:
    k_stages: rotated keys per trunk stage, [L, J, B, S, G, K] each (block j of group l).
    v_stages: values, laid out like the keys.
    start_B: int32, the first slot of each row holding a real token (left padding before it).
    end: int32 scalar, the number of slots written (the slot of the next token).
  """
  k_stages: tuple
  v_stages: tuple
  start_B: jax.Array
  end: jax.Array


def trunk_config(model: ml_collections.ConfigDict, prefix: str = "config.model") -> TrunkConfig:
  """The LM's trunk: causal attention with RoPE, the model section's fields as they are."""
  require(model.vocab_size > 0, f"{prefix}.vocab_size={model.vocab_size} must be positive")
  return TrunkConfig.from_config(model, prefix)


class MoELM(nnx.Module):
  """The language model. ``__call__`` returns float32 logits [B, T, V] and the trunk's aux dict
  (MoE losses and metrics averaged over MoE layers; ``expert_load`` [M, E] per layer)."""

  def __init__(self, vocab_size: int, trunk: TrunkConfig, *, rngs: nnx.Rngs):
    dtypes = trunk.dtypes()
    self.embed = Embed(vocab_size, trunk.d_model, rngs=rngs, **dtypes)
    self.trunk = Trunk(trunk, rngs=rngs)
    self.final_norm = RMSNorm(trunk.d_model, eps=trunk.norm_eps,
                              param_dtype=dtypes["param_dtype"], rngs=rngs)
    # Parameters are ordered by attribute name, and the gradient's global norm (clipping) sums
    # them in that order: these names keep the order (embed, norm, layers, head) of earlier
    # moejax checkpoints, so training losses reproduce bit for bit.
    self.unembed = OutputHead(trunk.d_model, vocab_size, rngs=rngs, **dtypes)
    self.cache_dtype = dtypes["dtype"]

  @classmethod
  def from_config(cls, model: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> "MoELM":
    """``model.init_scale`` (default 1) multiplies the std of every fan-in-initialised weight
    (attention, FFN, experts, output head; not the embedding, router or norms)."""
    with params_lib.init_scale(model.get("init_scale", 1.0)):
      return cls(model.vocab_size, trunk_config(model), rngs=rngs)

  def __call__(self, ids_BT, positions_BT=None, segment_ids_BT=None):
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(ids_BT.shape[1]), ids_BT.shape)
    if segment_ids_BT is None:
      segment_ids_BT = jnp.ones_like(ids_BT)
    mask_B1TT = attention_mask(segment_ids_BT, causal=True)
    x_BTD = sharding.constrain(self.embed(ids_BT), ("batch", "seq", "act_embed"))
    x_BTD, aux = self.trunk(x_BTD, positions_BT, mask_B1TT)
    return self.unembed(self.final_norm(x_BTD)), aux

  def update_router_biases(self, expert_load_ME):
    """See ``Trunk.update_router_biases``."""
    self.trunk.update_router_biases(expert_load_ME)

  def init_cache(self, batch: int, num_slots: int, start_B=None) -> KVCache:
    """An empty cache of ``num_slots`` slots; ``start_B`` (default 0) = left padding per row."""
    k_stages, v_stages = self.trunk.init_cache(batch, num_slots, self.cache_dtype)
    if start_B is None:
      start_B = jnp.zeros((batch,), jnp.int32)
    return KVCache(k_stages=k_stages, v_stages=v_stages, start_B=jnp.asarray(start_B, jnp.int32),
                   end=jnp.zeros((), jnp.int32))

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
    num_slots = cache.k_stages[0].shape[3]
    slots_T = cache.end + jnp.arange(num_new, dtype=jnp.int32)
    positions_BT = jnp.maximum(slots_T[None, :] - cache.start_B[:, None], 0)
    mask_B1TS = cache_attention_mask(cache.start_B, cache.end, num_new, num_slots)
    x_BTD = sharding.constrain(self.embed(ids_BT), ("batch", "seq", "act_embed"))
    x_BTD, k_stages, v_stages = self.trunk.decode(x_BTD, positions_BT, mask_B1TS, cache.k_stages,
                                                  cache.v_stages, cache.end)
    logits_BTV = self.unembed(self.final_norm(x_BTD))
    return logits_BTV, cache.replace(k_stages=k_stages, v_stages=v_stages,
                                     end=cache.end + num_new)
