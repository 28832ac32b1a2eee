"""The transformer trunk every model family shares: blocks, the layer stack, MoE placement.

A **block** is pre-norm and residual: ``x + mixer(norm(x))``, then ``x + ffn(norm(x))``. The
mixer is self-attention, causal (LM) or bidirectional (ViT, DiT), chosen by the mask the model
passes; the FFN is dense (SwiGLU or GELU) or the one MoE layer (moejax/moe/layer.py). With
``cond_dim > 0`` a block is adaLN-Zero modulated (DiT, Peebles & Xie 2023): a zero-initialised
linear map of the conditioning vector gives a shift, scale and gate for each half, so every
block starts as the identity and the router sees the *modulated* tokens (DiT-MoE, Fei et al.
2024).

**Placement** says which layers are MoE (``moe_placement``): every n-th layer (the last of each
group of n; n = 1: all, n = 0: none), optionally only the last n of those (V-MoE "last-n",
Riquelme et al. 2021), or an explicit list of layer indices. **The stack** covers the L layers
with *stages*: a stage is a group pattern (e.g. dense, MoE) repeated r times, created with
``nnx.vmap`` (parameters stacked on a leading "layers" axis) and applied with ``nnx.scan``
(optionally rematerialised), so compile time grows with the number of distinct patterns, not
with depth. ``stage_patterns`` picks the fewest traced blocks that cover the placement: every-n
is one stage, last-n two.

**Aux reduction**: each MoE layer returns scalar losses and metrics; the trunk returns their
mean over MoE layers, except ``expert_load`` ([M, E], one row per MoE layer in depth order),
which ``update_router_biases`` hands back to each layer's aux-free balancing bias.

Axes: B batch, T sequence, D d_model, C conditioning features, L repeats of a stage's group,
J blocks per group, M MoE layers, E experts, S cache slots, G kv heads, K head dim.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from moejax import sharding
from moejax.errors import require
from moejax.layers.attention import Attention
from moejax.layers.mlp import DENSE_FFNS
from moejax.layers.norms import RMSNorm
from moejax.layers.params import param
from moejax.moe.config import MoEConfig
from moejax.moe.layer import PER_LAYER_AUX, MoELayer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
Pattern = tuple[bool, ...]  # one group: whether each of its blocks is MoE


def moe_placement(num_layers: int, every: int = 1, last_n: Optional[int] = None,
                  layers: Optional[Sequence[int]] = None) -> Pattern:
  """Whether each layer is MoE: the explicit ``layers`` if given, else every ``every``-th layer
  (indices every-1, 2*every-1, ...; 0 = none), keeping only the last ``last_n`` of those."""
  if layers is not None:
    chosen = set(layers)
  else:
    chosen = [i for i in range(num_layers) if every > 0 and (i + 1) % every == 0]
    chosen = set(chosen[-last_n:] if last_n else chosen if last_n is None else [])
  return tuple(i in chosen for i in range(num_layers))


@functools.cache
def stage_patterns(placement: Pattern) -> tuple[tuple[Pattern, int], ...]:
  """Covers ``placement`` with stages (group pattern, repeats), minimising the blocks traced
  (sum of pattern lengths), then the number of stages. Dynamic programming over positions."""
  n = len(placement)
  best: list[tuple[int, int, tuple]] = [(0, 0, ())] * (n + 1)  # (blocks, stages, plan) from i
  for i in range(n - 1, -1, -1):
    options = []
    for period in range(1, n - i + 1):
      group = placement[i:i + period]
      repeats = 1
      while placement[i + repeats * period:i + (repeats + 1) * period] == group:
        repeats += 1
      for r in range(1, repeats + 1):
        rest = best[i + r * period]
        options.append((rest[0] + period, rest[1] + 1, ((group, r),) + rest[2]))
    best[i] = min(options, key=lambda o: (o[0], o[1]))
  return best[0][2]


@dataclasses.dataclass(frozen=True)
class TrunkConfig:
  """What the trunk needs (read from a model config by ``from_config``; same field names)."""
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  d_ff: int                       # hidden size of the dense FFN layers
  moe: MoEConfig
  moe_every: int = 1
  moe_last_n: Optional[int] = None
  moe_layers: Optional[tuple[int, ...]] = None
  ffn_type: str = "swiglu"        # dense FFN: a layers.mlp.DENSE_FFNS name
  rope_base: Optional[float] = 10_000.0  # None: no RoPE (positions from the embeddings)
  norm_eps: float = 1e-5
  cond_dim: int = 0               # > 0: adaLN-Zero modulation from a [B, cond_dim] vector
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"             # none | full | dots

  @classmethod
  def from_config(cls, model, prefix: str = "config.model", **family) -> "TrunkConfig":
    """Reads the trunk's fields of a model config section; ``family`` fixes fields the family
    decides (e.g. ``cond_dim`` for DiT). Checks everything before anything is built."""
    names = {f.name for f in dataclasses.fields(cls)} - {"moe"} - set(family)
    values = {name: model[name] for name in names if name in model}
    if values.get("moe_layers") is not None:
      values["moe_layers"] = tuple(values["moe_layers"])
    cfg = cls(moe=MoEConfig.from_config(model.moe, f"{prefix}.moe"), **values, **family)
    cfg.check(prefix)
    return cfg

  def check(self, prefix: str = "config.model") -> None:
    p = prefix
    for name in ("d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "d_ff"):
      require(getattr(self, name) > 0, f"{p}.{name}={getattr(self, name)} must be positive")
    require(self.d_model % self.num_heads == 0,
            f"{p}.num_heads={self.num_heads} does not divide {p}.d_model={self.d_model}")
    require(self.num_heads % self.num_kv_heads == 0,
            f"{p}.num_kv_heads={self.num_kv_heads} does not divide {p}.num_heads={self.num_heads}")
    require(self.rope_base is None or self.head_dim % 2 == 0,
            f"{p}.head_dim={self.head_dim} must be even (RoPE)")
    require(self.moe_every >= 0, f"{p}.moe_every={self.moe_every} must be >= 0")
    if self.moe_layers is None and self.moe_last_n is None and self.moe_every:
      require(self.num_layers % self.moe_every == 0,
              f"{p}.moe_every={self.moe_every} does not divide {p}.num_layers={self.num_layers}")
    require(self.moe_last_n is None or self.moe_last_n >= 0,
            f"{p}.moe_last_n={self.moe_last_n} must be >= 0 or None")
    bad = [i for i in self.moe_layers or () if not 0 <= i < self.num_layers]
    require(not bad, f"{p}.moe_layers has indices {bad} outside [0, {self.num_layers})")
    require(self.ffn_type in DENSE_FFNS,
            f"{p}.ffn_type={self.ffn_type!r} is not one of {sorted(DENSE_FFNS)}")
    for name in ("dtype", "param_dtype"):
      require(getattr(self, name) in DTYPES,
              f"{p}.{name}={getattr(self, name)!r} is not one of {sorted(DTYPES)}")
    require(self.remat in ("none", *REMAT_POLICIES),
            f"{p}.remat={self.remat!r} is not one of {['none', *REMAT_POLICIES]}")

  @property
  def placement(self) -> Pattern:
    return moe_placement(self.num_layers, self.moe_every, self.moe_last_n, self.moe_layers)

  @property
  def num_moe_layers(self) -> int:
    return sum(self.placement)

  def aux_loss_defaults(self) -> dict[str, float]:
    """The auxiliary losses the trunk returns (its MoE layers'), with default weights."""
    return self.moe.aux_loss_defaults() if self.num_moe_layers else {}

  def dtypes(self) -> dict:
    return {"param_dtype": DTYPES[self.param_dtype], "dtype": DTYPES[self.dtype]}


class AdaLNModulation(nnx.Module):
  """adaLN-Zero: cond [B, C] -> (shift, scale, gate) for the mixer and for the FFN, [B, 1, D]
  each, from a zero-initialised linear map of silu(cond). ``parts`` = 2 gives one (shift,
  scale) pair (DiT's final layer)."""

  def __init__(self, cond_dim: int, d_model: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs,
               parts: int = 6):
    self.parts = parts
    self.w_CX = param(rngs, nnx.initializers.zeros, (cond_dim, parts * d_model),
                      (None, "embed"), param_dtype)
    self.b_X = param(rngs, nnx.initializers.zeros, (parts * d_model,), ("embed",), param_dtype)

  def __call__(self, cond_BC):
    mod_BX = jax.nn.silu(cond_BC.astype(jnp.float32)) @ self.w_CX[...].astype(jnp.float32)
    return jnp.split((mod_BX + self.b_X[...])[:, None, :], self.parts, axis=-1)


def modulate(h_BTD, shift_B1D, scale_B1D):
  """adaLN modulation (DiT): h * (1 + scale) + shift, in h's dtype."""
  return (h_BTD * (1.0 + scale_B1D) + shift_B1D).astype(h_BTD.dtype)


class Block(nnx.Module):
  """x + mixer(norm(x)), then x + ffn(norm(x)); the FFN is dense or the MoE layer."""

  def __init__(self, cfg: TrunkConfig, use_moe: bool, *, rngs: nnx.Rngs):
    dtypes = cfg.dtypes()
    self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=dtypes["param_dtype"],
                             rngs=rngs)
    self.attn = Attention(cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                          rope_base=cfg.rope_base, rngs=rngs, **dtypes)
    self.ffn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=dtypes["param_dtype"],
                            rngs=rngs)
    if use_moe:
      self.ffn = MoELayer(cfg.d_model, cfg.moe, rngs=rngs, **dtypes)
    else:
      self.ffn = DENSE_FFNS[cfg.ffn_type](cfg.d_model, cfg.d_ff, rngs=rngs, **dtypes)
    self.modulation = (AdaLNModulation(cfg.cond_dim, cfg.d_model,
                                       param_dtype=dtypes["param_dtype"], rngs=rngs)
                       if cfg.cond_dim else None)
    self.use_moe = use_moe

  def __call__(self, x_BTD, positions_BT, mask_B1TT, cond_BC=None, task_B=None):
    """Returns (x_BTD, aux): aux is the MoE layer's dict ({} for a dense FFN). ``task_B``:
    task ids for task-conditioned routers (moejax/moe/routers.py)."""
    mods = self.modulation(cond_BC) if self.modulation is not None else None
    h_BTD = self.attn_norm(x_BTD)
    if mods is not None:
      h_BTD = modulate(h_BTD, mods[0], mods[1])
    attn_BTD = self.attn(h_BTD, positions_BT, mask_B1TT)
    if mods is not None:
      attn_BTD = mods[2] * attn_BTD
    return self._ffn_residual(x_BTD + attn_BTD.astype(x_BTD.dtype), mods, task_B)

  def decode(self, x_BTD, positions_BT, mask_B1TS, k_BSGK, v_BSGK, index):
    """``__call__`` for T new tokens over this layer's cache; returns (x_BTD, k_BSGK, v_BSGK)."""
    attn_BTD, k_BSGK, v_BSGK = self.attn.decode(self.attn_norm(x_BTD), positions_BT, mask_B1TS,
                                                k_BSGK, v_BSGK, index)
    x_BTD, _ = self._ffn_residual(x_BTD + attn_BTD.astype(x_BTD.dtype), None)
    return x_BTD, k_BSGK, v_BSGK

  def _ffn_residual(self, x_BTD, mods, task_B=None):
    x_BTD = sharding.constrain(x_BTD, ("batch", "seq", "act_embed"))
    h_BTD = self.ffn_norm(x_BTD)
    if mods is not None:
      h_BTD = modulate(h_BTD, mods[3], mods[4])
    y_BTD, aux = self.ffn(h_BTD, task_B) if self.use_moe else (self.ffn(h_BTD), {})
    if mods is not None:
      y_BTD = mods[5] * y_BTD
    x_BTD = sharding.constrain(x_BTD + y_BTD.astype(x_BTD.dtype), ("batch", "seq", "act_embed"))
    return x_BTD, aux


