"""The experts' grouped matmul on XLA:CPU: each of its GEMMs on the BLAS kernel or on XLA's dot,
whichever was measured faster on this machine for its shape class.

``expert_matmul(x_ECI, w_EIO)`` is ``einsum("eci,eio->eco")`` with its own VJP, so that the
forward (y = x w), input-gradient (dx = dy w^T) and weight-gradient (dw = x^T dy) GEMMs each get
an implementation: ``blas`` (batched_gemm.py) or ``xla`` (XLA's batched dot). The choice is made
while tracing, where shapes are static, by autotune.py, and becomes a static argument of the
custom VJP (``fixed_expert_matmul``): a traced function keeps the choice it was traced with.

A shape class is the GEMM's kind with the batch E and its rows, inner and output sizes each
rounded to the nearest power of two ("forward E64 64x256x512"): the measurement runs at those
sizes (with E, then the largest size, halved while one call exceeds 2^31 FLOPs), so it does
not depend on which member of the class came first, and a model has a handful of classes.

``MOEJAX_CPU_GEMM``: unset or ``auto`` measures; ``1`` runs every float32 GEMM on the kernel
where it is available; ``0`` never builds or uses it. Only float32 on an XLA:CPU default backend
is measured: bfloat16, GPUs and TPUs always use XLA's dot.

  python -m kernels_cpu.expert_matmul 64x64x256x512 8x512x256x512   # E x C x I x O: choices
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels_cpu import autotune, batched_gemm
from kernels_pallas.shard import match_varying

BLAS, XLA = "blas", "xla"
_TRANS = {"forward": (False, False), "input_grad": (False, True), "weight_grad": (True, False)}
_MAX_TIMED_FLOPS = 2 ** 31  # about 20 ms per call at 100 GFLOP/s


class GemmChoice(NamedTuple):
  """The implementation of each GEMM of ``expert_matmul``: ``blas`` or ``xla``."""
  forward: str
  input_grad: str
  weight_grad: str


ALL_XLA, ALL_BLAS = GemmChoice(XLA, XLA, XLA), GemmChoice(BLAS, BLAS, BLAS)


def cpu_gemm_setting() -> str:
  """``MOEJAX_CPU_GEMM``: 0 (never the kernel), 1 (always, where available) or auto."""
  setting = os.environ.get("MOEJAX_CPU_GEMM") or "auto"
  if setting not in ("0", "1", "auto"):
    raise ValueError(f"MOEJAX_CPU_GEMM must be 0, 1 or auto, got {setting!r}")
  return setting


def uses_cpu_kernel(dtype) -> bool:
  """Whether ``expert_matmul`` may run GEMMs on the CPU BLAS kernel for this dtype here: float32
  on an XLA:CPU default backend (nothing is built on GPU/TPU hosts), the kernel built, and
  ``MOEJAX_CPU_GEMM`` not 0. Which GEMMs do is decided per shape class (``choose``)."""
  return (jnp.dtype(dtype) == jnp.float32 and jax.default_backend() == "cpu"
          and cpu_gemm_setting() != "0" and batched_gemm.available())


def _xla_dot(a, b, *, trans_a: bool = False, trans_b: bool = False):
  """op(a[e]) @ op(b[e]) with XLA's batched dot, accumulated in float32."""
  if trans_a:  # contracting the row axis of both [E, C, .] operands sends XLA:CPU's dot to a
    # slower path (E=64, C=64, 256x512: 13-17 ms against 11-13 ms for a transposed input);
    # the barrier keeps XLA from folding the transpose back into the dot's dimensions.
    a = lax.optimization_barrier(jnp.swapaxes(a, 1, 2))
  return jnp.einsum("eci,eoi->eco" if trans_b else "eci,eio->eco", a, b,
                    preferred_element_type=jnp.float32)


def _blas_dot(a, b, *, trans_a: bool = False, trans_b: bool = False):
  """op(a[e]) @ op(b[e]) with the kernel; XLA's dot where the computation is lowered for
  another platform than the CPU."""
  kernel = functools.partial(batched_gemm.batched_gemm, trans_a=trans_a, trans_b=trans_b)
  xla = functools.partial(_xla_dot, trans_a=trans_a, trans_b=trans_b)
  return lax.platform_dependent(a, b, cpu=kernel, default=xla)


_DOTS = {BLAS: _blas_dot, XLA: _xla_dot}


def _bucket(n: int) -> int:
  """n rounded to the nearest power of two on a log scale; 0 stays 0."""
  return 2 ** round(math.log2(n)) if n else 0


def shape_class(kind: str, experts: int, rows: int, inner: int, cols: int) -> str:
  """The autotuning key of a [experts] batch of (rows x inner) @ (inner x cols) GEMMs."""
  e, m, k, n = (_bucket(s) for s in (experts, rows, inner, cols))
  return f"{kind} E{e} {m}x{k}x{n}"


def _timed_dims(experts: int, rows: int, inner: int, cols: int) -> list[int]:
  """The sizes timed for a class, capped at ``_MAX_TIMED_FLOPS``: first fewer batch entries,
  down to four per core (the kernel shares entries, not columns, out over its threads from
  there on), then the largest of the other sizes halved."""
  dims = [experts, rows, inner, cols]
  flops = lambda: 2 * math.prod(dims)
  while flops() > _MAX_TIMED_FLOPS and dims[0] >= 8 * (os.cpu_count() or 1):
    dims[0] //= 2
  while flops() > _MAX_TIMED_FLOPS:
    largest = 1 + int(np.argmax(dims[1:]))
    dims[largest] //= 2
  return dims


