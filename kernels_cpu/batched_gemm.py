"""Batched float32 GEMM on XLA:CPU computed by the BLAS that SciPy ships (OpenBLAS).

``batched_gemm(a, b, trans_a=False, trans_b=False)`` is out[e] = op(a[e]) @ op(b[e]) for
[E, rows, cols] float32 operands, as an XLA FFI custom call (batched_gemm.cc). It exists for the
grouped matmuls of MoE experts: many small matmuls, each with its own weights (64-256 rows per
expert). Whether it beats XLA's dot depends on the machine: 1.1-1.4x faster than XLA's
batched dot on a 2-core AVX2 box, but it ran the dense FFN 1.8x slower than XLA on an AVX-512
AMD EPYC (OPENBLAS_CORETYPE=Haswell, XLA's dot ~430 GFLOP/s). So expert_matmul.py uses it only
for the shapes where autotune.py measured it faster.

The C++ handler is compiled with the system's C++ compiler on first use (about 4 s) into
``$MOEJAX_KERNEL_CACHE`` (default ~/.cache/moejax/kernels), keyed by the source and jaxlib
version, and takes the address of ``sgemm`` from ``scipy.linalg.cython_blas``. ``available()``
is False, and callers fall back to XLA's dot, where there is no compiler, where the build
fails (a warning says why) or where ``MOEJAX_CPU_GEMM=0``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib

from kernels_pallas.shard import match_varying

TARGET = "moejax_batched_gemm"
SOURCE = pathlib.Path(__file__).with_name("batched_gemm.cc")


def cache_dir() -> pathlib.Path:
  """Where the built kernel and the autotuning choices live."""
  default = pathlib.Path.home() / ".cache" / "moejax" / "kernels"
  return pathlib.Path(os.environ.get("MOEJAX_KERNEL_CACHE", default))


def _build() -> pathlib.Path:
  """Compiles the handler (once per source and jaxlib version) and returns the library."""
  source = SOURCE.read_bytes()
  key = hashlib.sha256(source + jaxlib.__version__.encode()).hexdigest()[:16]
  library = cache_dir() / f"batched_gemm-{key}.so"
  if library.exists():
    return library
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if not compiler:
    raise RuntimeError("no C++ compiler found (set CXX)")
  library.parent.mkdir(parents=True, exist_ok=True)
  # Build beside the target, then rename: parallel sweep workers never load a partial file.
  with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
    partial = pathlib.Path(tmp) / library.name
    command = [compiler, "-O2", "-shared", "-fPIC", "-std=c++17", "-w",
               f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(partial)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
      raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    os.replace(partial, library)
  return library


def _sgemm_address() -> int:
  """The address of SciPy's BLAS sgemm (the Fortran interface, 32-bit integers)."""
  from scipy.linalg import cython_blas  # pylint: disable=import-outside-toplevel
  capsule = cython_blas.__pyx_capi__["sgemm"]  # pylint: disable=no-member
  name = ctypes.pythonapi.PyCapsule_GetName
  name.restype, name.argtypes = ctypes.c_char_p, [ctypes.py_object]
  pointer = ctypes.pythonapi.PyCapsule_GetPointer
  pointer.restype, pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
  return pointer(capsule, name(capsule))


@functools.cache
def available() -> bool:
  """Builds and registers the kernel once per process; False (callers use XLA's dot) when
  disabled by ``MOEJAX_CPU_GEMM=0`` or when it cannot be built."""
  if os.environ.get("MOEJAX_CPU_GEMM", "1") == "0":
    return False
  try:
    library = ctypes.cdll.LoadLibrary(str(_build()))
    library.moejax_set_sgemm.argtypes = [ctypes.c_void_p]
    library.moejax_set_sgemm.restype = ctypes.c_bool
    if not library.moejax_set_sgemm(_sgemm_address()):
      raise RuntimeError("could not make SciPy's BLAS single-threaded (its spinning threads "
                         "would slow XLA's)")
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.MoejaxBatchedGemm),
                                platform="cpu")
  except (OSError, RuntimeError, ImportError, KeyError) as error:
    logging.warning("moejax: the CPU batched GEMM kernel is unavailable, using XLA's dot: %s",
                    error)
    return False
  return True


def batched_gemm(a, b, *, trans_a: bool = False, trans_b: bool = False):
  """out[e] = op(a[e]) @ op(b[e]) on XLA:CPU, for float32 [E, ., .] operands."""
  if not available():
    raise RuntimeError("the CPU batched GEMM kernel is unavailable (see the warning above)")
  if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0]:
    raise ValueError(f"batched_gemm takes [E, rows, cols] operands, got {a.shape} and {b.shape}")
  if a.dtype != jnp.float32 or b.dtype != jnp.float32:
    raise ValueError(f"batched_gemm takes float32 operands, got {a.dtype} and {b.dtype}")
  rows, inner = (a.shape[2], a.shape[1]) if trans_a else (a.shape[1], a.shape[2])
  inner_b, cols = (b.shape[2], b.shape[1]) if trans_b else (b.shape[1], b.shape[2])
  if inner != inner_b:
    raise ValueError(f"batched_gemm: contraction sizes differ, {a.shape} and {b.shape} "
                     f"(trans_a={trans_a}, trans_b={trans_b})")
  out = jax.ShapeDtypeStruct((a.shape[0], rows, cols), a.dtype)
  call = jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")
  # Under shard_map the result varies over the mesh axes its operands vary over (an FFI call
  # cannot declare it; kernels_pallas/shard.py).
  return match_varying(call(a, b, trans_a=trans_a, trans_b=trans_b), a, b)[0]
