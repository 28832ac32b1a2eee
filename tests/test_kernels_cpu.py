"""kernels_cpu.batched_gemm: the OpenBLAS batched GEMM behind the experts' matmuls on XLA:CPU."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_cpu import batched_gemm as bg
from moejax.moe.experts import expert_matmul
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu" or not bg.available(),
                                reason="a CPU kernel, and it could be built here")

_EINSUM = {(False, False): "eij,ejk->eik", (False, True): "eij,ekj->eik",
           (True, False): "eji,ejk->eik", (True, True): "eji,ekj->eik"}


@pytest.mark.parametrize("trans_a,trans_b", list(_EINSUM))
@pytest.mark.parametrize("experts,rows,inner,cols", [
    (9, 5, 7, 3), (9, 64, 32, 48), (9, 0, 4, 6), (9, 3, 0, 2),
    (1, 5, 7, 200), (2, 33, 16, 1000)])  # few entries: split into blocks of output columns
def test_batched_gemm_matches_einsum(trans_a, trans_b, experts, rows, inner, cols):
  rng = np.random.default_rng(0)
  a = rng.normal(size=(experts, inner, rows) if trans_a else (experts, rows, inner))
  b = rng.normal(size=(experts, cols, inner) if trans_b else (experts, inner, cols))
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  out = jax.jit(lambda a, b: bg.batched_gemm(a, b, trans_a=trans_a, trans_b=trans_b))(a, b)
  expected = np.einsum(_EINSUM[trans_a, trans_b], np.float64(a), np.float64(b))
  assert out.shape == (experts, rows, cols)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


def test_batched_gemm_under_vmap():
  a = jax.random.normal(jax.random.key(0), (3, 4, 5, 6))
  b = jax.random.normal(jax.random.key(1), (3, 4, 6, 2))
  out = jax.vmap(bg.batched_gemm)(a, b)
  np.testing.assert_allclose(out, jnp.einsum("veij,vejk->veik", a, b), rtol=1e-5, atol=1e-5)


def test_batched_gemm_refuses_bad_operands():
  with pytest.raises(ValueError, match="contraction sizes differ"):
    bg.batched_gemm(jnp.ones((2, 3, 4)), jnp.ones((2, 5, 6)))
  with pytest.raises(ValueError, match=r"\[E, rows, cols\]"):
    bg.batched_gemm(jnp.ones((3, 4)), jnp.ones((4, 6)))
  with pytest.raises(ValueError, match="float32"):
    bg.batched_gemm(jnp.ones((2, 3, 4), jnp.bfloat16), jnp.ones((2, 4, 6), jnp.bfloat16))


def _custom_calls(fn, *args) -> int:
  return jax.jit(fn).lower(*args).as_text().count(bg.TARGET)


def test_expert_matmul_runs_every_float32_matmul_on_the_kernel():
  x, w = jnp.ones((4, 8, 16)), jnp.ones((4, 16, 32))
  loss = lambda x, w: jnp.sum(expert_matmul(x, w) ** 2)
  # forward, input gradient, weight gradient
  assert _custom_calls(jax.grad(loss, argnums=(0, 1)), x, w) == 3
  assert _custom_calls(jax.grad(loss, argnums=(0, 1)), x.astype(jnp.bfloat16),
                       w.astype(jnp.bfloat16)) == 0  # XLA's dot
  xla_loss = lambda x, w: jnp.sum(expert_matmul(x, w, False) ** 2)  # the overflow blocks' form
  assert _custom_calls(jax.grad(xla_loss, argnums=(0, 1)), x, w) == 0


def _available_in_subprocess(env: dict) -> tuple[bool, str]:
  code = "from kernels_cpu import batched_gemm; print(batched_gemm.available())"
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120, check=True,
                        env={**os.environ, "PYTHONPATH": str(REPO), **env})
  return proc.stdout.split()[-1] == "True", proc.stderr


def test_falls_back_to_xla_when_disabled_or_unbuildable(tmp_path):
  assert not _available_in_subprocess({"MOEJAX_CPU_GEMM": "0"})[0]
  available, stderr = _available_in_subprocess({"MOEJAX_KERNEL_CACHE": str(tmp_path),
                                                 "CXX": str(tmp_path / "no-compiler")})
  assert not available and "using XLA's dot" in stderr
  assert not list(tmp_path.glob("*.so"))
