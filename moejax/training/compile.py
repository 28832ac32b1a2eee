"""Lowering and compiling a config's train step without allocating anything (abstract state).

Used to check that large presets (the paper's models) compile here, and to measure compile
time as depth grows.
"""

from __future__ import annotations

import time

import jax
import ml_collections

from moejax import sharding
from moejax.training import task as task_lib
from moejax.training.state import make_init_fn, model_graphdef
from moejax.training.step import build_train_step


def lower_train_step(config: ml_collections.ConfigDict, mesh=None):
  """(lowered, seconds): the config's train step lowered on ``mesh`` (default: 1 device) from
  abstract state and batch. The mesh may hold compile-only devices (moejax/planning)."""
  mesh = mesh or sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  graphdef = model_graphdef(config)
  train_step, tx, _ = build_train_step(config, graphdef)
  with sharding.use_rules(config.sharding_rules):
    state = jax.eval_shape(make_init_fn(config, tx))
    shardings = sharding.state_shardings(state, mesh)
    with jax.set_mesh(mesh):
      spec = task_lib.get(config).batch_spec(config)
      batch_sharding = sharding.batch_shardings(spec, mesh)
      batch = {k: jax.ShapeDtypeStruct(f.shape, f.dtype, sharding=batch_sharding[k])
               for k, f in spec.items()}
      step = jax.jit(train_step, donate_argnums=0,
                     in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None))
      start = time.perf_counter()
      lowered = step.lower(state, batch)
      return lowered, time.perf_counter() - start


def compile_train_step(config: ml_collections.ConfigDict, mesh=None, compile_: bool = True):
  """Lowers (and compiles) the config's train step on ``mesh`` (default: 1 device).

  Returns {"lower_s", "hlo_text"} (the lowered StableHLO) and, compiled, {"compile_s",
  "argument_bytes", "temp_bytes"} (the executable's input size: train state and batch; its
  temporaries).
  """
  lowered, lower_s = lower_train_step(config, mesh)
  timings = {"lower_s": lower_s, "hlo_text": lowered.as_text()}
  if compile_:
    start = time.perf_counter()
    compiled = lowered.compile()
    timings["compile_s"] = time.perf_counter() - start
    memory = compiled.memory_analysis()
    if memory is not None:
      timings["argument_bytes"] = memory.argument_size_in_bytes
      timings["temp_bytes"] = memory.temp_size_in_bytes
  return timings
