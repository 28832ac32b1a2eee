"""Sharded training on 8 fake CPU devices matches one device; logical axis rules resolve."""

import json
import os

import pytest

from moejax import sharding
from moejax.training.logging import read_jsonl
from moejax.training.trainer import train
from tests.conftest import run_module

STEPS = 12


def multi_device_config(config, data: int, fsdp: int):
  config.mesh.update(data=data, fsdp=fsdp)
  config.train.update(steps=STEPS, log_every=1, checkpoint_every=STEPS, progress_bar=False)
  return config


def test_logical_rules_map_to_mesh_axes():
  rules = [("batch", ["data", "fsdp"]), ("embed", "fsdp"), ("mlp", None)]
  with sharding.use_rules(rules):
    assert tuple(sharding.logical_to_spec(("batch", "seq", "embed"))) == (("data", "fsdp"), None,
                                                                          None)
    assert tuple(sharding.logical_to_spec(("embed", "mlp"))) == ("fsdp", None)
    assert tuple(sharding.logical_to_spec(("unknown",))) == (None,)


@pytest.mark.slow
def test_eight_devices_match_one_device(smoke_config, tmp_path):
  one = train(multi_device_config(smoke_config, data=-1, fsdp=1), str(tmp_path / "one"))
  proc = run_module("tests.multidevice_probe", str(tmp_path / "eight"),
                    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  probe = json.loads(proc.stdout.strip().splitlines()[-1])
  assert probe["devices"] == 8
  assert probe["specs"]["embedding"] == [None, "fsdp"]
  assert probe["specs"]["experts"][:3] == [None, None, "fsdp"]
  losses_one = [r["loss"] for r in read_jsonl(os.path.join(tmp_path / "one", "metrics.jsonl"))]
  losses_eight = [r["loss"] for r in read_jsonl(tmp_path / "eight" / "metrics.jsonl")]
  assert len(losses_one) == len(losses_eight) == STEPS
  for a, b in zip(losses_one, losses_eight):
    assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (losses_one, losses_eight)
  assert abs(one["eval_loss"] - json.loads((tmp_path / "eight" / "eval.json").read_text())[
      "eval_loss"]) <= 1e-5 * one["eval_loss"]
