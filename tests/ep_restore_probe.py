"""Run by test_expert_parallel.py in a subprocess with 8 fake CPU devices: checkpoints move
between meshes.

A trains 20 steps on (data 8), checkpointing every 5. B starts from A's step-10 checkpoint on
(expert 4, data 2), C from B's step-15 checkpoint on (data 8) again. Prints one JSON line: each
run's losses by step, and whether the step-10 state restored on (expert 4, data 2) equals,
bitwise, the state restored on (data 8), with the experts' sharding on each.
"""

import json
import os
import shutil
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from moejax import sharding
from moejax.training import checkpointing
from moejax.training.logging import read_jsonl
from moejax.training.optimizer import make_optimizer
from moejax.training.state import abstract_like, make_init_fn
from moejax.training.trainer import train
from tests.test_expert_parallel import equivalence_config

DATA8, EXPERT4 = {"data": 8}, {"expert": 4, "data": 2}


def config_on(mesh):
  config = equivalence_config(mesh, {})
  config.train.update(checkpoint_every=5, keep_checkpoints=5)
  return config


def start_from(source: str, step: int, workdir: str):
  os.makedirs(os.path.join(workdir, "checkpoints"))
  shutil.copy(os.path.join(source, "config.json"), workdir)
  shutil.copytree(os.path.join(source, "checkpoints", str(step)),
                  os.path.join(workdir, "checkpoints", str(step)))


def restored_state(workdir: str, mesh_sizes: dict, step: int):
  config = config_on(mesh_sizes)
  mesh = sharding.make_mesh(mesh_sizes)
  tx, _ = make_optimizer(config.optim, config.train.steps)
  with sharding.use_rules(config.sharding_rules):
    abstract = jax.eval_shape(make_init_fn(config, tx))
    target = abstract_like(abstract, sharding.state_shardings(abstract, mesh))
  manager = checkpointing.make_manager(workdir, save_every=5, keep=5)
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(target))
  finally:
    manager.close()


def losses(workdir: str) -> dict:
  return {row["step"]: row["loss"] for row in read_jsonl(os.path.join(workdir, "metrics.jsonl"))}


def main(root: str):
  a, b, c = (os.path.join(root, name) for name in "abc")
  train(config_on(DATA8), a)
  start_from(a, 10, b)
  train(config_on(EXPERT4), b)
  start_from(b, 15, c)
  train(config_on(DATA8), c)
  on_data, on_expert = restored_state(a, DATA8, 10), restored_state(a, EXPERT4, 10)
  same = all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(on_data), jax.tree.leaves(on_expert)))
  expert_weight = lambda s: list(s.params["trunk"]["stages"][0]["blocks"][0]["ffn"]["experts"][
      "w_gate_EDF"][...].sharding.spec)
  print(json.dumps({"a": losses(a), "b": losses(b), "c": losses(c), "bitwise_equal": same,
                    "specs": [expert_weight(on_data), expert_weight(on_expert)]}))


if __name__ == "__main__":
  main(sys.argv[1])
