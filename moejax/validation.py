"""Config validation that runs before anything is compiled or written.

Each failure raises ``ConfigError`` whose message names the offending field
(``config.model.moe.top_k=16 ...``), so a bad sweep entry fails in milliseconds, not after
compile. Family-specific checks belong to the run's task (``Task.check``); the MoE section's to
``MoEConfig.check``; the trunk's to ``TrunkConfig.check``.
"""

from __future__ import annotations

import math

import ml_collections

from moejax.errors import ConfigError, require as _require
from moejax.training import task as task_lib

__all__ = ["ConfigError", "mesh_axis_sizes", "validate_config", "validate_run"]


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks what needs no devices: the model (through its task), the aux-loss weights, the
  training schedule."""
  task = task_lib.get(config)
  task.check(config)
  task_lib.aux_loss_weights(config, task)
  for field in ("steps", "log_every", "checkpoint_every", "keep_checkpoints", "eval_batches"):
    _require(config.train[field] > 0, f"config.train.{field}={config.train[field]} must be > 0")
  _require(config.optim.warmup_steps < config.train.steps,
           f"config.optim.warmup_steps={config.optim.warmup_steps} must be < "
           f"config.train.steps={config.train.steps}")
  _require(config.optim.lr > 0, f"config.optim.lr={config.optim.lr} must be > 0")
  moe = config.model.get("moe")
  if moe is not None and moe.get("initial_top_k") is not None:
    _require(moe.top_k_decay_steps <= config.train.steps,
             f"config.model.moe.top_k_decay_steps={moe.top_k_decay_steps} must be <= "
             f"config.train.steps={config.train.steps} (training must end at top_k, the k "
             "evaluation uses)")


def mesh_axis_sizes(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
  """Resolves a -1 mesh axis and checks that the mesh uses exactly ``num_devices`` devices."""
  sizes = {name: int(size) for name, size in mesh_cfg.items()}
  _require(all(s == -1 or s >= 1 for s in sizes.values()),
           f"config.mesh={sizes}: axis sizes must be positive or -1")
  _require(list(sizes.values()).count(-1) <= 1, f"config.mesh={sizes}: at most one axis is -1")
  known = math.prod(s for s in sizes.values() if s != -1)
  for name, size in sizes.items():
    if size == -1:
      _require(num_devices % known == 0,
               f"config.mesh={sizes}: fixed axes ({known} devices) do not divide the "
               f"{num_devices} available devices")
      sizes[name] = num_devices // known
  _require(math.prod(sizes.values()) == num_devices,
           f"config.mesh={sizes} has {math.prod(sizes.values())} devices, but "
           f"{num_devices} are available")
  return sizes


def validate_run(config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
  """Checks a full training config; returns the resolved mesh axis sizes."""
  validate_config(config)
  sizes = mesh_axis_sizes(config.mesh, num_devices)
  batch_axes = dict(config.sharding_rules).get("batch") or ()
  batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
  data_parallel = math.prod(sizes.get(axis, 1) for axis in batch_axes)
  _require(config.data.batch_size % data_parallel == 0,
           f"config.data.batch_size={config.data.batch_size} is not divisible by the "
           f"data-parallel size {data_parallel} (mesh axes {batch_axes} of {sizes})")
  return sizes
