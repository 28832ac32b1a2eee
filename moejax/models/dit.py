"""Diffusion transformer with MoE layers: DiT (Peebles & Xie 2023) and DiT-MoE (Fei et al. 2024,
"Scaling Diffusion Transformers to 16 Billion Parameters"; public code feizc/DiT-MoE).

Noisy image [B, H, W, C] -> p x p patches, linearly embedded, plus fixed 2D sin-cos positions
-> the trunk (models/trunk.py) with adaLN-Zero blocks conditioned on c = timestep embedding +
class embedding (the label ``num_classes`` is the null class of classifier-free guidance); the
FFN of every block is the MoE layer (DiT-MoE: SwiGLU experts of hidden 4D, softmax top-k not
renormalised, dropless, a shared SwiGLU of hidden 2D) or a dense FFN (DiT) -> final norm,
adaLN shift/scale, a zero-initialised linear map to p*p*C_out -> unpatchify. C_out = 2C with a
learned variance (the second half feeds ``DDPMSchedule.model_log_variance``), else C.

Sizes (``SIZES``, the paper's table): S, B, L, XL, G set d_model, layers and heads; with
``model.size`` set, the expert and shared hidden sizes follow as 4D and 2D (``resolve``).

Differences from DiT by design of the shared trunk: RMSNorm (with a scale) instead of
LayerNorm without affine, and no biases in attention and FFN matrices.

Axes: B batch, H/W image height/width, C channels, N patches (the tokens), P patch features
(p*p*C), O output patch features (p*p*C_out), D d_model, F frequency features, K classes + 1.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from moejax import sharding
from moejax.diffusion.objectives import OBJECTIVES
from moejax.diffusion.schedules import DDPMSchedule
from moejax.errors import require
from moejax.layers.norms import RMSNorm
from moejax.layers.params import fan_in_init, param
from moejax.models.trunk import AdaLNModulation, Trunk, TrunkConfig, modulate
from moejax.models.vit import patchify

# name -> (d_model, layers, heads), Fei et al. 2024 table 1 (DiT's S, B, L, XL plus G).
SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16),
         "G": (1408, 40, 16)}
EXPERT_MULT, SHARED_MULT = 4, 2  # expert / shared hidden sizes in units of d_model (paper)


def resolve(model: ml_collections.ConfigDict, prefix: str = "config.model"
            ) -> ml_collections.ConfigDict:
  """The model section with ``size`` applied: a copy whose d_model, num_layers, num_heads,
  num_kv_heads, head_dim, d_ff (4D), moe.d_ff (4D) and moe.shared_d_ff (2D, if shared experts
  are on, ``shared_experts``) are the size's. Without a size the section is returned as is."""
  size = model.get("size")
  if size is None:
    return model
  require(size in SIZES, f"{prefix}.size={size!r} is not one of {list(SIZES)}")
  d_model, layers, heads = SIZES[size]
  out = copy.deepcopy(model.to_dict())
  out.update(d_model=d_model, num_layers=layers, num_heads=heads, num_kv_heads=heads,
             head_dim=d_model // heads, d_ff=EXPERT_MULT * d_model, size=None)
  out["moe"].update(d_ff=EXPERT_MULT * d_model,
                    shared_d_ff=SHARED_MULT * d_model if model.shared_experts else 0)
  return ml_collections.ConfigDict(out)


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """The image side of a DiT (the trunk has its own config)."""
  image_size: int
  patch_size: int
  channels: int
  num_classes: int
  learn_sigma: bool
  objective: str = "ddpm"         # ddpm | rectified_flow (diffusion/objectives.py)
  num_timesteps: int = 1000       # the DDPM schedule (diffusion/schedules.py)
  beta_start: float = 1e-4
  beta_end: float = 2e-2
  frequency_dim: int = 256
  class_embed_std: float = 0.02   # DiT's label table init; the tiny preset uses 1.0

  def schedule(self) -> DDPMSchedule:
    return DDPMSchedule.linear(self.num_timesteps, self.beta_start, self.beta_end)

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid ** 2

  @property
  def patch_features(self) -> int:
    return self.patch_size * self.patch_size * self.channels

  @property
  def out_channels(self) -> int:
    return 2 * self.channels if self.learn_sigma else self.channels

  @property
  def null_class(self) -> int:
    return self.num_classes

  @classmethod
  def from_config(cls, model: ml_collections.ConfigDict, prefix: str = "config.model"):
    p = prefix
    diffusion = model.diffusion
    cfg = cls(image_size=model.image_size, patch_size=model.patch_size, channels=model.channels,
              num_classes=model.num_classes, learn_sigma=bool(model.learn_sigma),
              objective=diffusion.objective, num_timesteps=diffusion.num_timesteps,
              beta_start=diffusion.beta_start, beta_end=diffusion.beta_end,
              frequency_dim=model.get("frequency_dim", cls.frequency_dim),
              class_embed_std=model.get("class_embed_std", cls.class_embed_std))
    for name in ("image_size", "patch_size", "channels", "frequency_dim", "class_embed_std"):
      require(getattr(cfg, name) > 0, f"{p}.{name}={getattr(cfg, name)} must be positive")
    require(cfg.image_size % cfg.patch_size == 0,
            f"{p}.patch_size={cfg.patch_size} does not divide {p}.image_size={cfg.image_size}")
    require(cfg.num_classes >= 1, f"{p}.num_classes={cfg.num_classes} must be >= 1")
    require(cfg.frequency_dim % 2 == 0, f"{p}.frequency_dim={cfg.frequency_dim} must be even")
    require(cfg.objective in OBJECTIVES,
            f"{p}.diffusion.objective={cfg.objective!r} is not one of {OBJECTIVES}")
    require(not cfg.learn_sigma or cfg.objective == "ddpm",
            f"{p}.learn_sigma=True needs {p}.diffusion.objective='ddpm'")
    cfg.schedule()  # checks the schedule's fields
    return cfg


def trunk_config(model: ml_collections.ConfigDict, prefix: str = "config.model") -> TrunkConfig:
  """The DiT's trunk: bidirectional attention, positions from the embeddings (no RoPE),
  adaLN-Zero conditioned on a d_model vector. d_model must be a multiple of 4 (the 2D sin-cos
  positions) and routing cannot be task-conditioned."""
  model = resolve(model, prefix)
  trunk = TrunkConfig.from_config(model, prefix, rope_base=None, cond_dim=model.d_model)
  require(trunk.d_model % 4 == 0,
          f"{prefix}.d_model={trunk.d_model} must be a multiple of 4 (2D sin-cos positions)")
  require(trunk.moe.num_tasks == 0, f"{prefix}.moe.num_tasks must be 0 for a DiT")
  return trunk


def sincos_positions(grid: int, dim: int) -> np.ndarray:
  """Fixed 2D sin-cos position embeddings [grid*grid, dim], row-major patches: the first half
  of the features encodes the row, the second the column, each as [sin, cos] of the position
  times dim/4 geometric frequencies 1 / 10000^(i / (dim/4)) (as in MAE and DiT)."""
  freqs_F = 1.0 / 10000.0 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
  rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
  halves = []
  for pos in (rows.reshape(-1), cols.reshape(-1)):
    angles_NF = pos[:, None] * freqs_F[None]
    halves += [np.sin(angles_NF), np.cos(angles_NF)]
  return np.concatenate(halves, axis=1).astype(np.float32)


def timestep_features(t_B, dim: int, max_period: float = 10_000.0):
  """[cos, sin] of t times dim/2 geometric frequencies from 1 to 1/max_period, [B, dim]."""
  freqs_F = jnp.exp(-math.log(max_period) * jnp.arange(dim // 2, dtype=jnp.float32) / (dim // 2))
  angles_BF = t_B.astype(jnp.float32)[:, None] * freqs_F[None]
  return jnp.concatenate([jnp.cos(angles_BF), jnp.sin(angles_BF)], axis=-1)


def unpatchify(x_BNO, grid: int, patch_size: int):
  """[B, N, p*p*C] -> [B, H, W, C], the inverse of ``vit.patchify``."""
  b, _, o = x_BNO.shape
  p = patch_size
  c = o // (p * p)
  x = x_BNO.reshape(b, grid, grid, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, grid * p, grid * p, c)


class Linear(nnx.Module):
  """y = x W + b (the embedders' and the final layer's maps)."""

  def __init__(self, d_in: int, d_out: int, axes, *, init=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.w_IO = param(rngs, init or fan_in_init(), (d_in, d_out), axes, param_dtype)
    self.b_O = param(rngs, nnx.initializers.zeros, (d_out,), axes[1:], param_dtype)

  def __call__(self, x):
    return x @ self.w_IO[...].astype(x.dtype) + self.b_O[...].astype(x.dtype)


class Conditioner(nnx.Module):
  """c [B, D] = MLP(timestep features) + class embedding; label K-1 is the null class."""

  def __init__(self, dit: DiTConfig, d_model: int, *, param_dtype, rngs: nnx.Rngs):
    self.frequency_dim = dit.frequency_dim
    self.t_in = Linear(dit.frequency_dim, d_model, (None, "embed"), param_dtype=param_dtype,
                       rngs=rngs)
    self.t_out = Linear(d_model, d_model, (None, "embed"), param_dtype=param_dtype, rngs=rngs)
    self.class_KD = param(rngs, nnx.initializers.normal(dit.class_embed_std),
                          (dit.num_classes + 1, d_model), (None, "embed"), param_dtype)

  def __call__(self, t_B, labels_B):
    h_BD = jax.nn.silu(self.t_in(timestep_features(t_B, self.frequency_dim)))
    return self.t_out(h_BD) + self.class_KD[...].astype(jnp.float32)[labels_B]


class DiT(nnx.Module):
  """``__call__(z_BHWC, t_B, labels_B) -> (out_BHWC, aux)``: the prediction (float32, C_out
  channels) and the trunk's MoE losses and metrics. ``t_B``: the time the model reads (DDPM
  step, or 1000 t for rectified flow); ``labels_B``: classes, ``num_classes`` = null."""

  def __init__(self, dit: DiTConfig, trunk: TrunkConfig, *, rngs: nnx.Rngs):
    dtypes = trunk.dtypes()
    pdt = dtypes["param_dtype"]
    d = trunk.d_model
    self.dit = dit
    self.d_model = d
    self.dtype = dtypes["dtype"]
    self.patch_embed = Linear(dit.patch_features, d, (None, "embed"), param_dtype=pdt, rngs=rngs)
    self.conditioner = Conditioner(dit, d, param_dtype=pdt, rngs=rngs)
    self.trunk = Trunk(trunk, rngs=rngs)
    self.final_norm = RMSNorm(d, eps=trunk.norm_eps, param_dtype=pdt, rngs=rngs)
    self.final_modulation = AdaLNModulation(d, d, param_dtype=pdt, rngs=rngs, parts=2)
    self.out = Linear(d, dit.patch_size ** 2 * dit.out_channels, ("embed", None),
                      init=nnx.initializers.zeros, param_dtype=pdt, rngs=rngs)

  @classmethod
  def from_config(cls, model: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> "DiT":
    return cls(DiTConfig.from_config(model), trunk_config(model), rngs=rngs)

  def __call__(self, z_BHWC, t_B, labels_B):
    dit = self.dit
    patches_BNP = patchify(z_BHWC.astype(self.dtype), dit.patch_size)
    pos_ND = jnp.asarray(sincos_positions(dit.grid, self.d_model), self.dtype)
    x_BND = sharding.constrain(self.patch_embed(patches_BNP) + pos_ND,
                               ("batch", "seq", "act_embed"))
    cond_BD = self.conditioner(t_B, labels_B)
    positions_BN = jnp.broadcast_to(jnp.arange(x_BND.shape[1]), x_BND.shape[:2])
    x_BND, aux = self.trunk(x_BND, positions_BN, None, cond_BD)
    shift_B1D, scale_B1D = self.final_modulation(cond_BD)
    h_BND = modulate(self.final_norm(x_BND), shift_B1D, scale_B1D)
    out_BNO = self.out(h_BND.astype(self.dtype)).astype(jnp.float32)
    return unpatchify(out_BNO, dit.grid, dit.patch_size), aux

  def update_router_biases(self, expert_load_ME):
    """See ``Trunk.update_router_biases``."""
    self.trunk.update_router_biases(expert_load_ME)
