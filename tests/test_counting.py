"""Exact counting without building the model, checked against built parameter trees."""

import json

import pytest
from flax import nnx

from configs import lm_moe
from moejax import counting
from moejax.models.lm import MoELM
from tests.conftest import built_counts, run_module


def built_lm_counts(model_cfg):
  return built_counts(nnx.eval_shape(lambda: MoELM.from_config(model_cfg, rngs=nnx.Rngs(0))),
                      model_cfg.moe)


@pytest.mark.parametrize("overrides", [
    {}, {"moe_every": 2, "num_layers": 4}, {"moe_every": 0}, {"moe": {"shared_d_ff": 48}},
    {"num_kv_heads": 1}, {"moe": {"num_experts": 8, "top_k": 1}}, {"moe": {"d_ff": 24}},
    {"num_layers": 6, "moe_every": 2, "moe_last_n": 2}, {"num_layers": 5, "moe_layers": (0, 3)},
    {"moe": {"expert_type": "gelu", "router": "relu"}, "ffn_type": "gelu", "moe_every": 2},
])
def test_counts_equal_built_parameter_tree(overrides):
  model_cfg = lm_moe.get_config("smoke").model
  model_cfg.update(overrides)
  total, active = counting.count_params(model_cfg)
  if not (model_cfg.moe_every or model_cfg.moe_layers):
    active = total
  assert (total, active) == built_lm_counts(model_cfg)


def test_paper_preset_counts_equal_built_tree_abstractly():
  model_cfg = lm_moe.get_config("paper").model
  assert counting.count_params(model_cfg) == built_lm_counts(model_cfg)


@pytest.mark.parametrize("d_model,experts,top_k,name", [
    (512, 8, 2, "d512-E8-k2-320M-A170M"),
    (1024, 64, 8, "d1024-E64-k8-6.7B-A1.1B"),
    (2048, 128, 16, "d2048-E128-k16-52.2B-A7.1B"),
])
def test_paper_checkpoint_names(d_model, experts, top_k, name):
  model_cfg = lm_moe.get_config("paper").model
  model_cfg.update(d_model=d_model, moe=dict(num_experts=experts, top_k=top_k))
  assert counting.run_name(model_cfg) == name


def test_train_flops_follow_6n_plus_attention():
  config = lm_moe.get_config("paper")
  _, active = counting.count_params(config.model)
  flops = counting.train_flops_per_token(config.model, config.data.seq_len)
  parts = counting.param_breakdown(config.model)
  matmul = active - parts["embedding"] - parts["norms"] + parts["router"]
  assert flops == 6 * matmul + 12 * 4096 * 512 * 16
  assert config.train.steps * config.data.batch_size * config.data.seq_len == 125_002_842_112


def test_counting_cli_prints_one_json_line():
  proc = run_module("experiments.count", "--config=configs/lm_moe.py:paper",
                    "--config.model.d_model=1024", "--config.model.moe.num_experts=64",
                    "--config.model.moe.top_k=8")
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  assert len(lines) == 1
  result = json.loads(lines[0])
  assert result["name"] == "d1024-E64-k8-6.7B-A1.1B"
  assert {"total_params", "active_params", "train_flops_per_token"} <= set(result)
