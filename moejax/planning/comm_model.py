"""Analytic bytes each device puts into collectives per train step, in the terms of
``hlo_comm.collective_bytes`` (operand sizes), from the config and mesh alone.

Per parameter (its logical axes resolved by the config's rules on the mesh; ``s`` = its shard
count, ``f`` = the ``fsdp`` size when the parameter is sharded over ``fsdp``, else 1):
  all-gather      FSDP gathers each parameter shard (size/s, float32) once in the forward pass
                  and once more in the backward pass (the rematerialised forward with remat, the
                  transposed matmuls without): 2 x 4 x size / s
  reduce-scatter  its gradient, sharded by the other axes only: 4 x size / (s / f)
  all-reduce      the gradient shard summed over the batch's mesh axes (the ``batch`` rule:
                  data, fsdp, expert) that do not shard the parameter: 4 x size / s when their
                  product is > 1. So data parallelism all-reduces every gradient shard over
                  ``data``, and under expert parallelism every parameter but the experts' is
                  also summed over ``expert``, whose devices saw other tokens
Expert parallelism (a mesh axis ``expert`` > 1 that the rules map experts to) exchanges each MoE
layer's dispatched rows twice forward (dispatch, combine), twice backward, and twice more in the
rematerialised forward: 6 x (local tokens x k x d_model) x the compute dtype's bytes per MoE
layer (4 x without remat); the capacity factor scales the buffers when capacity is finite.
This is a model of what a good SPMD partitioning does; the benchmark shows how far XLA's
choices (bfloat16 gathers, fused or hoisted collectives) are from it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from moejax import sharding
from moejax.models.trunk import moe_placement
from moejax.training import task as task_lib
from moejax.training.optimizer import make_optimizer
from moejax.training.state import make_init_fn


def _params(config: ml_collections.ConfigDict):
  tx, _ = make_optimizer(config.optim, config.train.steps)
  with sharding.use_rules(config.sharding_rules):
    state = jax.eval_shape(make_init_fn(config, tx))
  return [v for v in jax.tree.leaves(state.params, is_leaf=lambda x: isinstance(x, nnx.Variable))
          if isinstance(v, nnx.Variable)]


def _moe_layers(model: ml_collections.ConfigDict) -> int:
  return sum(moe_placement(model.num_layers, int(model.get("moe_every", 1) or 0),
                           model.get("moe_last_n"), model.get("moe_layers")))


def analytic_bytes(config: ml_collections.ConfigDict, mesh: dict[str, int]) -> dict[str, float]:
  """Per-device operand bytes per step by collective kind (``hlo_comm.KINDS``) and total."""
  out = {"all-to-all": 0.0, "all-gather": 0.0, "reduce-scatter": 0.0, "all-reduce": 0.0,
         "collective-permute": 0.0}
  axes = tuple(mesh)
  fsdp = mesh.get("fsdp", 1)
  (batch_spec,) = sharding.logical_to_spec(("batch",), config.sharding_rules, mesh_axes=axes)
  batch_axes = sharding.rule_axes(batch_spec)
  for var in _params(config):
    logical = var.get_metadata().get("out_sharding") or ()
    spec = sharding.logical_to_spec(logical, config.sharding_rules, mesh_axes=axes)
    used = [a for entry in spec for a in sharding.rule_axes(entry)]
    shards = math.prod(mesh[a] for a in used)
    size = math.prod(var.value.shape) * 4
    if "fsdp" in used and fsdp > 1:
      out["all-gather"] += 2 * size / shards
      out["reduce-scatter"] += size / (shards / fsdp)
    if math.prod(mesh[a] for a in batch_axes if a not in used) > 1:
      out["all-reduce"] += size / shards  # the gradient shard, over the other batch axes
  expert = mesh.get("expert", 1)
  rules = dict((k, v) for k, v in config.sharding_rules)
  if expert > 1 and "expert" in str(rules.get("expert")):
    model = config.model
    tokens = task_lib.get(config).tokens_per_batch(config)
    local = tokens / math.prod(mesh[a] for a in batch_axes)
    passes = 6 if model.get("remat", "none") != "none" else 4
    capacity = float(model.moe.get("capacity_factor", 0) or 1.0)
    itemsize = jnp.dtype(model.get("dtype", "float32")).itemsize
    out["all-to-all"] = (passes * _moe_layers(model) * local * model.moe.top_k * model.d_model
                         * itemsize * max(capacity, 1.0))
  out["total"] = sum(out.values())
  return out
