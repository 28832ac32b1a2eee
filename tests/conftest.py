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


def _train_cmd(config: str, workdir, steps: int) -> list[str]:
  return [sys.executable, "-m", "experiments.train", f"--config={config}",
          f"--workdir={workdir}", f"--config.train.steps={steps}", "--config.train.log_every=1",
          "--config.train.checkpoint_every=10", "--config.train.progress_bar=False"]


def logged_losses(workdir) -> dict[int, float]:
  """step -> loss of a run's metrics.jsonl (empty before the first log line)."""
  from moejax.training.logging import read_jsonl  # pylint: disable=import-outside-toplevel
  return {row["step"]: row["loss"] for row in read_jsonl(os.path.join(workdir, "metrics.jsonl"))}


def train_straight_and_killed(config: str, tmp_path, steps: int = 60, kill_at: int = 25):
  """Trains ``config`` for ``steps`` once straight through, and once SIGKILLed after step
  ``kill_at`` and re-run with the same command; asserts that the loss falls and that the
  resumed run logs the same loss bit for bit at every step. Returns the two run directories."""
  import signal  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  subprocess.run(_train_cmd(config, straight, steps), cwd=REPO, env=env, check=True,
                 capture_output=True, timeout=600)
  losses = logged_losses(straight)
  first, last = [losses[s] for s in range(1, 11)], [losses[s] for s in range(steps - 9, steps + 1)]
  assert sum(last) < sum(first)
  proc = subprocess.Popen(_train_cmd(config, killed, steps), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while (max(logged_losses(killed), default=0) < kill_at and proc.poll() is None
         and time.time() < deadline):
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert kill_at <= max(logged_losses(killed), default=0) < steps, "ended before it was killed"
  subprocess.run(_train_cmd(config, killed, steps), cwd=REPO, env=env, check=True,
                 capture_output=True, timeout=600)
  assert logged_losses(killed) == losses  # bit for bit at every step
  return straight, killed
