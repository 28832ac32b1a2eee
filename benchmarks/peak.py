"""The reference for MFU: measured f32 matmul throughput of the default device."""

import time

import jax
import jax.numpy as jnp


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
  """Best-of f32 matmul throughput (GFLOP/s); on a shared machine, measure it more than once
  and keep the larger value."""
  a = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best / 1e9
