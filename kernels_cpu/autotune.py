"""Chooses between implementations of one operation by timing them on this machine, once.

``choose(shape_class, candidates, make_args, baseline=...)`` returns the name of the fastest
candidate for a shape class, measured the first time the class is seen and then cached, in
memory and in a JSON file under the kernel cache directory (``$MOEJAX_KERNEL_CACHE``, default
~/.cache/moejax/kernels) named after a fingerprint of the machine: the CPU, the cores this
process may use, the BLAS and XLA settings in the environment, the jax/jaxlib/SciPy versions
and the kernel sources. Which GEMM is faster depends on them (the OpenBLAS kernel ran
1.1-1.4x faster than XLA's dot on one machine and 1.8x slower on another), so a choice made on
one machine is never reused on another.

A candidate other than the baseline wins only when it is more than ``margin`` faster: a tie or
a noisy measurement keeps the baseline. The timing runs on a fresh thread, outside any trace of
the caller, so ``choose`` may be called while tracing (under jit, grad, scan, remat).
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import logging
import os
import pathlib
import platform
import tempfile
import time
from typing import Callable

import jax
import jaxlib
import numpy as np

from kernels_cpu import batched_gemm

MARGIN = 0.05  # a candidate must beat the baseline by more than this fraction of its time
_BUDGET_S = 0.25  # timed calls of one measurement, all candidates together (after warm-up)
_MIN_REPEATS, _MAX_REPEATS = 5, 15
# Environment read by the BLAS or by XLA:CPU when they start: each can change the winner.
_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OPENBLAS_DEFAULT_NUM_THREADS",
        "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "XLA_FLAGS")

# Choices loaded or measured in this process, by cache file (that is, by fingerprint).
_MEMORY: dict[pathlib.Path, dict[str, dict]] = {}


@functools.cache
def _machine() -> dict:
  """The parts of the fingerprint fixed for the process: the CPU model and vector extensions
  (the model name alone can be just "AMD EPYC"), library versions, the kernel source."""
  import scipy  # pylint: disable=import-outside-toplevel  (it ships the kernel's BLAS)
  model, flags = platform.processor() or platform.machine(), []
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      for line in cpuinfo:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          model = value.strip()
        elif key.strip() == "flags":
          flags = sorted(f for f in value.split() if f.startswith(("avx", "amx", "fma")))
          break  # the first processor's block describes them all
  except OSError:
    pass
  return {"model": model, "isa": flags, "cpu_count": os.cpu_count(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "scipy": scipy.__version__,
          "kernel": hashlib.sha256(batched_gemm.SOURCE.read_bytes()).hexdigest()[:16]}


def fingerprint() -> dict:
  """What a measurement depends on besides the shapes (see the module docstring)."""
  usable = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count())
  return {**_machine(), "usable_cores": usable,
          "env": {name: os.environ[name] for name in _ENV if name in os.environ}}


def cache_path(stamp: dict | None = None) -> pathlib.Path:
  """The JSON file holding this machine's choices."""
  stamp = fingerprint() if stamp is None else stamp
  key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]
  return batched_gemm.cache_dir() / f"autotune-{key}.json"


def measure(candidates: dict[str, Callable], args: tuple) -> dict[str, float]:
  """Median seconds per call of each jitted candidate on ``args``, after one compiling and one
  warm-up call each; the candidates alternate within a round and swap order every round, so a
  load change on a shared machine hits them alike."""
  fns = {name: jax.jit(fn) for name, fn in candidates.items()}

  def seconds(fn):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start

  for fn in fns.values():
    jax.block_until_ready(fn(*args))  # compile
  first = sum(seconds(fn) for fn in fns.values())
  repeats = int(np.clip(_BUDGET_S / max(first, 1e-9), _MIN_REPEATS, _MAX_REPEATS))
  names, samples = list(fns), {name: [] for name in fns}
  for round_ in range(repeats):
    for name in names if round_ % 2 == 0 else names[::-1]:
      samples[name].append(seconds(fns[name]))
  return {name: float(np.median(times)) for name, times in samples.items()}


