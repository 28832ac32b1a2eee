"""DiT-MoE configs (Fei et al. 2024, "Scaling Diffusion Transformers to 16 Billion
Parameters"; DiT, Peebles & Xie 2023). Presets:

  smoke   scikit-learn's 8x8 digits in pixel space, seconds (tests);
  tiny    Fashion-MNIST (Debian's dataset-fashion-mnist) 28x28 in pixel space, patch 7 (16
          tokens; native size, so no resizing), a few minutes on 2 CPU cores;
  paper   the paper's ImageNet 256 models on 32x32x4 VAE latents, 1000 classes, learned
          variance: ``model.size`` (S, B, L, XL, G), ``model.patch_size`` (2, 4, 8),
          ``model.num_experts`` and ``model.top_k`` pick the configuration (default XL/2-8E2A).
          Counted and compiled here; trained on a pod from latents the user brings
          (``--config.data.dataset=npz:/path/latents.npz`` with arrays ``latents`` [N, 32, 32, 4]
          and ``labels`` [N], or ``tfds:NAME``).

  python -m experiments.train --config=configs/dit_moe.py:tiny --workdir=/tmp/dit
  python -m experiments.count --config=configs/dit_moe.py:paper --config.model.size=G \\
      --config.model.num_experts=16

The MoE layer is the paper's: softmax over all E, top-k, weights not renormalised, no capacity
(dropless), SwiGLU experts of hidden 4D and one shared SwiGLU of hidden 2D (``shared_experts``);
expert-level balance loss 0.01 (the code's weight; moejax/moe/losses.load_balance_loss is the
same quantity), no z-loss. ``model.moe_every=0`` is a dense DiT with a SwiGLU of hidden ``d_ff``.
"""

from __future__ import annotations

import ml_collections

from configs import lm_moe
from moejax.moe import config as moe_config

PRESETS = ("smoke", "tiny", "paper")