class BlockGroup(nnx.Module):
  """Consecutive blocks of one pattern; returns each MoE block's aux stacked on a J axis."""

  def __init__(self, cfg: TrunkConfig, pattern: Pattern, *, rngs: nnx.Rngs):
    self.blocks = nnx.List([Block(cfg, use_moe, rngs=rngs) for use_moe in pattern])

  def __call__(self, x_BTD, positions_BT, mask_B1TT, cond_BC=None, task_B=None):
    auxes = []
    for block in self.blocks:
      x_BTD, aux = block(x_BTD, positions_BT, mask_B1TT, cond_BC, task_B)
      if block.use_moe:
        auxes.append(aux)
    return x_BTD, jax.tree.map(lambda *v: jnp.stack(v), *auxes) if auxes else {}

  def decode(self, x_BTD, positions_BT, mask_B1TS, k_JBSGK, v_JBSGK, index):
    """Runs the blocks over their caches; returns (x_BTD, k_JBSGK, v_JBSGK)."""
    ks, vs = [], []
    for j, block in enumerate(self.blocks):
      x_BTD, k_BSGK, v_BSGK = block.decode(x_BTD, positions_BT, mask_B1TS, k_JBSGK[j],
                                           v_JBSGK[j], index)
      ks.append(k_BSGK)
      vs.append(v_BSGK)
    return x_BTD, jnp.stack(ks), jnp.stack(vs)


