"""Config validation that runs before anything is compiled or written.

Each failure raises ``ConfigError`` whose message names the offending field
(``config.model.top_k=16 ...``), so a bad sweep entry fails in milliseconds, not after compile.
"""

from __future__ import annotations

import math

import ml_collections

from moejax.models.lm import DTYPES, REMAT_POLICIES
from kernels_pallas import grouped_matmul
from moejax.moe.dispatch import STRATEGIES
from moejax.moe.layer import BIASED_ROUTERS, TOP_K_ROUTERS
from moejax.moe.routers import ROUTERS


class ConfigError(ValueError):
  """An impossible or malformed config; the message names the field."""


def _require(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def validate_model(m: ml_collections.ConfigDict, prefix: str = "config.model"):
  """Checks a model config (LM fields)."""
  for field in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                "d_ff", "expert_d_ff"):
    _require(int(m[field]) > 0, f"{prefix}.{field}={m[field]} must be positive")
  _require(m.d_model % m.num_heads == 0,
           f"{prefix}.num_heads={m.num_heads} does not divide {prefix}.d_model={m.d_model}")
  _require(m.num_heads % m.num_kv_heads == 0,
           f"{prefix}.num_kv_heads={m.num_kv_heads} does not divide "
           f"{prefix}.num_heads={m.num_heads}")
  _require(m.head_dim % 2 == 0, f"{prefix}.head_dim={m.head_dim} must be even (RoPE)")
  _require(m.moe_every >= 0, f"{prefix}.moe_every={m.moe_every} must be >= 0")
  if m.moe_every:
    _require(m.num_layers % m.moe_every == 0,
             f"{prefix}.moe_every={m.moe_every} does not divide "
             f"{prefix}.num_layers={m.num_layers}")
    _require(m.num_experts >= 1, f"{prefix}.num_experts={m.num_experts} must be >= 1")
    _require(1 <= m.top_k <= m.num_experts,
             f"{prefix}.top_k={m.top_k} must be in [1, {prefix}.num_experts={m.num_experts}]")
    _require(m.dispatch in STRATEGIES,
             f"{prefix}.dispatch={m.dispatch!r} is not one of {sorted(STRATEGIES)}")
    _require(m.capacity_factor is None or m.capacity_factor > 0,
             f"{prefix}.capacity_factor={m.capacity_factor} must be > 0 or None (dropless)")
    _validate_router(m, prefix)
  _require(m.shared_expert_d_ff >= 0,
           f"{prefix}.shared_expert_d_ff={m.shared_expert_d_ff} must be >= 0")
  for field in ("dtype", "param_dtype"):
    _require(m[field] in DTYPES, f"{prefix}.{field}={m[field]!r} is not one of {sorted(DTYPES)}")
  _require(m.remat in ("none", *REMAT_POLICIES),
           f"{prefix}.remat={m.remat!r} is not one of {['none', *REMAT_POLICIES]}")


def _validate_router(m: ml_collections.ConfigDict, prefix: str):
  """Router, balancing and schedule fields of an MoE model (moejax/moe/layer.py)."""
  router = m.get("router", "softmax_top_k")
  _require(router in ROUTERS, f"{prefix}.router={router!r} is not one of {list(ROUTERS)}")
  rate = m.get("router_bias_update_rate", 0.0)
  _require(rate >= 0, f"{prefix}.router_bias_update_rate={rate} must be >= 0")
  _require(not rate or router in BIASED_ROUTERS,
           f"{prefix}.router_bias_update_rate={rate} needs {prefix}.router in "
           f"{list(BIASED_ROUTERS)}, not {router!r}")
  noise = m.get("router_noise_std")
  _require(noise is None or noise > 0, f"{prefix}.router_noise_std={noise} must be > 0 or None")
  _require(m.get("sinkhorn_iterations", 8) >= 1,
           f"{prefix}.sinkhorn_iterations={m.get('sinkhorn_iterations')} must be >= 1")
  initial = m.get("initial_top_k")
  if initial is not None:
    _require(m.top_k <= initial <= m.num_experts,
             f"{prefix}.initial_top_k={initial} must be in [{prefix}.top_k={m.top_k}, "
             f"{prefix}.num_experts={m.num_experts}]")
    _require(router in TOP_K_ROUTERS,
             f"{prefix}.initial_top_k needs {prefix}.router in {list(TOP_K_ROUTERS)}, "
             f"not {router!r}")
    _require(m.top_k_decay_steps >= 0,
             f"{prefix}.top_k_decay_steps={m.top_k_decay_steps} must be >= 0")
    _require(m.top_k_decay_steps > 0 or initial == m.top_k,
             f"{prefix}.top_k_decay_steps={m.top_k_decay_steps} must be > 0 for a schedule "
             f"from {prefix}.initial_top_k={initial} to {prefix}.top_k={m.top_k}")
  granularity = m.get("granularity", 1)
  _require(granularity >= 1 and (2 * m.d_model) % granularity == 0,
           f"{prefix}.granularity={granularity} must be >= 1 and divide 2 * {prefix}.d_model")
  _require(m.get("sparsity_chunk_size", 8) >= 1,
           f"{prefix}.sparsity_chunk_size={m.get('sparsity_chunk_size')} must be >= 1")
  if m.dispatch == "pallas":
    _require(grouped_matmul.AVAILABLE,
             f"{prefix}.dispatch='pallas' needs the kernels_pallas grouped matmul, which is not "
             "implemented yet")


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
  validate_model(config.model)
  sizes = mesh_axis_sizes(config.mesh, num_devices)
  batch_axes = dict(config.sharding_rules).get("batch") or ()
  batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
  data_parallel = math.prod(sizes.get(axis, 1) for axis in batch_axes)
  _require(config.data.batch_size % data_parallel == 0,
           f"config.data.batch_size={config.data.batch_size} is not divisible by the "
           f"data-parallel size {data_parallel} (mesh axes {batch_axes} of {sizes})")
  _require(config.data.seq_len > 0, f"config.data.seq_len={config.data.seq_len} must be > 0")
  for field in ("steps", "log_every", "checkpoint_every", "keep_checkpoints", "eval_batches"):
    _require(config.train[field] > 0, f"config.train.{field}={config.train[field]} must be > 0")
  _require(config.optim.warmup_steps < config.train.steps,
           f"config.optim.warmup_steps={config.optim.warmup_steps} must be < "
           f"config.train.steps={config.train.steps}")
  _require(config.optim.lr > 0, f"config.optim.lr={config.optim.lr} must be > 0")
  if config.model.moe_every and config.model.get("initial_top_k") is not None:
    _require(config.model.top_k_decay_steps <= config.train.steps,
             f"config.model.top_k_decay_steps={config.model.top_k_decay_steps} must be <= "
             f"config.train.steps={config.train.steps} (training must end at top_k, the k "
             "evaluation uses)")
  return sizes