def model_config(**overrides) -> ml_collections.ConfigDict:
  """A DiT section. With ``size`` set, d_model, layers, heads and the FFN sizes are the size's
  (moejax/models/dit.resolve); without, the explicit fields below apply."""
  cfg = ml_collections.ConfigDict(dict(
      size=ml_collections.FieldReference(None, field_type=str),  # S | B | L | XL | G
      image_size=28, patch_size=7, channels=1, num_classes=10,
      learn_sigma=False,          # True: 2C outputs, DDPM hybrid loss and learned variance
      shared_experts=True,        # with ``size``: a shared SwiGLU of hidden 2D
      frequency_dim=256,
      class_embed_std=0.02,       # the label table's init (DiT's); tiny: 1.0, see get_config
      d_model=64, num_layers=4, head_dim=16,
      moe_every=1,                # DiT-MoE: every block; 0: a dense DiT
      moe_last_n=ml_collections.FieldReference(None, field_type=int),
      moe_layers=ml_collections.FieldReference(None, field_type=tuple),
      ffn_type="swiglu", norm_eps=1e-6, dtype="float32", param_dtype="float32", remat="none",
  ))
  cfg.num_heads = cfg.get_ref("d_model") // cfg.get_ref("head_dim")
  cfg.num_kv_heads = cfg.get_ref("d_model") // cfg.get_ref("head_dim")
  cfg.d_ff = 4 * cfg.get_ref("d_model")
  # What the network predicts, and at which times: part of the model (the loss and the
  # samplers read it from the built DiT).
  cfg.diffusion = ml_collections.ConfigDict(dict(
      objective="ddpm",           # ddpm (epsilon) | rectified_flow (velocity eps - x)
      num_timesteps=1000, beta_start=1e-4, beta_end=2e-2))
  cfg.num_experts = 8
  cfg.top_k = 2
  cfg.moe = moe_config.config_section(
      num_experts=cfg.get_ref("num_experts"), top_k=cfg.get_ref("top_k"),
      expert_type="swiglu", router="softmax_top_k", renormalize=False)
  cfg.moe.d_ff = 4 * cfg.get_ref("d_model")
  cfg.moe.shared_d_ff = 2 * cfg.get_ref("d_model")
  cfg.update(overrides)
  return cfg


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} for configs/dit_moe.py; choose from {PRESETS}")
  cfg = ml_collections.ConfigDict()
  cfg.preset = preset
  cfg.task = "dit"
  cfg.seed = 0
  cfg.model = model_config()
  cfg.data = ml_collections.ConfigDict(dict(
      dataset="fashion_mnist", batch_size=64, seed=0,
      class_dropout=0.1,          # labels replaced by the null class (classifier-free guidance)
      latent_scale=1.0))          # npz latents are multiplied by this (SD VAE: 0.18215)
  # The paper: AdamW at a constant 1e-4, no weight decay, EMA 0.9999 of the weights (the
  # evaluation and the samplers use the EMA weights).
  cfg.optim = ml_collections.ConfigDict(dict(
      lr=1e-4, min_lr=1e-4, warmup_steps=0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      grad_clip=1.0, ema_decay=0.9999))
  # The expert-level balance loss at the MoE layer's default weight, 0.01 (the DiT-MoE code's;
  # None keeps it a default, so the dense DiT, which returns no such loss, shares this config);
  # no z-loss.
  cfg.aux_loss_weights = lm_moe.aux_loss_weights()
  cfg.aux_loss_weights.update(router_z_loss=0.0)
  cfg.sample = ml_collections.ConfigDict(dict(
      sampler="ddim",             # ddpm | ddim | euler (rectified flow)
      steps=50, guidance=1.5, seed=0))
  # After training (eval.json): ``num_samples`` class-balanced samples scored by the in-repo
  # feature classifier (moejax/diffusion/metric.py); 0 skips it.
  cfg.eval = ml_collections.ConfigDict(dict(num_samples=0, batch_size=250))
  cfg.train = ml_collections.ConfigDict(dict(
      steps=2000, log_every=50, checkpoint_every=500, keep_checkpoints=2, eval_batches=4,
      progress_bar=True))
  cfg.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, expert=1, tensor=1))
  cfg.sharding_rules = lm_moe.sharding_rules()

  if preset == "smoke":
    cfg.model.update(image_size=8, patch_size=2, d_model=32, num_layers=2)
    cfg.model.update(num_experts=4)
    cfg.data.update(dataset="digits", batch_size=32)
    cfg.optim.update(lr=1e-3, min_lr=1e-3, ema_decay=0.9)
    cfg.sample.update(steps=10)
    cfg.train.update(steps=20, log_every=5, checkpoint_every=10, eval_batches=2)
  elif preset == "tiny":
    # Calibrated on Fashion-MNIST, one E=8 run of 600 steps (docs/dit_moe.md, "Calibrating the
    # tiny preset"): with DDPM, DiT's 0.02 label-table init and lr 1e-3 the samples ignored the
    # class (conditional accuracy 0.10 = chance, FD-CNN 156); rectified flow, a unit-scale label
    # table (as large as the timestep embedding) and lr 4e-3 give 0.93 and FD-CNN 27.
    # EMA 0.99: the average starts at the (zero-output) initial weights, whose share after n
    # steps is decay^n; at 0.995 and 300 steps it was 22% and the EMA samples were noise; at
    # 0.99 and 600 steps it is 0.2%.
    cfg.model.class_embed_std = 1.0
    cfg.model.diffusion.objective = "rectified_flow"
    cfg.optim.update(lr=4e-3, min_lr=1e-4, warmup_steps=50, ema_decay=0.99)
    cfg.sample.update(sampler="euler", steps=25, guidance=3.0)
    cfg.eval.num_samples = 500
  else:
    cfg.model.update(size="XL", image_size=32, patch_size=2, channels=4, num_classes=1000,
                     learn_sigma=True, dtype="bfloat16", remat="full")
    cfg.data.update(dataset="npz:latents.npz", batch_size=256, latent_scale=0.18215)
    cfg.train.update(steps=700_000, log_every=100, checkpoint_every=10_000)
  return cfg
