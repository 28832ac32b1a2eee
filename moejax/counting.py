"""Exact parameter and FLOP counts from a model config, without building the model.

Conventions (Nakamura et al. 2025, arXiv 2508.18672, whose checkpoint names these reproduce):
- total parameters: every weight, embeddings and untied output head included;
- active parameters: the weights one token uses; the experts it is not routed to and the router
  weights are excluded;
- training FLOPs per token: 3x the forward pass (forward + backward = 2x forward). The forward
  pass counts 2 FLOPs per multiply-add of every matmul a token runs (active weights, router and
  output head included; the embedding lookup excluded) plus attention scores and values,
  2 * 2 * seq_len * num_heads * head_dim per layer (full, not causally halved, as in Hoffmann
  et al. 2022).

``trunk_breakdown`` counts the shared trunk (models/trunk.py) of any family; the LM functions
add its embedding, final norm and head, the ViT functions (``vit_*``) its patch embedding,
positions, class token, final norm and heads, the DiT functions (``dit_*``) its patch
embedding, timestep and class embedders, final norm and final adaLN layer; both with FLOPs per
image. The CLI is
``python -m experiments.count``.
"""

from __future__ import annotations

import ml_collections

from moejax.models.trunk import TrunkConfig
from moejax.moe.routers import ROUTERS

_FFN_MATRICES = {"swiglu": 3, "gelu": 2}  # d x f matrices of one FFN


def _ffn(kind: str, d_model: int, d_ff: int) -> int:
  return _FFN_MATRICES[kind] * d_model * d_ff


def trunk_breakdown(trunk: TrunkConfig) -> dict[str, int]:
  """Parameter count per component of the trunk (all layers)."""
  d, moe = trunk.d_model, trunk.moe
  moe_layers = trunk.num_moe_layers
  dense_layers = trunk.num_layers - moe_layers
  attention = d * trunk.num_heads * trunk.head_dim * 2 + d * trunk.num_kv_heads * trunk.head_dim * 2
  parts = {
      "norms": 2 * d * trunk.num_layers,
      "attention": attention * trunk.num_layers,
      "dense_ffn": _ffn(trunk.ffn_type, d, trunk.d_ff) * dense_layers,
      "router": ROUTERS[moe.router].num_params(d, moe) * moe_layers,
      "experts": moe.num_experts * _ffn(moe.expert_type, d, moe.d_ff) * moe_layers,
      "shared_experts": _ffn("swiglu", d, moe.shared_d_ff) * moe_layers,
  }
  if trunk.cond_dim:
    parts["modulation"] = (trunk.cond_dim + 1) * 6 * d * trunk.num_layers
  return parts


def active_params(trunk: TrunkConfig, parts: dict[str, int]) -> int:
  """Total minus the router and the experts a token is not routed to."""
  moe = trunk.moe
  inactive_experts = parts["experts"] * (moe.num_experts - moe.top_k) // max(moe.num_experts, 1)
  return sum(parts.values()) - parts["router"] - inactive_experts


def _lm_counts(model: ml_collections.ConfigDict) -> tuple[dict[str, int], int]:
  """(parameters per component, active parameters) of the language model."""
  trunk = TrunkConfig.from_config(model)
  parts = trunk_breakdown(trunk)
  parts["norms"] += model.d_model  # the final norm
  parts = {"embedding": model.vocab_size * model.d_model,
           "output_head": model.d_model * model.vocab_size, **parts}
  return parts, active_params(trunk, parts)


def param_breakdown(model: ml_collections.ConfigDict) -> dict[str, int]:
  """Parameter count per component of the language model."""
  return _lm_counts(model)[0]


def count_params(model: ml_collections.ConfigDict) -> tuple[int, int]:
  """(total, active) parameter counts of the language model."""
  parts, active = _lm_counts(model)
  return sum(parts.values()), active


def train_flops_per_token(model: ml_collections.ConfigDict, seq_len: int) -> int:
  """Training FLOPs per token of the language model (3x forward; see the module docstring)."""
  parts, active = _lm_counts(model)
  matmul_params = active - parts["embedding"] - parts["norms"] + parts["router"]
  attention_scores = 2 * 2 * seq_len * model.num_heads * model.head_dim * model.num_layers
  return 3 * (2 * matmul_params + attention_scores)


