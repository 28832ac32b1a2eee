"""moejax.host_memory: freed host memory is reused instead of page-faulted in every step."""

import platform
import statistics
import subprocess
import sys

import pytest

from tests.conftest import REPO

# The weight gradient of a batched matmul, [64, 256, 512] float32 (32 MiB, the size of an MoE
# layer's expert weights), computed 20 times; prints the minor page faults of each call.
_PROBE = """
import resource
from moejax.host_memory import keep_freed_host_memory
applied = keep_freed_host_memory()
import jax, jax.numpy as jnp
loss = lambda x, w: jnp.sum(jnp.tanh(jnp.einsum("eci,eio->eco", x, w)))
grad = jax.jit(jax.grad(loss, argnums=1))
x, w = jnp.ones((64, 64, 256)), jnp.ones((64, 256, 512))
faults = []
for _ in range(20):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  grad(x, w).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, *faults)
"""


def _probe(keep: str) -> tuple[bool, list[int]]:
  env = {"PYTHONPATH": str(REPO), "MOEJAX_KEEP_HOST_MEMORY": keep, "JAX_PLATFORMS": "cpu",
         "TF_CPP_MIN_LOG_LEVEL": "3"}
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout.split()
  return out[0] == "True", [int(n) for n in out[1:]]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_kept_host_memory_removes_the_page_faults_of_large_buffers():
  applied, faults = _probe("1")
  not_applied, faults_default = _probe("0")
  assert applied and not not_applied
  pages = 32 * 2 ** 20 // 4096  # one fresh 32 MiB gradient
  # glibc's default mmaps every call's gradient afresh. With the setting the heap grows to its
  # peak in the first calls (how many varies with thread timing: 1 to 7 of 20 here), and the
  # typical call after that reuses it without a fault.
  assert statistics.median(faults_default) > pages // 2, faults_default
  assert statistics.median(faults) < pages // 8, faults
