"""Shared test setup: quiet logs, a persistent XLA cache shared with subprocesses, helpers."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_CACHE = os.environ.setdefault("MOEJAX_COMPILATION_CACHE",
                               os.path.join(tempfile.gettempdir(), "moejax-test-xla-cache"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402  (after the environment is set)

jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run_module(module: str, *args: str, env: dict | None = None, timeout: float = 300,
               check: bool = True) -> subprocess.CompletedProcess:
  """Runs ``python -m module args`` from the repo root and returns the completed process."""
  full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


@pytest.fixture
def smoke_config():
  from configs import lm_moe  # pylint: disable=import-outside-toplevel
  return lm_moe.get_config("smoke")


def built_counts(model, moe) -> tuple[int, int]:
  """(total, active) parameters of a built (or ``nnx.eval_shape``d) model: every parameter,
  less the routers and the share (E - k) / E of the experts (``moe``: its MoE config)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  flat = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  total = sum(v.size for v in flat.values())
  router = sum(v.size for k, v in flat.items() if "/router/" in k)
  experts = sum(v.size for k, v in flat.items() if "/experts/" in k)
  return total, total - router - experts * (moe.num_experts - moe.top_k) // moe.num_experts