def format_count(n: int) -> str:
  """1.0B and above: one decimal + 'B'; below: rounded to the nearest 10M + 'M' (the study's
  rule). Below 10M, which the study never reaches, two decimals of M keep tiny models apart."""
  if n >= 1_000_000_000:
    return f"{n / 1e9:.1f}B"
  if n < 10_000_000:
    return f"{n / 1e6:.2f}M"
  return f"{round(n / 1e7) * 10}M"


def run_name(model: ml_collections.ConfigDict) -> str:
  """The study's checkpoint name, e.g. ``d1024-E64-k8-6.7B-A1.1B``."""
  total, active = count_params(model)
  return (f"d{model.d_model}-E{model.moe.num_experts}-k{model.moe.top_k}-"
          f"{format_count(total)}-A{format_count(active)}")


def summary(config: ml_collections.ConfigDict) -> dict:
  """Counts for a full LM run config (model + data); tokens = steps * batch * seq_len."""
  model = config.model
  total, active = count_params(model)
  tokens = config.train.steps * config.data.batch_size * config.data.seq_len
  flops_per_token = train_flops_per_token(model, config.data.seq_len)
  name = run_name(model)
  if not TrunkConfig.from_config(model).num_moe_layers:
    name = f"d{model.d_model}-dense-{format_count(total)}-A{format_count(active)}"
  return {
      "name": name,
      "total_params": total,
      "active_params": active,
      "train_flops_per_token": flops_per_token,
      "train_tokens": tokens,
      "train_flops": flops_per_token * tokens,
      "params_by_component": param_breakdown(model),
  }


def _vit_counts(model: ml_collections.ConfigDict):
  """(parameters per component, active parameters, the ViT config, the trunk config)."""
  from moejax.models import vit  # pylint: disable=import-outside-toplevel
  trunk, image = vit.trunk_config(model), vit.ViTConfig.from_config(model)
  d = trunk.d_model
  parts = trunk_breakdown(trunk)
  parts["norms"] += d
  parts = {"patch_embedding": (image.patch_features + 1) * d,
           "positions": image.num_tokens * d + (d if image.pool == "cls" else 0),
           "heads": d * sum(image.num_classes), **parts}
  return parts, active_params(trunk, parts), image, trunk


def vit_forward_flops_per_image(model: ml_collections.ConfigDict) -> int:
  """Forward FLOPs of one image: 2 per multiply-add of the patch embedding (per patch), of the
  trunk's active matmuls and routers (per token), of every task head, plus attention scores
  and values over the T tokens."""
  parts, active, image, trunk = _vit_counts(model)
  trunk_matmuls = active - parts["norms"] - parts["patch_embedding"] - parts["positions"] - (
      parts["heads"]) + parts["router"]
  tokens = image.num_tokens
  attention = _attention_flops(tokens, trunk)
  return (2 * (image.num_patches * image.patch_features * trunk.d_model + tokens * trunk_matmuls
               + parts["heads"]) + attention)


def vit_name(model: ml_collections.ConfigDict) -> str:
  """``d{D}-L{layers}-p{patch}-E{E}-k{K}-{placement}-{TOTAL}-A{ACTIVE}`` (``dense`` for a
  model without MoE layers); the placement is ``every{n}``, ``last{n}`` or ``layers``."""
  parts, active, image, trunk = _vit_counts(model)
  total = sum(parts.values())
  head = f"d{trunk.d_model}-L{trunk.num_layers}-p{image.patch_size}"
  sizes = f"{format_count(total)}-A{format_count(active)}"
  if not trunk.num_moe_layers:
    return f"{head}-dense-{sizes}"
  placement = ("layers" if trunk.moe_layers is not None else
               f"last{trunk.moe_last_n}" if trunk.moe_last_n else f"every{trunk.moe_every}")
  return f"{head}-E{trunk.moe.num_experts}-k{trunk.moe.top_k}-{placement}-{sizes}"


