"""Training: the loss falls, outputs follow the workdir contract, resume is exact after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from moejax.training.logging import read_jsonl
from moejax.training.trainer import train
from tests.conftest import REPO

RESUME_STEPS = 120
RESUME_FLAGS = [f"--config.train.steps={RESUME_STEPS}", "--config.train.log_every=1",
                "--config.train.checkpoint_every=20", "--config.train.progress_bar=False"]


def smoke(smoke_config, **train_overrides):
  config = smoke_config
  config.train.update(progress_bar=False, **train_overrides)
  return config


def test_loss_falls_and_workdir_contract(smoke_config, tmp_path):
  config = smoke(smoke_config, steps=60, log_every=5)
  results = train(config, str(tmp_path))
  rows = read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows] == list(range(5, 61, 5))
  assert {"loss", "load_balance_loss", "router_z_loss", "grad_norm", "learning_rate",
          "tokens_per_s"} <= set(rows[0])
  assert rows[-1]["loss"] < rows[0]["loss"] - 0.5, [r["loss"] for r in rows]
  assert results["eval_loss"] < rows[0]["loss"] - 0.5
  for name in ("config.json", "eval.json"):
    assert (tmp_path / name).exists()
  assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))
  assert json.loads((tmp_path / "eval.json").read_text())["total_params"] > 0
  assert sorted(os.listdir(tmp_path / "checkpoints"))[-1] == "60"


def _train_cmd(workdir):
  return [sys.executable, "-m", "experiments.train", "--config=configs/lm_moe.py:smoke",
          f"--workdir={workdir}", *RESUME_FLAGS]


def _losses(workdir):
  return {row["step"]: row["loss"] for row in read_jsonl(os.path.join(workdir, "metrics.jsonl"))}


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  subprocess.run(_train_cmd(straight), cwd=REPO, env=env, check=True, capture_output=True,
                 timeout=600)
  proc = subprocess.Popen(_train_cmd(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  # Kill mid-run: after at least two checkpoints, between checkpoint steps.
  while max(_losses(killed), default=0) < 50 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps_before_kill = max(_losses(killed), default=0)
  assert 50 <= steps_before_kill < RESUME_STEPS, "the run ended before it could be killed"
  subprocess.run(_train_cmd(killed), cwd=REPO, env=env, check=True, capture_output=True,
                 timeout=600)
  expected, resumed = _losses(straight), _losses(killed)
  assert sorted(resumed) == list(range(1, RESUME_STEPS + 1))
  assert resumed == expected  # bit for bit: exact float equality at every step
  # Resumed from the newest *complete* checkpoint (a save in flight at the kill is ignored).
  resumed_from = json.loads((killed / "eval.json").read_text())["resumed_from_step"]
  assert resumed_from % 20 == 0 and 0 < resumed_from <= steps_before_kill


def test_different_config_on_existing_workdir_is_refused(smoke_config, tmp_path):
  from moejax.validation import ConfigError  # pylint: disable=import-outside-toplevel
  train(smoke(smoke_config, steps=10, checkpoint_every=5), str(tmp_path))
  before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
  changed = smoke(smoke_config, steps=10, checkpoint_every=5)
  changed.model.moe.num_experts = 8
  with pytest.raises(ConfigError, match="config.model.moe.num_experts: 4 -> 8"):
    train(changed, str(tmp_path))
  assert before == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}


def test_finished_run_is_not_retrained(smoke_config, tmp_path):
  config = smoke(smoke_config, steps=10, checkpoint_every=5)
  first = train(config, str(tmp_path))
  again = train(config, str(tmp_path))
  assert again["resumed_from_step"] == 10
  assert again["eval_loss"] == first["eval_loss"]
