"""Training-step performance on this machine: matmul peak, step throughput and MFU, and
compile time as depth grows (the layer scan should keep it flat).

  python -m benchmarks.train_step [--config=configs/lm_moe.py:tiny] [--steps=20]

Prints a table and, last, one JSON line. Not a test: numbers depend on the machine and load.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from benchmarks.peak import matmul_peak_gflops
from experiments import cli
from experiments.flags import CONFIG
from moejax import counting, sharding
from moejax.data.sources import BATCH_KEYS, make_source
from moejax.training.compile import compile_train_step
from moejax.training.state import init_train_state, model_graphdef
from moejax.training.step import build_train_step

_STEPS = flags.DEFINE_integer("steps", 20, "Timed training steps.")
_DEPTHS = flags.DEFINE_list("depths", ["2", "16"], "Layer counts for the compile-time check.")


def step_throughput(config, steps: int) -> float:
  """Median seconds per train step (after compilation) on one device."""
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  train_step, tx, _ = build_train_step(config, model_graphdef(config))
  source = make_source(config.data, config.model.vocab_size)
  with sharding.use_rules(config.sharding_rules):
    state, _ = init_train_state(config, tx, mesh)
    with jax.set_mesh(mesh):
      step = jax.jit(train_step, donate_argnums=0)
      batch = {k: jnp.asarray(v) for k, v in source.batch(0).items() if k in BATCH_KEYS}
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
      times = []
      for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  config = CONFIG.value
  peak = matmul_peak_gflops()
  seconds = step_throughput(config, _STEPS.value)
  tokens = config.data.batch_size * config.data.seq_len
  flops = counting.train_flops_per_token(config.model, config.data.seq_len) * tokens
  rows = [("matmul peak (GFLOP/s)", f"{peak:.1f}"), ("step time (s)", f"{seconds:.3f}"),
          ("tokens/s", f"{tokens / seconds:,.0f}"),
          ("model GFLOP/s", f"{flops / seconds / 1e9:.1f}"),
          ("MFU vs matmul peak", f"{flops / seconds / 1e9 / peak:.1%}")]
  compile_s = {}
  for depth in map(int, _DEPTHS.value):
    deep = config.copy_and_resolve_references()
    deep.model.num_layers = depth
    compile_s[depth] = compile_train_step(deep)["compile_s"]
    rows.append((f"compile, {depth} layers (s)", f"{compile_s[depth]:.1f}"))
  width = max(len(r[0]) for r in rows)
  print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
  print(json.dumps({"preset": config.preset, "matmul_peak_gflops": peak, "step_s": seconds,
                    "tokens_per_s": tokens / seconds, "mfu": flops / seconds / 1e9 / peak,
                    "compile_s_by_layers": compile_s}))


if __name__ == "__main__":
  cli.run(main)
