"""MoE FFN dispatch speed against a dense SwiGLU FFN doing the same active FLOPs.

  python -m benchmarks.moe_layer [--quick] [--repeats=3]
      [--strategies=sorted,experts,einsum,ragged_dot] [--dtype=bfloat16 --calls=20 on a GPU]

For each grid point (tokens T, d_model D, experts E, top-k K, routing) it times forward+backward
(gradients for the tokens, the combine weights and every expert weight) of the routed SwiGLU
experts (hidden F = ff_mult * D) and of a dense SwiGLU FFN with hidden K*F on the same tokens,
side by side in one process: each round runs the dense FFN and then every MoE variant of the
same (T, D, K) once, after one untimed (compiling) call each; ratios use medians over rounds.
The router itself (a D x E matmul and a top-k) is not timed: it is the same for every strategy
and absent from the dense reference.

Routings: ``balanced`` (every expert gets exactly T*K/E choices), ``skewed`` (Zipf popularity
p_e ~ 1/(e+1), sampled without replacement: the first expert gets about 3x (E=8) to 13x (E=64)
the mean load) and, on request, ``random`` (uniform: multinomial load noise). The baselines run
on ``--baseline_routings``: ``einsum`` with capacity factor 1.25 (it drops tokens; dropless it
needs O(T^2) memory), skipped where its [T, E, C] tensors exceed ``--einsum_max_elements``;
``ragged_dot``, which on CPU computes every expert over all rows (about E times the dense
work). ``experts`` is the floor of any dispatch built on the batched pass: the expert FFN
alone on tokens already grouped as [E, T*K/E, D] (balanced, no sort, gather or combine).
``dense_blas`` (a reference, shown with E=1) is the dense FFN computed by the experts' CPU BLAS
kernel (kernels_cpu/, forced for all three GEMMs) instead of XLA's dot: a ratio below 1 there
means that library is faster than XLA's on this machine for the dense shapes. A baseline
expected to take longer than ``--max_baseline_s`` per call is skipped, a group runs fewer
rounds when ``--max_group_s`` would be exceeded, and ``--max_dense_s`` skips the groups whose
dense FFN alone is expected to take longer per call.

Prints a table, then one JSON line {"results": [...], ...}. The ``faults`` column counts the
minor page faults per call: large counts mean the step spends its time in the kernel mapping
fresh memory (see moejax/host_memory.py). The ``gemm f/dx/dw`` column (JSON: ``gemm``) says
what ran the expert matmuls' forward, input-gradient and weight-gradient GEMMs: ``blas`` (the
CPU kernel) or ``xla``, as kernels_cpu/expert_matmul.py chose them (measured per shape class
unless ``MOEJAX_CPU_GEMM`` forces it; ``mix`` where its matmuls' classes chose differently).
Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from benchmarks.peak import matmul_peak_gflops
from kernels_cpu.expert_matmul import (ALL_BLAS, GemmChoice, cpu_gemm_setting,
                                       fixed_expert_matmul, recorded_choices, uses_cpu_kernel)
from moejax.host_memory import keep_freed_host_memory
from moejax.moe.dispatch import dispatch
from moejax.moe.experts import SwiGLUExperts, expert_matmul
from moejax.moe.routers import Routing

_QUICK = flags.DEFINE_bool("quick", False,
                           "T=4096, D=256, K in {1, 2}, balanced and skewed: under two minutes.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed rounds per group (median).")
_STRATEGIES = flags.DEFINE_list("strategies",
                                ["sorted", "experts", "einsum", "ragged_dot", "dense_blas"],
                                "Dispatch strategies to time (and dense_blas, a reference).")
_TOKENS = flags.DEFINE_list("tokens", ["4096", "16384"], "Token counts (full grid).")
_D_MODEL = flags.DEFINE_list("d_model", ["256", "1024"], "Model widths (full grid).")
_EXPERTS = flags.DEFINE_list("experts", ["8", "64"], "Expert counts.")
_TOP_K = flags.DEFINE_list("top_k", ["1", "2", "8"], "Experts per token (full grid).")
_ROUTINGS = flags.DEFINE_list("routings", ["balanced", "skewed"],
                              "Routings for the default strategy (also: random).")
_BASELINE_ROUTINGS = flags.DEFINE_list("baseline_routings", ["balanced"],
                                       "Routings for the einsum and ragged_dot baselines.")
_FF_MULT = flags.DEFINE_integer("ff_mult", 2, "Expert hidden size F = ff_mult * d_model.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Compute dtype of tokens and weights (MoE and dense alike).")
_CALLS = flags.DEFINE_integer("calls", 1, "Back-to-back calls per timed sample (use 10-50 on "
                              "a GPU, where one small call is shorter than its launch cost).")
_EINSUM_MAX = flags.DEFINE_integer("einsum_max_elements", 2 ** 27,
                                   "Skip einsum where T*E*C exceeds this.")
_MAX_BASELINE_S = flags.DEFINE_float("max_baseline_s", 10.0,
                                     "Skip a baseline expected to take longer per call.")
_MAX_GROUP_S = flags.DEFINE_float("max_group_s", 900.0,
                                  "Time budget of one (T, D, K) group; fewer rounds beyond.")
_MAX_DENSE_S = flags.DEFINE_float("max_dense_s", None,
                                  "Skip a (T, D, K) group whose dense FFN is expected to take "
                                  "longer per call at the matmul peak (default: none skipped).")
_EINSUM_CAPACITY = 1.25
DEFAULT_STRATEGY = "sorted"
EXPERTS_ONLY = "experts"  # the grouped matmuls without dispatch: the floor of "sorted"
DENSE_BLAS = "dense_blas"  # the dense FFN with the experts' CPU BLAS kernel (E=1)
AUTOTUNED = "openblas (kernels_cpu) or xla dot, measured per shape class"


@dataclasses.dataclass(frozen=True)
class Point:
  tokens: int
  d_model: int
  num_experts: int
  top_k: int
  routing: str


def make_expert_ids(point: Point, seed: int = 0) -> np.ndarray:
  """[T, K] distinct experts per token for the point's routing pattern."""
  rng = np.random.default_rng(seed)
  t, e, k = point.tokens, point.num_experts, point.top_k
  if point.routing == "balanced":  # token t takes experts r, r+1, ..., r+K-1 (mod E)
    residue_T = rng.permutation(t) % e
    return (residue_T[:, None] + np.arange(k)[None]) % e
  popularity_E = np.ones(e) if point.routing == "random" else 1.0 / np.arange(1, e + 1)
  gumbel_TE = rng.gumbel(size=(t, e)) + np.log(popularity_E)  # Gumbel top-k: sampling
  return np.argsort(-gumbel_TE, axis=-1)[:, :k]              # without replacement


