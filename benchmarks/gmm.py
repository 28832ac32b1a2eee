"""Grouped matmul and MoE FFN speed per strategy against a dense matmul of the same FLOPs.

  python -m benchmarks.gmm [--quick] [--repeats=5] [--calls=10]
      [--tokens=8192 --d_model=2048 --experts=128 --top_k=8 --d_ff=1024] [--dtype=bfloat16]

Two groups of rows, each timed side by side in one process (every variant once per round after
one untimed, compiling call; medians over rounds), forward + backward:
  gmm  one grouped matmul [T*K, D] x [E, D, F] over balanced groups (T*K/E rows each):
       ``pallas`` (kernels_pallas.grouped_matmul.gmm and its VJP), ``ragged_dot``
       (``jax.lax.ragged_dot``) and ``dense``, one [T*K, D] x [D, F] matmul: the same FLOPs.
  ffn  the routed SwiGLU experts (hidden F) with dispatch and combine, per dispatch strategy
       (``pallas``, ``ragged_dot``, ``sorted``; moejax.moe.dispatch) and ``dense``, a SwiGLU
       FFN of hidden K*F on the T tokens: equal active FLOPs. The router is not timed.
TFLOP/s counts the matmul FLOPs of forward and backward (3x the forward's); ``ratio`` is the
time over the dense row's of the same group (below 1: faster than dense).

The defaults are the paper's widest MoE shapes (d_model 2048, E=128; top-8 of experts with
hidden 1024, a granularity-4 fine-grained MoE, 8192 tokens per device). On CPU there is no
TPU or GPU kernel to time: the Pallas kernels run in the Pallas *interpreter*, the sizes drop
to small ones (``--cpu_*`` flags), and the table says so; those numbers check that the
benchmark runs and say nothing about accelerator speed. Not a test: timings depend on the
machine and its load. Prints a table, then one JSON line {"results": [...], ...}.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from kernels_pallas import grouped_matmul
from moejax.moe.dispatch import dispatch
from moejax.moe.experts import SwiGLUExperts
from moejax.moe.routers import Routing

_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes, one round: a smoke test (seconds).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds (median).")
_CALLS = flags.DEFINE_integer("calls", 1, "Back-to-back calls per timed sample (10-50 on an "
                              "accelerator, where one call is shorter than its launch cost).")
_TOKENS = flags.DEFINE_integer("tokens", 8192, "Tokens T per device (accelerator).")
_D_MODEL = flags.DEFINE_integer("d_model", 2048, "Model width D (accelerator).")
_EXPERTS = flags.DEFINE_integer("experts", 128, "Experts E (accelerator).")
_TOP_K = flags.DEFINE_integer("top_k", 8, "Experts per token K (accelerator).")
_D_FF = flags.DEFINE_integer("d_ff", 1024, "Expert hidden size F (accelerator).")
_CPU_SIZES = flags.DEFINE_list("cpu_sizes", ["512", "256", "8", "2", "256"],
                               "T, D, E, K, F on CPU (the interpreter is slow).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                           "Compute dtype (default: bfloat16 on an accelerator, else float32).")
_STRATEGIES = flags.DEFINE_list("strategies", ["pallas", "ragged_dot", "sorted"],
                                "MoE dispatch strategies of the ffn group (gmm: pallas and "
                                "ragged_dot of them).")
_QUICK_SIZES = (64, 128, 4, 2, 128)


def sizes() -> tuple[int, int, int, int, int]:
  if _QUICK.value:
    return _QUICK_SIZES
  if jax.default_backend() == "cpu":
    return tuple(int(s) for s in _CPU_SIZES.value)
  return _TOKENS.value, _D_MODEL.value, _EXPERTS.value, _TOP_K.value, _D_FF.value


def _normal(key, shape, scale, dtype):
  return (jax.random.normal(key, shape) * scale).astype(dtype)


def gmm_variants(rows: int, d: int, e: int, f: int, dtype, interpret: bool) -> dict:
  """{name: (jit(fwd+bwd), args)} of the grouped matmul and its dense reference."""
  keys = jax.random.split(jax.random.key(0), 3)
  x = _normal(keys[0], (rows, d), 1.0, dtype)
  w = _normal(keys[1], (e, d, f), d ** -0.5, dtype)
  sizes_E = jnp.full((e,), rows // e, jnp.int32).at[-1].add(rows % e)

  def grad_of(matmul):
    loss = lambda x, w: jnp.sum(jnp.square(matmul(x, w).astype(jnp.float32)))
    return jax.jit(jax.grad(loss, argnums=(0, 1)))

  variants = {"dense": (grad_of(lambda x, w: x @ w), (x, w[0]))}
  if "pallas" in _STRATEGIES.value:
    variants["pallas"] = (grad_of(lambda x, w: grouped_matmul.gmm(
        x, w, sizes_E, interpret=interpret)), (x, w))
  if "ragged_dot" in _STRATEGIES.value:
    variants["ragged_dot"] = (grad_of(lambda x, w: jax.lax.ragged_dot(x, w, sizes_E)), (x, w))
  return variants


def balanced_routing(tokens: int, e: int, k: int) -> Routing:
  """Token t takes experts r, r+1, ..., r+K-1 (mod E) for a random residue r: balanced."""
  rng = np.random.default_rng(0)
  ids_TK = jnp.asarray((rng.permutation(tokens) % e)[:, None] + np.arange(k)[None] % e,
                       jnp.int32) % e
  logits_TE = jax.random.normal(jax.random.key(1), (tokens, e))
  probs_TE = jax.nn.softmax(logits_TE)
  weights_TK = jnp.take_along_axis(probs_TE, ids_TK, axis=-1)
  weights_TK = weights_TK / jnp.sum(weights_TK, axis=-1, keepdims=True)
  return Routing(expert_ids_TK=ids_TK, weights_TK=weights_TK, probs_TE=probs_TE,
                 logits_TE=logits_TE)


def ffn_variants(tokens: int, d: int, e: int, k: int, f: int, dtype) -> dict:
  """{name: (jit(fwd+bwd), args)} of the routed experts per strategy and the dense FFN."""
  x_TD = _normal(jax.random.key(2), (tokens, d), 1.0, dtype)
  keys = jax.random.split(jax.random.key(3), 3)
  dense_w = (_normal(keys[0], (d, k * f), d ** -0.5, dtype),
             _normal(keys[1], (d, k * f), d ** -0.5, dtype),
             _normal(keys[2], (k * f, d), (k * f) ** -0.5, dtype))

  def dense_loss(x, w):
    y = (jax.nn.silu(x @ w[0]) * (x @ w[1])) @ w[2]
    return jnp.sum(jnp.square(y.astype(jnp.float32)))

  variants = {"dense": (jax.jit(jax.grad(dense_loss, argnums=(0, 1))), (x_TD, dense_w))}
  experts = SwiGLUExperts(e, d, f, param_dtype=dtype, dtype=dtype, rngs=nnx.Rngs(0))
  graphdef, weights = nnx.split(experts)
  routing = balanced_routing(tokens, e, k)
  for strategy in _STRATEGIES.value:
    def loss(x, weights, strategy=strategy):
      y_TD, _ = dispatch(strategy, x, routing, nnx.merge(graphdef, weights))
      return jnp.sum(jnp.square(y_TD.astype(jnp.float32)))
    variants[strategy] = (jax.jit(jax.grad(loss, argnums=(0, 1))), (x_TD, weights))
  return variants


def _call(fn, args, calls: int) -> float:
  start = time.perf_counter()
  for _ in range(calls):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / calls


def time_variants(variants: dict, repeats: int, calls: int) -> dict[str, float]:
  """Median seconds per call of each variant, interleaved rounds after a compiling call."""
  for fn, args in variants.values():
    _call(fn, args, 1)
  samples = {name: [] for name in variants}
  for _ in range(repeats):
    for name, (fn, args) in variants.items():
      samples[name].append(_call(fn, args, calls))
  return {name: float(np.median(s)) for name, s in samples.items()}


def main(argv):
  del argv
  backend = jax.default_backend()
  interpreted = backend == "cpu"
  dtype = jnp.dtype(_DTYPE.value or ("float32" if interpreted else "bfloat16"))
  tokens, d, e, k, f = sizes()
  repeats = 1 if _QUICK.value else _REPEATS.value
  rows = tokens * k
  print(f"{jax.device_count()} {backend} device(s) ({jax.devices()[0].device_kind}), "
        f"{dtype.name}; T={tokens} D={d} E={e} K={k} F={f}, balanced groups of {rows // e} "
        "rows", flush=True)
  if interpreted:
    print("CPU: the Pallas kernels run in the Pallas interpreter (interpret=True), at small "
          "sizes: these timings check that the benchmark runs; they say nothing about TPU or "
          "GPU speed.", flush=True)
  print(f"{'group':>5} {'strategy':>10} {'time_ms':>10} {'dense_ms':>10} {'ratio':>7} "
        f"{'TFLOP/s':>8}", flush=True)
  groups = {"gmm": (gmm_variants(rows, d, e, f, dtype, interpreted), 3 * 2 * rows * d * f),
            "ffn": (ffn_variants(tokens, d, e, k, f, dtype), 3 * 3 * 2 * rows * d * f)}
  results = []
  for kind, (variants, flops) in groups.items():
    medians = time_variants(variants, repeats, _CALLS.value)
    for name, seconds in medians.items():
      ratio = seconds / medians["dense"]
      print(f"{kind:>5} {name:>10} {seconds * 1e3:10.3f} {medians['dense'] * 1e3:10.3f} "
            f"{ratio:7.2f} {flops / seconds / 1e12:8.4f}", flush=True)
      results.append({"kind": kind, "strategy": name, "seconds": float(f"{seconds:.4g}"),
                      "dense_seconds": float(f"{medians['dense']:.4g}"),
                      "ratio_vs_dense": round(ratio, 3),
                      "tflops": float(f"{flops / seconds / 1e12:.4g}")})
  print(json.dumps({"results": results, "interpreted": interpreted, "backend": backend,
                    "device": jax.devices()[0].device_kind, "dtype": dtype.name,
                    "shape": {"tokens": tokens, "d_model": d, "experts": e, "top_k": k,
                              "d_ff": f}, "repeats": repeats}))


if __name__ == "__main__":
  app.run(main)
