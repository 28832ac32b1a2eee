"""moejax.host_memory: freed host memory is reused instead of page-faulted in every step."""

import platform
import subprocess
import sys

import pytest

from tests.conftest import REPO

# The weight gradient of a batched matmul, [64, 256, 512] float32 (32 MiB, the size of an MoE
# layer's expert weights), computed 10 times after warm-up; prints the minor page faults.
_PROBE = """
import resource
from moejax.host_memory import keep_freed_host_memory
applied = keep_freed_host_memory()
import jax, jax.numpy as jnp
loss = lambda x, w: jnp.sum(jnp.tanh(jnp.einsum("eci,eio->eco", x, w)))
grad = jax.jit(jax.grad(loss, argnums=1))
x, w = jnp.ones((64, 64, 256)), jnp.ones((64, 256, 512))
for _ in range(3):
  grad(x, w).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  grad(x, w).block_until_ready()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(keep: str) -> tuple[bool, int]:
  env = {"PYTHONPATH": str(REPO), "MOEJAX_KEEP_HOST_MEMORY": keep, "JAX_PLATFORMS": "cpu",
         "TF_CPP_MIN_LOG_LEVEL": "3"}
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_kept_host_memory_removes_the_page_faults_of_large_buffers():
  applied, faults = _probe("1")
  not_applied, faults_default = _probe("0")
  assert applied and not not_applied
  pages = 10 * 32 * 2 ** 20 // 4096  # ten fresh 32 MiB gradients
  assert faults_default > pages // 2, faults_default  # glibc's default: a fresh mmap each
  assert faults < pages // 4, faults  # at most the heap's growth to its peak