def make_routing(point: Point) -> Routing:
  ids_TK = jnp.asarray(make_expert_ids(point), jnp.int32)
  logits_TE = jax.random.normal(jax.random.key(1), (point.tokens, point.num_experts))
  probs_TE = jax.nn.softmax(logits_TE)
  weights_TK = jnp.take_along_axis(probs_TE, ids_TK, axis=-1)
  weights_TK = weights_TK / jnp.sum(weights_TK, axis=-1, keepdims=True)
  return Routing(expert_ids_TK=ids_TK, weights_TK=weights_TK, probs_TE=probs_TE,
                 logits_TE=logits_TE)


def dense_step(d_model: int, d_ff: int):
  """jit(forward+backward) of a dense SwiGLU FFN; returns (fn, args after the tokens)."""
  keys = jax.random.split(jax.random.key(2), 3)
  dtype = jnp.dtype(_DTYPE.value)
  w = ((jax.random.normal(keys[0], (d_model, d_ff)) * d_model ** -0.5).astype(dtype),
       (jax.random.normal(keys[1], (d_model, d_ff)) * d_model ** -0.5).astype(dtype),
       (jax.random.normal(keys[2], (d_ff, d_model)) * d_ff ** -0.5).astype(dtype))

  def loss(x_TD, w):
    w_gate, w_up, w_down = w
    y_TD = (jax.nn.silu(x_TD @ w_gate) * (x_TD @ w_up)) @ w_down
    return jnp.sum(jnp.square(y_TD.astype(jnp.float32)))

  return jax.jit(jax.grad(loss, argnums=(0, 1))), (w,)


