"""Sharded dispatch, expert parallelism and gradient accumulation (docs/parallelism.md).

The multi-device tests run probes in a subprocess with 8 fake CPU devices and compare them with
one device in this process.
"""

import json

import pytest

from configs import lm_moe
from tests.conftest import run_module

STEPS = 20
EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
# Capacity is per group of tokens; 32 tokens = one row of the smoke batch, the finest data
# shard of the meshes below, so every mesh computes the one-device function.
CAPACITY = {"capacity_factor": 1.0, "group_size": 32}


def equivalence_config(mesh: dict, moe: dict):
  """The LM smoke preset with 8 experts (one per device on an (expert 8) mesh) on ``mesh``."""
  config = lm_moe.get_config("smoke")
  config.mesh.update({"data": 1, "fsdp": 1, "expert": 1, "tensor": 1, **mesh})
  config.model.moe.update(num_experts=8, **moe)
  config.train.update(steps=STEPS, log_every=1, checkpoint_every=STEPS, progress_bar=False)
  return config
