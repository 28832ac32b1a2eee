"""ViT-MoE configs (V-MoE, Riquelme et al. 2021). Presets:

  smoke     scikit-learn's 8x8 digits, seconds (tests);
  tiny      Fashion-MNIST 28x28 (Debian's dataset-fashion-mnist), a few minutes on 2 CPU cores;
  tiny_tasks  tiny with two tasks (10 classes, 3 coarse groups) and per-task routers;
  s32, b16, l16  the V-MoE paper family at ImageNet size (224x224x3, 1000 classes): S/32 with
            MoE in the last 2 odd blocks, E=8 (the paper's 76.8% ImageNet model), B/16 and L/16
            with MoE in every other block, E=32; k=2. Counted and compiled here; trained on a
            pod from a real data set (``--config.data.dataset=tfds:imagenet2012``).

  python -m experiments.train --config=configs/vit_moe.py:tiny --workdir=/tmp/vit \\
      --config.model.moe.num_experts=16 --config.model.moe_last_n=1

Placement: ``moe_every=2`` puts MoE in the odd blocks (1, 3, ...); ``moe_last_n=n`` keeps the
last n of those; ``moe_every=0`` is a dense ViT. ``data.dataset`` is any form
``moejax.data.images.load_images`` accepts: "fashion_mnist", "digits", "folder:/path",
"tfds:NAME".
"""

from __future__ import annotations

import ml_collections

from configs import lm_moe
from moejax.moe import config as moe_config

PRESETS = ("smoke", "tiny", "tiny_tasks", "s32", "b16", "l16")
# V-MoE family: (d_model, layers, heads, MLP hidden, patch, MoE placement (every, last_n), E).
PAPER = {"s32": (512, 8, 8, 2048, 32, (2, 2), 8),
         "b16": (768, 12, 12, 3072, 16, (2, None), 32),
         "l16": (1024, 24, 16, 4096, 16, (2, None), 32)}


def model_config(**overrides) -> ml_collections.ConfigDict:
  """A ViT section; heads follow d_model / head_dim, the MLP hidden size 4 * d_model."""
  cfg = ml_collections.ConfigDict(dict(
      image_size=28, patch_size=7, channels=1,
      num_classes=(10,),          # one entry per task (config.data.tasks)
      pool="cls",                 # cls | gap
      # V-MoE routes each group of images on its own (capacity and losses per group): the
      # tokens of this many images form a group (ours: 8; None: the whole batch).
      group_images=ml_collections.FieldReference(8, field_type=int),
      d_model=64, num_layers=4, head_dim=16,
      moe_every=2,                # V-MoE "every 2": the odd blocks
      moe_last_n=ml_collections.FieldReference(None, field_type=int),
      moe_layers=ml_collections.FieldReference(None, field_type=tuple),
      ffn_type="gelu", norm_eps=1e-6, dtype="float32", param_dtype="float32", remat="none",
  ))
  cfg.num_heads = cfg.get_ref("d_model") // cfg.get_ref("head_dim")
  cfg.num_kv_heads = cfg.get_ref("d_model") // cfg.get_ref("head_dim")
  cfg.d_ff = 4 * cfg.get_ref("d_model")
  # The V-MoE layer: noisy top-k with V-MoE's importance and load losses, GELU experts of the
  # dense MLP's size, combine weights not renormalised, capacity 1.05 per group (rounded up to
  # a multiple of 4) filled by Batch Prioritized Routing.
  cfg.moe = moe_config.config_section(
      num_experts=8, top_k=2, expert_type="gelu", router="noisy_top_k", renormalize=False,
      capacity_factor=1.05, batch_prioritized=True, capacity_multiple=4)
  cfg.moe.d_ff = 4 * cfg.get_ref("d_model")
  cfg.update(overrides)
  return cfg


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} for configs/vit_moe.py; choose from {PRESETS}")
  cfg = ml_collections.ConfigDict()
  cfg.preset = preset
  cfg.task = "vit"
  cfg.seed = 0
  cfg.model = model_config()
  cfg.data = ml_collections.ConfigDict(dict(
      dataset="fashion_mnist", tasks=("class",), batch_size=128, seed=0, normalize=True))
  cfg.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, min_lr=1e-5, warmup_steps=50, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4,
      grad_clip=1.0))
  # V-MoE trains with its importance and load losses only (0.005 each, the router's
  # defaults); the Switch balance loss and the z-loss are logged with weight 0.
  cfg.aux_loss_weights = lm_moe.aux_loss_weights()
  cfg.aux_loss_weights.update(load_balance_loss=0.0, router_z_loss=0.0)
  cfg.train = ml_collections.ConfigDict(dict(
      steps=600, log_every=20, checkpoint_every=200, keep_checkpoints=2, eval_batches=4,
      progress_bar=True,
      microbatches=1))  # gradient accumulation (moejax/training/step.py)
  cfg.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, expert=1, tensor=1))
  cfg.sharding_rules = lm_moe.sharding_rules()

  if preset == "smoke":
    cfg.model.update(image_size=8, patch_size=4, d_model=32, num_layers=2)
    cfg.model.moe.update(num_experts=4, top_k=2)
    cfg.data.update(dataset="digits", batch_size=16)
    cfg.optim.update(warmup_steps=5)
    cfg.train.update(steps=20, log_every=5, checkpoint_every=10, eval_batches=2)
  elif preset in ("tiny", "tiny_tasks"):
    if preset == "tiny_tasks":
      cfg.data.tasks = ("class", "fashion_coarse3")
      cfg.model.num_classes = (10, 3)
      cfg.model.moe.update(num_tasks=2, task_routing="per_task")
  else:
    d_model, layers, heads, mlp, patch, (every, last_n), experts = PAPER[preset]
    cfg.model.update(image_size=224, patch_size=patch, channels=3, num_classes=(1000,),
                     d_model=d_model, num_layers=layers, head_dim=d_model // heads,
                     moe_every=every, moe_last_n=last_n, d_ff=mlp, dtype="bfloat16",
                     remat="full")
    cfg.model.moe.update(num_experts=experts, d_ff=mlp)
    cfg.data.update(dataset="tfds:imagenet2012", batch_size=4096)
    cfg.optim.update(lr=1e-3, warmup_steps=10_000, weight_decay=0.1)
    cfg.train.update(steps=300_000, log_every=100, checkpoint_every=5000)
  return cfg
