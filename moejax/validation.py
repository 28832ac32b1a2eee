"""Config validation that runs before anything is compiled or written.

Each failure raises ``ConfigError`` whose message names the offending field
(``config.model.moe.top_k=16 ...``), so a bad sweep entry fails in milliseconds, not after
compile. Family-specific checks belong to the run's task (``Task.check``); the MoE section's to
``MoEConfig.check``; the trunk's to ``TrunkConfig.check``.
"""

from __future__ import annotations

import math

import ml_collections

from moejax import sharding
from moejax.errors import ConfigError, require as _require
from moejax.training import task as task_lib

__all__ = ["ConfigError", "mesh_axis_sizes", "validate_config", "validate_run"]


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks what needs no devices: the model (through its task), the aux-loss weights, the
  training schedule."""
  task = task_lib.get(config)
  task.check(config)
  task_lib.aux_loss_weights(config, task)
  _require(config.train.get("microbatches", 1) >= 1,
           f"config.train.microbatches={config.train.get('microbatches')} must be >= 1")
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


def _mesh_size(sizes: dict[str, int], rules, logical: str) -> tuple[tuple[str, ...], int]:
  """(mesh axes, their total size) of the logical axis ``logical`` under ``rules``."""
  axes = dict(rules).get(logical) or ()
  axes = tuple(a for a in sharding.rule_axes(axes) if a in sizes)
  return axes, math.prod(sizes[axis] for axis in axes)


def validate_run(config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
  """Checks a full training config; returns the resolved mesh axis sizes."""
  validate_config(config)
  sizes = mesh_axis_sizes(config.mesh, num_devices)
  rules = config.sharding_rules
  batch_axes, data_parallel = _mesh_size(sizes, rules, "batch")
  microbatches = config.train.get("microbatches", 1)
  _require(config.data.batch_size % (data_parallel * microbatches) == 0,
           f"config.data.batch_size={config.data.batch_size} is not divisible by "
           f"config.train.microbatches={microbatches} times the data-parallel size "
           f"{data_parallel} (mesh axes {batch_axes} of {sizes})")
  moe = config.model.get("moe")
  if moe is not None and config.model.get("moe_every", 1):
    expert_axes, expert_parallel = _mesh_size(sizes, rules, "expert")
    _require(moe.num_experts % expert_parallel == 0,
             f"config.model.moe.num_experts={moe.num_experts} is not divisible by the "
             f"expert-parallel size {expert_parallel} (mesh axes {expert_axes} of {sizes})")
    _require(expert_parallel == 1 or set(expert_axes) <= set(batch_axes),
             f"config.sharding_rules: the batch rule {batch_axes} must include the expert "
             f"mesh axes {expert_axes} (tokens are exchanged among the expert axis' devices)")
    hidden_axes, hidden_parallel = _mesh_size(sizes, rules, "mlp")
    _require(moe.d_ff % hidden_parallel == 0,
             f"config.model.moe.d_ff={moe.d_ff} is not divisible by the tensor-parallel size "
             f"{hidden_parallel} (mesh axes {hidden_axes} of {sizes})")
  return sizes