def _measure_outside_trace(candidates, make_args) -> dict[str, float]:
  """``measure`` on a fresh thread: its jax calls see no trace of the caller and run."""
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    return pool.submit(lambda: measure(candidates, make_args())).result()


def pick(seconds: dict[str, float], baseline: str, margin: float = MARGIN) -> str:
  """The fastest candidate if it beats the baseline by more than ``margin``, else the baseline."""
  best = min(seconds, key=seconds.get)
  return best if seconds[best] * (1 + margin) < seconds[baseline] else baseline


def _read(path: pathlib.Path, stamp: dict) -> dict[str, dict]:
  """The choices stored at ``path`` for the fingerprint ``stamp``; {} with a warning if the file
  is unreadable or was written for another fingerprint."""
  if not path.exists():
    return {}
  try:
    stored = json.loads(path.read_text(encoding="utf-8"))
    if stored["fingerprint"] != stamp:
      raise ValueError("written for another fingerprint")
    choices = stored["choices"]
    if not all(isinstance(r, dict) and isinstance(r.get("impl"), str) for r in choices.values()):
      raise ValueError("a choice without an implementation")
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
    logging.warning("moejax: ignoring the autotuning cache %s (%s); measuring again", path,
                    error)
    return {}
  return choices


def _write(path: pathlib.Path, shape_class: str, record: dict, stamp: dict):
  """Adds one choice to the file: re-read, merge, write a temporary file, rename. Parallel
  workers never see a partial file; of two simultaneous writes one entry may be lost and is
  measured again later."""
  partial = None
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    choices = {**_read(path, stamp), shape_class: record}
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False,
                                     encoding="utf-8") as partial:
      json.dump({"fingerprint": stamp, "choices": choices}, partial, indent=1, sort_keys=True)
    os.replace(partial.name, path)
  except OSError as error:
    logging.warning("moejax: could not write the autotuning cache %s: %s", path, error)
    if partial is not None:
      pathlib.Path(partial.name).unlink(missing_ok=True)


def _choices(stamp: dict) -> tuple[pathlib.Path, dict[str, dict]]:
  """This fingerprint's cache file and its choices, read once per process."""
  path = cache_path(stamp)
  if path not in _MEMORY:
    _MEMORY[path] = _read(path, stamp)
  return path, _MEMORY[path]


def lookup(shape_class: str) -> dict | None:
  """The record of a class on this machine ({"impl", "seconds"}), None if not measured."""
  return _choices(fingerprint())[1].get(shape_class)


def choose(shape_class: str, candidates: dict[str, Callable], make_args: Callable[[], tuple],
           *, baseline: str, margin: float = MARGIN) -> str:
  """The name of the candidate to use for ``shape_class`` on this machine.

  Args:
    shape_class: the cache key; every shape it stands for should run at the same relative speed.
    candidates: name -> function of the arguments (each is jitted for timing).
    make_args: builds concrete example arguments of the class (called only to measure).
    baseline: the candidate kept unless another is more than ``margin`` faster.
  """
  stamp = fingerprint()
  path, choices = _choices(stamp)
  record = choices.get(shape_class)
  if record is None or record["impl"] not in candidates:
    try:
      seconds = _measure_outside_trace(candidates, make_args)
    except Exception as error:  # pylint: disable=broad-except  (a failing candidate loses)
      logging.warning("moejax: could not time %s (%s); using %s", shape_class, error, baseline)
      choices[shape_class] = {"impl": baseline, "error": str(error)}  # not stored on disk
      return baseline
    record = {"impl": pick(seconds, baseline, margin),
              "seconds": {name: float(f"{s:.4g}") for name, s in seconds.items()}}
    choices[shape_class] = record
    _write(path, shape_class, record, stamp)
  return record["impl"]
