"""The reference for MFU: measured matmul throughput of the default device."""

import time

import jax
import jax.numpy as jnp


def matmul_peak_gflops(n: int = 2048, repeats: int = 10, dtype="float32") -> float:
  """Best-of matmul throughput (GFLOP/s) in ``dtype``; on a shared machine, measure it more
  than once and keep the larger value. On an accelerator n grows to 8192 (a 2048 matmul takes
  microseconds there, dominated by launch cost)."""
  if jax.default_backend() != "cpu":
    n = max(n, 8192)
  a = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best / 1e9
