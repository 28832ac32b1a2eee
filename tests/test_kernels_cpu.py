"""kernels_cpu: the OpenBLAS batched GEMM and the autotuned choice between it and XLA's dot for
the experts' matmuls on XLA:CPU. No test asserts a timing: the measurement is faked where the
choice matters."""

import functools
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kernels_cpu import autotune
from kernels_cpu import batched_gemm as bg
from kernels_cpu import expert_matmul as em
from moejax.moe.experts import batched_matmul, expert_matmul
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


@pytest.fixture
def tuner(tmp_path, monkeypatch):
  """An empty autotuning cache in tmp_path and a fake ``autotune.measure`` that counts its calls
  and returns ``tuner.seconds``, so the choice is known in advance."""
  monkeypatch.setenv("MOEJAX_KERNEL_CACHE", str(tmp_path))  # the kernel is built already
  monkeypatch.delenv("MOEJAX_CPU_GEMM", raising=False)
  monkeypatch.setattr(autotune, "_MEMORY", {})
  tuner = types.SimpleNamespace(calls=[], seconds={em.BLAS: 1.0, em.XLA: 2.0})

  def fake_measure(candidates, args):
    assert set(candidates) == set(tuner.seconds)
    tuner.calls.append(tuple(a.shape for a in args))
    return dict(tuner.seconds)

  monkeypatch.setattr(autotune, "measure", fake_measure)
  return tuner


def _grad(matmul=expert_matmul):
  return jax.grad(lambda x, w: jnp.sum(matmul(x, w) ** 2), argnums=(0, 1))


_X, _W = jnp.ones((4, 8, 16)), jnp.ones((4, 16, 32))


def test_expert_matmul_measures_each_class_once(tuner):
  assert _custom_calls(_grad(), _X, _W) == 3  # forward, input gradient, weight gradient
  assert len(tuner.calls) == 3
  assert ((4, 8, 16), (4, 16, 32)) in tuner.calls  # the forward's operands, the class's sizes
  # Another shape of the same classes (rows rounded to 8), in memory and then from the file.
  x7 = jnp.ones((4, 7, 16))
  assert _custom_calls(_grad(), x7, _W) == 3
  autotune._MEMORY.clear()  # pylint: disable=protected-access
  assert _custom_calls(_grad(), x7, _W) == 3
  assert len(tuner.calls) == 3
  assert em.shape_class("weight_grad", 4, 16, 7, 32) == "weight_grad E4 16x8x32"


def test_cache_file_round_trips_and_another_fingerprint_misses(tuner, monkeypatch):
  choose = lambda: autotune.choose("op", {"a": None, "b": None}, lambda: (), baseline="b")
  tuner.seconds = {"a": 1.0, "b": 2.0}  # any candidates: the fake measure never runs them
  assert choose() == "a" and len(tuner.calls) == 1
  stored = json.loads(autotune.cache_path().read_text())
  assert stored["fingerprint"] == autotune.fingerprint()
  assert stored["choices"] == {"op": {"impl": "a", "seconds": {"a": 1.0, "b": 2.0}}}
  autotune._MEMORY.clear()  # pylint: disable=protected-access
  assert choose() == "a" and len(tuner.calls) == 1  # read back from the file
  monkeypatch.setenv("OPENBLAS_CORETYPE", "Prescott")  # another machine, for the BLAS
  tuner.seconds = {"a": 2.0, "b": 1.0}
  assert choose() == "b" and len(tuner.calls) == 2
  assert len(list(autotune.cache_path().parent.glob("autotune-*.json"))) == 2
  assert not list(autotune.cache_path().parent.glob("*.tmp"))


def test_the_kernel_must_win_by_a_margin(tuner):
  tuner.seconds = {em.BLAS: 0.97, em.XLA: 1.0}  # 3% faster: noise, XLA stays
  assert _custom_calls(_grad(), _X, _W) == 0
  assert autotune.pick({"blas": 0.9, "xla": 1.0}, "xla") == "blas"


def test_environment_forces_the_choice_without_measuring(tuner, monkeypatch):
  monkeypatch.setenv("MOEJAX_CPU_GEMM", "1")
  assert _custom_calls(_grad(), _X, _W) == 3
  tuner.seconds = {em.BLAS: 2.0, em.XLA: 1.0}  # measured, XLA would win
  monkeypatch.setenv("MOEJAX_CPU_GEMM", "auto")
  assert _custom_calls(_grad(), _X, _W) == 0
  monkeypatch.setenv("MOEJAX_CPU_GEMM", "0")
  monkeypatch.setattr(autotune, "_MEMORY", {})
  assert _custom_calls(_grad(), _X, _W) == 0
  assert len(tuner.calls) == 3  # only the auto run measured
  monkeypatch.setenv("MOEJAX_CPU_GEMM", "yes")
  with pytest.raises(ValueError, match="MOEJAX_CPU_GEMM"):
    expert_matmul(_X, _W)