def moe_step(point: Point, d_ff: int, strategy: str):
  """jit(forward+backward) of dispatch + experts + combine; returns (fn, args after tokens)."""
  dtype = jnp.dtype(_DTYPE.value)
  if strategy == DENSE_BLAS:  # one expert as wide as the dense FFN
    point, d_ff = dataclasses.replace(point, num_experts=1, top_k=1), point.top_k * d_ff
  experts = SwiGLUExperts(point.num_experts, point.d_model, d_ff, param_dtype=dtype,
                          dtype=dtype, rngs=nnx.Rngs(0))
  graphdef, weights = nnx.split(experts)
  options = {"capacity_factor": _EINSUM_CAPACITY} if strategy == "einsum" else {}

  def loss(x_TD, weights, routing):
    if strategy in (EXPERTS_ONLY, DENSE_BLAS):
      x_ECD = jnp.broadcast_to(x_TD, (point.top_k, *x_TD.shape)).reshape(
          point.num_experts, -1, point.d_model)
      matmul = expert_matmul if strategy == EXPERTS_ONLY else _blas_matmul
      y_TD = nnx.merge(graphdef, weights)(x_ECD, matmul)
    else:
      y_TD, _ = dispatch(strategy, x_TD, routing, nnx.merge(graphdef, weights), **options)
    return jnp.sum(jnp.square(y_TD.astype(jnp.float32)))

  # The routing is an argument (not a closed-over constant XLA would fold) and is
  # differentiated too: its combine weights get gradients, its int32 ids float0 ones.
  grad_fn = jax.grad(loss, argnums=(0, 1, 2), allow_int=True)
  return jax.jit(grad_fn), (weights, make_routing(point))


def _blas_matmul(x_ECI, w_EIO):
  return fixed_expert_matmul(x_ECI, w_EIO, ALL_BLAS)


def gemm_choice(choices: list[GemmChoice]) -> dict[str, str] | None:
  """The implementation of each GEMM kind over the traced expert matmuls (``mix`` where they
  differ); None where no expert_matmul ran."""
  if not choices:
    return None
  kinds = {kind: {getattr(choice, kind) for choice in choices} for kind in GemmChoice._fields}
  return {kind: impls.pop() if len(impls) == 1 else "mix" for kind, impls in kinds.items()}


