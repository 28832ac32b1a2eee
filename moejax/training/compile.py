"""Lowering and compiling a config's train step without allocating anything (abstract state).

Used to check that large presets (the paper's models) compile here, and to measure compile
time as depth grows.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from moejax import sharding
from moejax.data.sources import BATCH_KEYS
from moejax.models.lm import MoELM
from moejax.training.optimizer import make_optimizer
from moejax.training.state import TrainState, model_graphdef, split_model
from moejax.training.step import make_train_step


def abstract_train_state(config: ml_collections.ConfigDict, tx) -> TrainState:
  def init() -> TrainState:
    _, params, rest = split_model(MoELM(config.model, rngs=nnx.Rngs(config.seed)))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=rest)

  return jax.eval_shape(init)


def compile_train_step(config: ml_collections.ConfigDict, mesh=None, compile_: bool = True):
  """Returns {"lower_s", "compile_s"} for the config's train step on ``mesh`` (default: 1 device)."""
  mesh = mesh or sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  tx, schedule = make_optimizer(config.optim, config.train.steps)
  coefs = {"load_balance_loss": config.optim.load_balance_coef,
           "router_z_loss": config.optim.router_z_coef}
  with sharding.use_rules(config.sharding_rules):
    graphdef = model_graphdef(config.model)
    state = abstract_train_state(config, tx)
    shardings = sharding.state_shardings(state, mesh)
    with jax.set_mesh(mesh):
      batch_sharding = sharding.batch_sharding(mesh)
      shape = (config.data.batch_size, config.data.seq_len)
      batch = {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == "loss_mask" else jnp.int32,
                                       sharding=batch_sharding) for k in BATCH_KEYS}
      step = jax.jit(make_train_step(graphdef, tx, schedule, coefs), donate_argnums=0,
                     in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None))
      start = time.perf_counter()
      lowered = step.lower(state, batch)
      timings = {"lower_s": time.perf_counter() - start}
      if compile_:
        start = time.perf_counter()
        lowered.compile()
        timings["compile_s"] = time.perf_counter() - start
  return timings