def test_no_measurement_for_bfloat16_or_the_xla_form(tuner):
  bf16 = _X.astype(jnp.bfloat16), _W.astype(jnp.bfloat16)
  assert _custom_calls(_grad(), *bf16) == 0
  xla_form = lambda x, w: expert_matmul(x, w, False)  # the overflow blocks' form
  assert _custom_calls(_grad(xla_form), _X, _W) == 0
  assert not tuner.calls


@pytest.mark.parametrize("content", [
    "{not json", json.dumps({"choices": {}}), json.dumps({"fingerprint": {"model": "other"},
                                                          "choices": {}})])
def test_corrupt_cache_is_ignored_with_a_warning(tuner, caplog, content):
  path = autotune.cache_path()
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(content)
  assert _custom_calls(_grad(), _X, _W) == 3
  assert "ignoring the autotuning cache" in caplog.text and len(tuner.calls) == 3
  assert len(json.loads(path.read_text())["choices"]) == 3  # rewritten whole


def test_timed_sizes_are_capped():
  dims = em._timed_dims(64, 4096, 1024, 2048)  # pylint: disable=protected-access
  assert 2 * np.prod(dims) <= em._MAX_TIMED_FLOPS  # pylint: disable=protected-access
  assert dims[0] >= min(64, 4 * os.cpu_count())
  assert em._timed_dims(8, 64, 256, 512) == [8, 64, 256, 512]  # pylint: disable=protected-access


@pytest.mark.parametrize("setting,seconds,expected", [
    ("auto", {em.BLAS: 1.0, em.XLA: 2.0}, em.ALL_BLAS),
    ("auto", {em.BLAS: 2.0, em.XLA: 1.0}, em.ALL_XLA),
    ("1", {}, em.ALL_BLAS), ("0", {}, em.ALL_XLA)])
@pytest.mark.parametrize("rows", [0, 5, 64])
def test_expert_matmul_matches_batched_matmul_whichever_runs(tuner, monkeypatch, setting,
                                                             seconds, expected, rows):
  monkeypatch.setenv("MOEJAX_CPU_GEMM", setting)
  tuner.seconds = seconds
  x_ECI = jax.random.normal(jax.random.key(0), (4, rows, 16))
  w_EIO = jax.random.normal(jax.random.key(1), (4, 16, 32))
  loss = lambda matmul, x, w: jnp.sum(jnp.sin(matmul(x, w)))
  with em.recorded_choices() as choices:
    tuned = jax.jit(jax.value_and_grad(functools.partial(loss, expert_matmul), argnums=(0, 1)))
    got = tuned(x_ECI, w_EIO)
  # With no rows there is nothing to time: XLA's dot, unless the kernel is forced.
  assert choices == [expected if rows or setting != "auto" else em.ALL_XLA]
  want = jax.value_and_grad(functools.partial(loss, batched_matmul), argnums=(0, 1))(x_ECI, w_EIO)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_measures_while_tracing_under_scan_and_remat(tmp_path, monkeypatch):
  """The real measurement, from inside jit(grad(nnx.scan(nnx.remat(...)))) as in the LM."""
  monkeypatch.setenv("MOEJAX_KERNEL_CACHE", str(tmp_path))
  monkeypatch.delenv("MOEJAX_CPU_GEMM", raising=False)
  monkeypatch.setattr(autotune, "_MEMORY", {})
  measured, real_measure = [], autotune.measure

  def counting_measure(candidates, args):
    measured.append(real_measure(candidates, args))
    return measured[-1]

  monkeypatch.setattr(autotune, "measure", counting_measure)

  class Layer(nnx.Module):
    def __init__(self, rngs):
      self.w_EIO = nnx.Param(jax.random.normal(rngs.params(), (4, 16, 16)) * 0.25)

  @nnx.vmap(in_axes=0, out_axes=0)
  def make(key):
    return Layer(nnx.Rngs(key))

  layers = make(jax.random.split(jax.random.key(0), 3))

  def forward(layers, x_ECI, matmul):
    def step(x_ECI, layer):
      return jnp.tanh(matmul(x_ECI, layer.w_EIO[...])), None
    scan = nnx.scan(nnx.remat(step), in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    return jnp.sum(scan(x_ECI, layers)[0])

  x_ECI = jax.random.normal(jax.random.key(1), (4, 8, 16))
  grad = lambda matmul: nnx.jit(nnx.grad(lambda l, x: forward(l, x, matmul)))(layers, x_ECI)
  tuned, reference = grad(expert_matmul), grad(batched_matmul)
  assert len(measured) == 3 and all(set(s) == {em.BLAS, em.XLA} for s in measured)
  for a, b in zip(jax.tree.leaves(nnx.state(tuned)), jax.tree.leaves(nnx.state(reference))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert len(json.loads(autotune.cache_path().read_text())["choices"]) == 3


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
