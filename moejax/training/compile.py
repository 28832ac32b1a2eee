"""Lowering and compiling a config's train step without allocating anything (abstract state).

Used to check that large presets (the paper's models) compile here, and to measure compile
time as depth grows.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections

from moejax import sharding
from moejax.data.sources import BATCH_KEYS
from moejax.training.state import make_init_fn, model_graphdef
from moejax.training.step import build_train_step


def compile_train_step(config: ml_collections.ConfigDict, mesh=None, compile_: bool = True):
  """Returns {"lower_s", "compile_s"} for the config's train step on ``mesh`` (default: 1 device)."""
  mesh = mesh or sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  graphdef = model_graphdef(config.model)
  train_step, tx, _ = build_train_step(config, graphdef)
  with sharding.use_rules(config.sharding_rules):
    state = jax.eval_shape(make_init_fn(config, tx))
    shardings = sharding.state_shardings(state, mesh)
    with jax.set_mesh(mesh):
      batch_sharding = sharding.batch_sharding(mesh)
      shape = (config.data.batch_size, config.data.seq_len)
      batch = {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == "loss_mask" else jnp.int32,
                                       sharding=batch_sharding) for k in BATCH_KEYS}
      step = jax.jit(train_step, donate_argnums=0,
                     in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None))
      start = time.perf_counter()
      lowered = step.lower(state, batch)
      timings = {"lower_s": time.perf_counter() - start}
      if compile_:
        start = time.perf_counter()
        lowered.compile()
        timings["compile_s"] = time.perf_counter() - start
  return timings
