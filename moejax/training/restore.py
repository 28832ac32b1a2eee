"""A finished run, loaded back from its workdir: ``config.json`` and the newest checkpoint.

  run = restore_run("DIR/sweep/runs/NAME")
  with run.context():                       # the run's sharding rules and mesh
    metrics = evaluate_suites(run.state, None, ..., graphdef=run.graphdef)

The state is restored with the shardings the trainer gives it (``training/state.py``), on the
devices of this process. The model family comes from the config's task (training/task.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Iterator

import jax
import ml_collections
from flax import nnx

from moejax import sharding, validation
from moejax.training import checkpointing
from moejax.training.optimizer import make_optimizer
from moejax.training.state import TrainState, abstract_like, make_init_fn, model_graphdef


@dataclasses.dataclass
class RestoredRun:
  """A trained run: its config, model graphdef, train state and mesh."""
  config: ml_collections.ConfigDict
  graphdef: nnx.GraphDef
  state: TrainState
  step: int
  mesh: jax.sharding.Mesh

  @contextlib.contextmanager
  def context(self) -> Iterator[None]:
    """The sharding rules and mesh the run was trained under."""
    with sharding.use_rules(self.config.sharding_rules), jax.set_mesh(self.mesh):
      yield


def load_config(run_dir: str) -> ml_collections.ConfigDict:
  """The run's config, as the trainer wrote it to ``config.json``."""
  with open(os.path.join(run_dir, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_run(run_dir: str) -> RestoredRun:
  """The newest complete checkpoint of the run in ``run_dir``; raises if there is none."""
  config = load_config(run_dir)
  mesh = sharding.make_mesh(validation.validate_run(config, jax.device_count()))
  tx, _ = make_optimizer(config.optim, config.train.steps)
  with sharding.use_rules(config.sharding_rules):
    abstract = jax.eval_shape(make_init_fn(config, tx))
    target = abstract_like(abstract, sharding.state_shardings(abstract, mesh))
  manager = checkpointing.make_manager(run_dir, save_every=config.train.checkpoint_every,
                                       keep=config.train.keep_checkpoints)
  try:
    step, state = checkpointing.restore_latest(manager, target)
  finally:
    manager.close()
  if state is None:
    raise FileNotFoundError(f"no checkpoint under {run_dir}/checkpoints")
  return RestoredRun(config, model_graphdef(config), state, step, mesh)