def _image_summary(config: ml_collections.ConfigDict, counts, forward_flops, name) -> dict:
  """Counts for an image-model run config (``counts``, ``forward_flops``, ``name``: the
  family's functions of config.model); images = steps * batch."""
  model = config.model
  parts, active, _, _ = counts(model)
  forward = forward_flops(model)
  images = config.train.steps * config.data.batch_size
  return {"name": name(model), "total_params": sum(parts.values()), "active_params": active,
          "forward_flops_per_image": forward, "train_flops_per_image": 3 * forward,
          "train_images": images, "train_flops": 3 * forward * images,
          "params_by_component": parts}


def vit_summary(config: ml_collections.ConfigDict) -> dict:
  """Counts for a ViT run config; images = steps * batch."""
  return _image_summary(config, _vit_counts, vit_forward_flops_per_image, vit_name)



def _dit_counts(model: ml_collections.ConfigDict):
  """(parameters per component, active parameters, the DiT config, the trunk config)."""
  from moejax.models import dit  # pylint: disable=import-outside-toplevel
  trunk, image = dit.trunk_config(model), dit.DiTConfig.from_config(model)
  d = trunk.d_model
  out_features = image.patch_size ** 2 * image.out_channels
  parts = trunk_breakdown(trunk)
  parts["norms"] += d
  parts = {"patch_embedding": (image.patch_features + 1) * d,
           "timestep_embedder": (image.frequency_dim + 1) * d + (d + 1) * d,
           "class_embedding": (image.num_classes + 1) * d,
           "final_layer": (d + 1) * 2 * d + (d + 1) * out_features, **parts}
  return parts, active_params(trunk, parts), image, trunk


def _attention_flops(tokens: int, trunk: TrunkConfig) -> int:
  """Forward FLOPs of attention scores and values of one sequence of ``tokens`` tokens."""
  return 2 * 2 * tokens * tokens * trunk.num_heads * trunk.head_dim * trunk.num_layers


def dit_forward_flops_per_image(model: ml_collections.ConfigDict) -> int:
  """Forward FLOPs of one noisy image: 2 per multiply-add of the patch embedding, the trunk's
  active matmuls and routers and the final linear map (per patch), of the conditioning (the
  timestep MLP and every adaLN map, once per image), plus attention over the patches."""
  parts, _, image, trunk = _dit_counts(model)
  d, moe = trunk.d_model, trunk.moe
  trunk_per_token = (parts["attention"] + parts["dense_ffn"] + parts["shared_experts"]
                     + parts["router"] + parts["experts"] * moe.top_k // moe.num_experts)
  per_token = (image.patch_features * d + trunk_per_token
               + d * image.patch_size ** 2 * image.out_channels)
  per_image = image.frequency_dim * d + d * d + 6 * d * d * trunk.num_layers + 2 * d * d
  tokens = image.num_patches
  return 2 * (tokens * per_token + per_image) + _attention_flops(tokens, trunk)


def dit_name(model: ml_collections.ConfigDict) -> str:
  """The paper's naming where it applies: ``{size}/{patch}-{E}E{K}A`` (e.g. ``G/2-16E2A``),
  else ``d{D}-L{layers}/{patch}-{E}E{K}A``; ``-dense`` for a model without MoE layers, then
  ``-{TOTAL}-A{ACTIVE}``."""
  parts, active, image, trunk = _dit_counts(model)
  head = model.get("size") or f"d{trunk.d_model}-L{trunk.num_layers}"
  experts = (f"{trunk.moe.num_experts}E{trunk.moe.top_k}A" if trunk.num_moe_layers else "dense")
  shared = "-noshared" if trunk.num_moe_layers and not trunk.moe.shared_d_ff else ""
  return (f"{head}/{image.patch_size}-{experts}{shared}-{format_count(sum(parts.values()))}"
          f"-A{format_count(active)}")


def dit_summary(config: ml_collections.ConfigDict) -> dict:
  """Counts for a DiT run config; images = steps * batch."""
  return _image_summary(config, _dit_counts, dit_forward_flops_per_image, dit_name)