def reduce_aux(aux_per_stage: Sequence[dict]) -> dict:
  """Per-MoE-layer aux values ([M, ...], depth order) -> their mean over layers, except
  ``PER_LAYER_AUX`` (``expert_load`` for the bias update, ``expert_choices`` for analyses),
  kept per layer."""
  stages = [aux for aux in aux_per_stage if aux]
  if not stages:
    return {}
  out = {}
  for name in stages[0]:
    values_M = jnp.concatenate([aux[name] for aux in stages])
    out[name] = values_M if name in PER_LAYER_AUX else jnp.mean(values_M)
  return out


def _stacked_groups(cfg: TrunkConfig, pattern: Pattern, repeats: int,
                    rngs: nnx.Rngs) -> BlockGroup:
  """``repeats`` groups of ``pattern``, parameters stacked on a leading "layers" axis."""

  @nnx.split_rngs(splits=repeats)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make_groups(rngs):
    return BlockGroup(cfg, pattern, rngs=rngs)

  return make_groups(rngs)


class Trunk(nnx.Module):
  """The layer stack: ``__call__(x_BTD, positions_BT, mask_B1TT, cond_BC=None, task_B=None)``
  returns the final hidden states (before any final norm) and the reduced aux dict."""

  def __init__(self, cfg: TrunkConfig, *, rngs: nnx.Rngs):
    self.remat = cfg.remat
    self.stage_patterns = stage_patterns(cfg.placement)
    self.stages = nnx.List([_stacked_groups(cfg, pattern, repeats, rngs)
                            for pattern, repeats in self.stage_patterns])

  def __call__(self, x_BTD, positions_BT, mask_B1TT, cond_BC=None, task_B=None):

    def apply_group(x_BTD, group):
      return group(x_BTD, positions_BT, mask_B1TT, cond_BC, task_B)

    if self.remat != "none":
      apply_group = nnx.remat(apply_group, policy=REMAT_POLICIES[self.remat])
    scan = nnx.scan(apply_group, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    aux_per_stage = []
    for stage in self.stages:
      x_BTD, aux_LJ = scan(x_BTD, stage)
      aux_per_stage.append(jax.tree.map(lambda v: v.reshape(-1, *v.shape[2:]), aux_LJ))
    return x_BTD, reduce_aux(aux_per_stage)

  def for_each_moe_layer(self, values_M, apply):
    """Calls ``apply(moe_layer, values_L)`` for every MoE block of every stage, where
    ``values_M`` holds one entry per MoE layer in depth order and ``values_L`` the entries of
    that block's stacked layers (the stage's repeats)."""
    start = 0
    for (_, repeats), stage in zip(self.stage_patterns, self.stages):
      moe_blocks = [b for b in stage.blocks if b.use_moe]
      if not moe_blocks:
        continue
      count = repeats * len(moe_blocks)
      values_LJ = values_M[start:start + count].reshape(repeats, len(moe_blocks),
                                                        *values_M.shape[1:])
      for j, block in enumerate(moe_blocks):
        apply(block.ffn, values_LJ[:, j])
      start += count

  def update_router_biases(self, expert_load_ME):
    """The aux-free balancing update of every MoE layer's bias from the step's per-layer loads
    (``aux["expert_load"]``, depth order); call it outside the gradient."""
    self.for_each_moe_layer(expert_load_ME, lambda layer, load_LE: layer.update_bias(load_LE))

  def set_task_expert_masks(self, mask_MNE):
    """Sets every task-conditioned router's ``task_mask_NE`` (which experts each task may use)
    from one [N, E] mask per MoE layer, depth order (Edge-MoE-style pruning at inference)."""

    def set_mask(layer, mask_LNE):
      layer.router.task_mask_NE[...] = jnp.asarray(mask_LNE, jnp.float32)

    self.for_each_moe_layer(mask_MNE, set_mask)

  def init_cache(self, batch: int, num_slots: int, dtype) -> tuple[tuple, tuple]:
    """Zero keys and values per stage, [L, J, B, S, G, K] each."""
    keys = []
    for (pattern, repeats), stage in zip(self.stage_patterns, self.stages):
      _, _, kv_heads, head_dim = stage.blocks[0].attn.wk_DGK.shape
      keys.append(jnp.zeros((repeats, len(pattern), batch, num_slots, kv_heads, head_dim), dtype))
    return tuple(keys), tuple(jnp.zeros_like(k) for k in keys)

  def decode(self, x_BTD, positions_BT, mask_B1TS, k_stages, v_stages, index):
    """Feeds new tokens through every stage's cache; returns (x_BTD, k_stages, v_stages)."""

    def apply_group(x_BTD, group, k_JBSGK, v_JBSGK):
      return group.decode(x_BTD, positions_BT, mask_B1TS, k_JBSGK, v_JBSGK, index)

    scan = nnx.scan(apply_group, in_axes=(nnx.Carry, 0, 0, 0), out_axes=(nnx.Carry, 0, 0))
    new_k, new_v = [], []
    for stage, k_LJBSGK, v_LJBSGK in zip(self.stages, k_stages, v_stages):
      x_BTD, k_LJBSGK, v_LJBSGK = scan(x_BTD, stage, k_LJBSGK, v_LJBSGK)
      new_k.append(k_LJBSGK)
      new_v.append(v_LJBSGK)
    return x_BTD, tuple(new_k), tuple(new_v)
