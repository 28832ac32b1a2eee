"""Exact parameter and FLOP counts from a model config, without building the model.

Conventions (Nakamura et al. 2025 checkpoint names, RESEARCH.md section 1):
- total parameters: every weight, embeddings and untied output head included;
- active parameters: the weights one token uses; the experts it is not routed to and the router
  weights are excluded;
- training FLOPs per token: 3x the forward pass (forward + backward = 2x forward). The forward
  pass counts 2 FLOPs per multiply-add of every matmul a token runs (active weights, router and
  output head included; the embedding lookup excluded) plus attention scores and values,
  2 * 2 * seq_len * num_heads * head_dim per layer (full, not causally halved, as in Hoffmann
  et al. 2022).

  python -m moejax.counting --config=configs/lm_moe.py:paper --config.model.d_model=1024 \
      --config.model.num_experts=64 --config.model.top_k=8
"""

from __future__ import annotations

import json

import ml_collections


def _swiglu(d_model: int, d_ff: int) -> int:
  return 3 * d_model * d_ff


def param_breakdown(model: ml_collections.ConfigDict) -> dict[str, int]:
  """Parameter count per component (whole model)."""
  d = model.d_model
  groups = model.num_layers // max(model.moe_every, 1)
  moe_layers = groups if model.moe_every else 0
  dense_layers = model.num_layers - moe_layers
  attention = (d * model.num_heads * model.head_dim * 2
               + d * model.num_kv_heads * model.head_dim * 2)
  return {
      "embedding": model.vocab_size * d,
      "output_head": d * model.vocab_size,
      "norms": 2 * d * model.num_layers + d,
      "attention": attention * model.num_layers,
      "dense_ffn": _swiglu(d, model.d_ff) * dense_layers,
      "router": (d + (model.get("router") == "relu")) * model.num_experts * moe_layers,
      "experts": model.num_experts * _swiglu(d, model.expert_d_ff) * moe_layers,
      "shared_experts": _swiglu(d, model.shared_expert_d_ff) * moe_layers,
  }


def count_params(model: ml_collections.ConfigDict) -> tuple[int, int]:
  """(total, active) parameter counts."""
  parts = param_breakdown(model)
  total = sum(parts.values())
  inactive_experts = (parts["experts"] * (model.num_experts - model.top_k)
                      // max(model.num_experts, 1))
  return total, total - parts["router"] - inactive_experts


def train_flops_per_token(model: ml_collections.ConfigDict, seq_len: int) -> int:
  """Training FLOPs per token (3x forward; see the module docstring)."""
  parts = param_breakdown(model)
  _, active = count_params(model)
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
  return (f"d{model.d_model}-E{model.num_experts}-k{model.top_k}-"
          f"{format_count(total)}-A{format_count(active)}")


def summary(config: ml_collections.ConfigDict) -> dict:
  """Counts for a full run config (model + data); tokens = steps * batch * seq_len."""
  model = config.model
  total, active = count_params(model)
  tokens = config.train.steps * config.data.batch_size * config.data.seq_len
  flops_per_token = train_flops_per_token(model, config.data.seq_len)
  return {
      "name": run_name(model),
      "total_params": total,
      "active_params": active,
      "train_flops_per_token": flops_per_token,
      "train_tokens": tokens,
      "train_flops": flops_per_token * tokens,
      "params_by_component": param_breakdown(model),
  }


def main(argv):
  del argv
  from experiments.flags import CONFIG  # pylint: disable=import-outside-toplevel
  from moejax import validation  # pylint: disable=import-outside-toplevel
  config = CONFIG.value
  validation.validate_model(config.model)
  print(json.dumps(summary(config)))


if __name__ == "__main__":
  from absl import app  # pylint: disable=import-outside-toplevel
  from experiments import flags as _  # noqa: F401  defines --config
  app.run(main)