def _measured(kind: str, experts: int, rows: int, inner: int, cols: int) -> str:
  """The implementation autotune.py chooses for one GEMM's class (measured on first use)."""
  key = shape_class(kind, experts, rows, inner, cols)
  dims = [_bucket(s) for s in (experts, rows, inner, cols)]
  if 0 in dims:
    return XLA  # nothing to multiply
  trans_a, trans_b = _TRANS[kind]

  def make_args():
    e, m, k, n = _timed_dims(*dims)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((e, k, m) if trans_a else (e, m, k), dtype=np.float32)
    b = rng.standard_normal((e, n, k) if trans_b else (e, k, n), dtype=np.float32)
    return jnp.asarray(a), jnp.asarray(b)

  candidates = {impl: functools.partial(dot, trans_a=trans_a, trans_b=trans_b)
                for impl, dot in _DOTS.items()}
  return autotune.choose(key, candidates, make_args, baseline=XLA)


def gemm_sizes(x_ECI, w_EIO) -> dict[str, tuple[int, int, int, int]]:
  """(experts, rows, inner, cols) of each GEMM of ``expert_matmul(x_ECI, w_EIO)``."""
  e, c, i = x_ECI.shape
  o = w_EIO.shape[2]
  return {"forward": (e, c, i, o), "input_grad": (e, c, o, i), "weight_grad": (e, i, c, o)}


def choose(x_ECI, w_EIO, cpu_kernel: bool = True) -> GemmChoice:
  """The implementations ``expert_matmul`` uses for operands of these shapes and dtypes (arrays,
  tracers or ``jax.ShapeDtypeStruct``s), measuring the classes not yet measured here."""
  if not (cpu_kernel and x_ECI.dtype == w_EIO.dtype and uses_cpu_kernel(x_ECI.dtype)):
    return ALL_XLA
  if cpu_gemm_setting() == "1":
    return ALL_BLAS
  return GemmChoice(**{kind: _measured(kind, *sizes)
                       for kind, sizes in gemm_sizes(x_ECI, w_EIO).items()})


_LOGS: list[list[GemmChoice]] = []


@contextlib.contextmanager
def recorded_choices():
  """Yields a list that collects the choice of every ``expert_matmul(..., cpu_kernel=True)``
  traced inside the block (for reports of what ran)."""
  log = []
  _LOGS.append(log)
  try:
    yield log
  finally:
    _LOGS[:] = [other for other in _LOGS if other is not log]


def expert_matmul(x_ECI, w_EIO, cpu_kernel: bool = True):
  """``batched_matmul`` whose forward, input-gradient and weight-gradient GEMMs each run on the
  implementation measured fastest here (``choose``); ``cpu_kernel=False`` keeps XLA's dot
  without measuring (the small overflow blocks of moejax/moe/dispatch/sorted_blocks.py)."""
  choice = choose(x_ECI, w_EIO, cpu_kernel)
  if cpu_kernel:
    for log in _LOGS:
      log.append(choice)
  # Under shard_map both operands of the custom VJP vary alike (kernels_pallas/shard.py): the
  # transpose of the cast sums the gradient of the less varying one (e.g. replicated weights).
  return fixed_expert_matmul(*match_varying(x_ECI, w_EIO), choice)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def fixed_expert_matmul(x_ECI, w_EIO, choice: GemmChoice):
  """``batched_matmul`` with the given implementation of each of its GEMMs."""
  return _DOTS[choice.forward](x_ECI, w_EIO).astype(x_ECI.dtype)


def _fixed_expert_matmul_fwd(x_ECI, w_EIO, choice):
  return fixed_expert_matmul(x_ECI, w_EIO, choice), (x_ECI, w_EIO)


def _fixed_expert_matmul_bwd(choice, residuals, dy_ECO):
  x_ECI, w_EIO = residuals
  dx_ECI = _DOTS[choice.input_grad](dy_ECO, w_EIO, trans_b=True)
  dw_EIO = _DOTS[choice.weight_grad](x_ECI, dy_ECO, trans_a=True)
  return dx_ECI.astype(x_ECI.dtype), dw_EIO.astype(w_EIO.dtype)


fixed_expert_matmul.defvjp(_fixed_expert_matmul_fwd, _fixed_expert_matmul_bwd)


def main(argv: list[str]):
  """Prints the choice and the measured times of every GEMM of the given E x C x I x O."""
  print(f"cache {autotune.cache_path()}; MOEJAX_CPU_GEMM={cpu_gemm_setting()}; "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
  for spec in argv:
    e, c, i, o = (int(s) for s in spec.split("x"))
    x = jax.ShapeDtypeStruct((e, c, i), jnp.float32)
    w = jax.ShapeDtypeStruct((e, i, o), jnp.float32)
    choice = choose(x, w)
    for kind, sizes in gemm_sizes(x, w).items():
      key = shape_class(kind, *sizes)
      seconds = (autotune.lookup(key) or {}).get("seconds", {})
      times = ", ".join(f"{impl} {s * 1e3:.2f} ms" for impl, s in sorted(seconds.items()))
      print(f"{spec:>16} {key:>28}: {getattr(choice, kind):4} ({times or 'not measured'})")


if __name__ == "__main__":
  main(sys.argv[1:])