def skip_reason(point: Point, strategy: str, dense_s: float) -> str | None:
  """Why a baseline is not run here (``dense_s``: the dense FFN's first-call time). The time
  estimates model XLA:CPU; on an accelerator only the memory bound applies."""
  if strategy == "einsum":
    cap = -(-int(point.tokens * point.top_k * _EINSUM_CAPACITY) // point.num_experts)
    if point.tokens * point.num_experts * cap > _EINSUM_MAX.value:
      return "T*E*C too large"
  if strategy == DENSE_BLAS and expert_gemm() == "xla dot":
    return "no CPU BLAS kernel here: the dense row is XLA's already"
  if jax.default_backend() != "cpu":
    return None
  if strategy == "einsum":
    # The one-hot dispatch and combine einsums cost about T*C*E*D per matmul of T*K*D*F.
    estimate = dense_s * (1 + point.tokens * _EINSUM_CAPACITY / (3 * _FF_MULT.value
                                                                 * point.d_model))
  elif strategy == "ragged_dot":
    estimate = dense_s * point.num_experts
  else:
    return None
  if estimate > _MAX_BASELINE_S.value:
    return f"expected ~{estimate:.0f}s per call"
  return None


def _run(fn, args, x_TD, calls: int = 1) -> tuple[float, float]:
  """(seconds, minor page faults) per call of ``calls`` back-to-back calls."""
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  start = time.perf_counter()
  for _ in range(calls):
    out = fn(x_TD, *args)
  jax.block_until_ready(out)
  seconds = time.perf_counter() - start
  return seconds / calls, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / calls


def time_group(tokens: int, d_model: int, top_k: int, variants_wanted, repeats: int):
  """Times the dense FFN and every (point, strategy) of one (T, D, K) in interleaved rounds,
  after one untimed round (so the host heap has grown to its steady size).

  Returns ({variant: (median seconds, median page faults) per call}, {variant: skip reason},
  rounds run, {variant: gemm_choice}).
  """
  group_start = time.perf_counter()
  d_ff = _FF_MULT.value * d_model
  x_TD = jax.random.normal(jax.random.key(0), (tokens, d_model)).astype(_DTYPE.value)
  variants = {"dense": dense_step(d_model, top_k * d_ff)}
  dense_first_s, _ = _run(*variants["dense"], x_TD)  # includes compilation: an upper bound
  skipped, gemms = {}, {}
  for point, strategy in variants_wanted:
    reason = skip_reason(point, strategy, dense_first_s)
    if reason:
      skipped[(point, strategy)] = reason
      continue
    variants[(point, strategy)] = moe_step(point, d_ff, strategy)
    with recorded_choices() as choices:  # the expert GEMMs are chosen (measured) while tracing
      _run(*variants[(point, strategy)], x_TD)  # compile and warm up
    gemms[(point, strategy)] = gemm_choice([ALL_BLAS] if strategy == DENSE_BLAS else choices)
  for fn, args in variants.values():
    _run(fn, args, x_TD)
  samples = {name: [] for name in variants}
  rounds = 0
  while rounds < repeats:
    round_start = time.perf_counter()
    for name, (fn, args) in variants.items():
      samples[name].append(_run(fn, args, x_TD, _CALLS.value))
    rounds += 1
    elapsed = time.perf_counter() - group_start
    if elapsed + (time.perf_counter() - round_start) > _MAX_GROUP_S.value:
      break
  medians = {name: tuple(float(v) for v in np.median(np.array(runs), axis=0))
             for name, runs in samples.items()}
  return medians, skipped, rounds, gemms


def active_flops(tokens: int, d_model: int, top_k: int) -> float:
  """Forward+backward matmul FLOPs of the experts a token uses: 3 matmuls, x3 for backward."""
  return 3 * 3 * 2 * tokens * d_model * _FF_MULT.value * d_model * top_k


def expert_gemm() -> str:
  """What may run the experts' matmuls in ``sorted`` and ``experts`` (the gemm column says
  what did, per point)."""
  if not uses_cpu_kernel(_DTYPE.value):
    return "xla dot"
  if cpu_gemm_setting() == "1":
    return "openblas (kernels_cpu)"
  return AUTOTUNED


def main(argv):
  del argv
  kept = keep_freed_host_memory()
  gemm = expert_gemm()
  tokens = [4096] if _QUICK.value else [int(t) for t in _TOKENS.value]
  widths = [256] if _QUICK.value else [int(d) for d in _D_MODEL.value]
  top_ks = [1, 2] if _QUICK.value else [int(k) for k in _TOP_K.value]
  experts = [int(e) for e in _EXPERTS.value]
  peak = matmul_peak_gflops(dtype=_DTYPE.value)  # re-measured per group; the largest counts
  print(f"{_DTYPE.value} matmul peak {peak:.1f} GFLOP/s; expert hidden F = {_FF_MULT.value} * "
        f"d_model; {jax.device_count()} {jax.devices()[0].platform} device(s); freed host memory "
        f"{'kept (moejax.host_memory)' if kept else 'returned to the OS'}; expert GEMMs: {gemm}",
        flush=True)
  print(f"{'T':>6} {'D':>5} {'E':>3} {'K':>2} {'routing':>9} {'strategy':>10} "
        f"{'time_ms':>10} {'dense_ms':>10} {'ratio':>6} {'MFU':>6} {'faults':>8} "
        f"{'gemm f/dx/dw':>14}", flush=True)
  results = []
  for t in tokens:
    for d in widths:
      for k in top_ks:
        wanted = [(Point(t, d, e, k, r), s) for e in experts if k <= e
                  for s in _STRATEGIES.value if s != DENSE_BLAS
                  for r in (_ROUTINGS.value if s == DEFAULT_STRATEGY
                            else ["balanced"] if s == EXPERTS_ONLY
                            else _BASELINE_ROUTINGS.value)]
        if DENSE_BLAS in _STRATEGIES.value:  # E=1 in the table: no routing
          wanted.append((Point(t, d, 1, k, "balanced"), DENSE_BLAS))
        peak = max(peak, matmul_peak_gflops(dtype=_DTYPE.value))
        flops = active_flops(t, d, k)
        if _MAX_DENSE_S.value is not None and flops / peak / 1e9 > _MAX_DENSE_S.value:
          print(f"{t:>6} {d:>5}   * {k:>2}  skipped group: dense expected "
                f"~{flops / peak / 1e9:.0f}s per call at peak", flush=True)
          continue
        medians, skipped, rounds, gemms = time_group(t, d, k, wanted, _REPEATS.value)
        dense_s, dense_faults = medians["dense"]
        for point, strategy in wanted:
          prefix = (f"{t:>6} {d:>5} {point.num_experts:>3} {k:>2} {point.routing:>9} "
                    f"{strategy:>10}")
          if (point, strategy) in skipped:
            print(f"{prefix}  skipped: {skipped[(point, strategy)]}", flush=True)
            continue
          seconds, faults = medians[(point, strategy)]
          gemm_used = gemms[(point, strategy)]
          print(f"{prefix} {seconds * 1e3:10.3f} {dense_s * 1e3:10.3f} "
                f"{seconds / dense_s:6.2f} {flops / seconds / 1e9 / peak:6.1%} {faults:8.0f} "
                f"{'/'.join(gemm_used.values()) if gemm_used else '-':>14}", flush=True)
          results.append({**dataclasses.asdict(point), "strategy": strategy,
                          "ratio_vs_dense": round(seconds / dense_s, 3),
                          "seconds": float(f"{seconds:.4g}"),
                          "dense_seconds": float(f"{dense_s:.4g}"),
                          "gflops": round(flops / seconds / 1e9, 1),
                          "dense_gflops": round(flops / dense_s / 1e9, 1), "rounds": rounds,
                          "page_faults": round(faults), "dense_page_faults": round(dense_faults),
                          **({"gemm": gemm_used} if gemm_used else {})})
        print(f"{'':>36} dense MFU {flops / dense_s / 1e9 / peak:.1%}, {dense_faults:.0f} "
              f"page faults per call, {rounds} round(s)", flush=True)
  peak = max(peak, matmul_peak_gflops(dtype=_DTYPE.value))
  for result in results:
    result["mfu"] = round(result["gflops"] / peak, 3)
  print(f"MFU relative to the largest measured {_DTYPE.value} matmul throughput, "
        f"{peak:.1f} GFLOP/s (the table's MFU used the value known at the time).", flush=True)
  print(json.dumps({"results": results, "matmul_peak_gflops": round(peak, 1),
                    "ff_mult": _FF_MULT.value, "dtype": _DTYPE.value,
                    "device": jax.devices()[0].device_kind, "expert_gemm": gemm}))


if __name__ == "__main__":
  app.run(main)
