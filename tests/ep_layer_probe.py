"""Run by test_expert_parallel.py in a subprocess with 8 fake CPU devices: the MoE layer alone
on several meshes against one device.

For each mesh (argv: JSON list of {"mesh": {...}, "moe": {...}}) it builds the same layer, runs
the value and the gradients (of the input and every parameter) of a fixed loss under the mesh
with the LM's sharding rules, and prints one JSON line per case with the largest absolute
differences to the layer without a mesh.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import lm_moe
from moejax import sharding
from moejax.moe.config import MoEConfig
from moejax.moe.layer import MoELayer

B, S, D = 8, 16, 32


def value_and_grads(layer_state, graphdef, x_BSD, c_BSD):
  def loss(state, x):
    y, aux = nnx.merge(graphdef, state)(x)
    terms = y * c_BSD
    # The root-sum-square of the summed terms: the natural scale of a sum of random-sign terms,
    # against which float32 reordering error is measured (the value itself may cancel to ~0).
    rss = jax.lax.stop_gradient(jnp.sqrt(jnp.sum(terms**2)))
    return jnp.sum(terms) + aux["load_balance_loss"], (aux["dropped_fraction"], rss)
  return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(layer_state, x_BSD)


def run_case(case):
  cfg = MoEConfig(**{"num_experts": 8, "top_k": 2, "d_ff": 64, **case["moe"]})
  layer = MoELayer(D, cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(layer)
  keys = jax.random.split(jax.random.key(1), 2)
  x = jax.random.normal(keys[0], (B, S, D))
  c = jax.random.normal(keys[1], (B, S, D))
  step = jax.jit(value_and_grads, static_argnums=1)
  mesh = sharding.make_mesh(case["mesh"])
  if case.get("lower_only"):  # e.g. the ragged exchange, which XLA:CPU cannot run
    with sharding.use_rules(lm_moe.sharding_rules()), jax.set_mesh(mesh):
      state_m = jax.device_put(state, sharding.state_shardings(state, mesh))
      hlo = step.lower(state_m, graphdef, x, c).as_text()
    return {**case, "ragged_all_to_all": hlo.count("ragged_all_to_all"),
            "all_to_all": hlo.count("all_to_all")}
  (v1, (d1, rss)), (gs1, gx1) = step(state, graphdef, x, c)
  with sharding.use_rules(lm_moe.sharding_rules()), jax.set_mesh(mesh):
    shardings = sharding.state_shardings(state, mesh)
    state_m = jax.device_put(state, shardings)
    rows = NamedSharding(mesh, sharding.logical_to_spec(("batch", None, None),
                                                        mesh_axes=mesh.axis_names))
    x_m, c_m = jax.device_put(x, rows), jax.device_put(c, rows)
    (vm, (dm, _)), (gsm, gxm) = step(state_m, graphdef, x_m, c_m)
    hlo = step.lower(state_m, graphdef, x_m, c_m).as_text()
  diff = lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
  grads = jax.tree.leaves(jax.tree.map(diff, gs1, gsm))
  scale = max(float(np.max(np.abs(np.asarray(g)))) for g in jax.tree.leaves(gs1))
  return {**case, "loss": diff(v1, vm), "loss_value": float(v1), "loss_scale": float(rss), "num_terms": B * S * D, "dropped": [float(d1), float(dm)],
          "dx": diff(gx1, gxm), "dparams": max(grads), "grad_scale": scale,
          "all_to_all": hlo.count("all_to_all"), "shard_map": "shard_map" in hlo
          or "sdy.manual_computation" in hlo}


def main(cases):
  for case in json.loads(cases):
    print(json.dumps(run_case(case)), flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
