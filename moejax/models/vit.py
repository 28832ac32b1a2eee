"""Vision transformer with MoE layers (V-MoE, Riquelme et al. 2021; public code
google-research/vmoe), and per-task heads for task-conditioned routing (M3ViT, Liang et al.
2022).

Image [B, H, W, C] -> non-overlapping p x p patches, each linearly embedded (ViT, Dosovitskiy et
al. 2021) -> a learned class token in front (``pool="cls"``) -> learned position embeddings
-> the trunk (models/trunk.py: bidirectional pre-norm blocks; dense GELU or MoE FFNs placed
every n-th / last-n, V-MoE style) -> RMSNorm -> the class token's vector, or the mean over the
patches (``pool="gap"``) -> one linear head per task.

Differences from the ViT/V-MoE papers, by design of the shared trunk: RMSNorm instead of
LayerNorm, no biases in attention and FFN matrices.

Axes: B batch, H/W image height/width, C channels, N patches (T tokens with the class token),
P patch features (p*p*C), D d_model, K classes of a task.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp
import ml_collections
from flax import nnx

from moejax import sharding
from moejax.errors import require
from moejax.layers.embeddings import OutputHead
from moejax.layers.norms import RMSNorm
from moejax.layers.params import fan_in_init, param
from moejax.models.trunk import Trunk, TrunkConfig

POOLS = ("cls", "gap")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """The image side of a ViT (the trunk has its own config)."""
  image_size: int
  patch_size: int
  channels: int
  num_classes: tuple[int, ...]  # one head per task
  pool: str = "cls"
  group_images: Optional[int] = None  # images per routing group (None: the whole batch)

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def num_tokens(self) -> int:
    return self.num_patches + (self.pool == "cls")

  @property
  def patch_features(self) -> int:
    return self.patch_size * self.patch_size * self.channels

  @classmethod
  def from_config(cls, model: ml_collections.ConfigDict, prefix: str = "config.model"):
    p = prefix
    num_classes = model.num_classes
    num_classes = (num_classes,) if isinstance(num_classes, int) else tuple(num_classes)
    cfg = cls(image_size=model.image_size, patch_size=model.patch_size,
              channels=model.channels, num_classes=num_classes, pool=model.pool,
              group_images=model.get("group_images"))
    for name in ("image_size", "patch_size", "channels"):
      require(getattr(cfg, name) > 0, f"{p}.{name}={getattr(cfg, name)} must be positive")
    require(cfg.image_size % cfg.patch_size == 0,
            f"{p}.patch_size={cfg.patch_size} does not divide {p}.image_size={cfg.image_size}")
    require(cfg.num_classes and all(c >= 2 for c in cfg.num_classes),
            f"{p}.num_classes={model.num_classes} must be >= 2 classes for each task")
    require(cfg.pool in POOLS, f"{p}.pool={cfg.pool!r} is not one of {POOLS}")
    require(cfg.group_images is None or cfg.group_images >= 1,
            f"{p}.group_images={cfg.group_images} must be >= 1 or None")
    return cfg


def trunk_config(model: ml_collections.ConfigDict, prefix: str = "config.model") -> TrunkConfig:
  """The ViT's trunk: bidirectional attention, positions from the embeddings (no RoPE), routing
  groups of ``group_images`` images. Its task-conditioned routers need one head per task."""
  trunk = TrunkConfig.from_config(model, prefix, rope_base=None)
  vit = ViTConfig.from_config(model, prefix)
  if vit.group_images is not None:
    require(trunk.moe.group_size is None,
            f"set {prefix}.group_images or {prefix}.moe.group_size, not both")
    moe = dataclasses.replace(trunk.moe, group_size=vit.group_images * vit.num_tokens)
    trunk = dataclasses.replace(trunk, moe=moe)
  tasks = trunk.moe.num_tasks
  require(tasks in (0, len(vit.num_classes)),
          f"{prefix}.moe.num_tasks={tasks} must be 0 or the number of tasks, "
          f"len({prefix}.num_classes)={len(vit.num_classes)}")
  return trunk


def patchify(images_BHWC, patch_size: int):
  """[B, H, W, C] -> [B, N, P], patches in row-major order, features (row, column, channel)."""
  b, h, w, c = images_BHWC.shape
  p = patch_size
  x = images_BHWC.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


class ViT(nnx.Module):
  """``__call__(images_BHWC, task_B=None) -> (logits, aux)``: ``logits`` is a tuple of float32
  [B, K_t], one per task (every head runs on every image; the task picks which counts), and
  aux the trunk's MoE losses and metrics."""

  def __init__(self, vit: ViTConfig, trunk: TrunkConfig, *, rngs: nnx.Rngs):
    dtypes = trunk.dtypes()
    pdt = dtypes["param_dtype"]
    d = trunk.d_model
    self.vit = vit
    self.patch_PD = param(rngs, fan_in_init(), (vit.patch_features, d), (None, "embed"), pdt)
    self.patch_bias_D = param(rngs, nnx.initializers.zeros, (d,), ("embed",), pdt)
    self.cls_1D = (param(rngs, nnx.initializers.zeros, (1, d), (None, "embed"), pdt)
                   if vit.pool == "cls" else None)
    self.pos_TD = param(rngs, nnx.initializers.normal(0.02), (vit.num_tokens, d),
                        (None, "embed"), pdt)
    self.trunk = Trunk(trunk, rngs=rngs)
    self.final_norm = RMSNorm(d, eps=trunk.norm_eps, param_dtype=pdt, rngs=rngs)
    self.heads = nnx.List([OutputHead(d, k, rngs=rngs, **dtypes) for k in vit.num_classes])
    self.dtype = dtypes["dtype"]
    self.task_conditioned = trunk.moe.num_tasks > 0

  @classmethod
  def from_config(cls, model: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> "ViT":
    return cls(ViTConfig.from_config(model), trunk_config(model), rngs=rngs)

  def embed(self, images_BHWC):
    """Patch embeddings plus positions (and the class token first), [B, T, D]."""
    patches_BNP = patchify(images_BHWC.astype(self.dtype), self.vit.patch_size)
    x_BND = (jnp.einsum("bnp,pd->bnd", patches_BNP, self.patch_PD[...].astype(self.dtype))
             + self.patch_bias_D[...].astype(self.dtype))
    if self.cls_1D is not None:
      cls_B1D = jnp.broadcast_to(self.cls_1D[...].astype(self.dtype)[None],
                                 (x_BND.shape[0], 1, x_BND.shape[2]))
      x_BND = jnp.concatenate([cls_B1D, x_BND], axis=1)
    return x_BND + self.pos_TD[...].astype(self.dtype)

  def __call__(self, images_BHWC, task_B=None):
    if self.task_conditioned and task_B is None:
      raise ValueError("this ViT routes by task (config.model.moe.num_tasks > 0): pass task_B")
    x_BTD = sharding.constrain(self.embed(images_BHWC), ("batch", "seq", "act_embed"))
    positions_BT = jnp.broadcast_to(jnp.arange(x_BTD.shape[1]), x_BTD.shape[:2])
    x_BTD, aux = self.trunk(x_BTD, positions_BT, None,
                            task_B=task_B if self.task_conditioned else None)
    x_BTD = self.final_norm(x_BTD)
    pooled_B1D = x_BTD[:, :1] if self.vit.pool == "cls" else jnp.mean(x_BTD, 1, keepdims=True)
    return tuple(head(pooled_B1D)[:, 0] for head in self.heads), aux

  def update_router_biases(self, expert_load_ME):
    """See ``Trunk.update_router_biases``."""
    self.trunk.update_router_biases(expert_load_ME)
