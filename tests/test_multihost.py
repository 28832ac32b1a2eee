"""Two processes on loopback (gloo CPU collectives) train like one process on one device."""

import os
import socket
import subprocess
import sys

import pytest

from moejax.training.logging import read_jsonl
from moejax.training.trainer import train
from tests.conftest import REPO

STEPS = 8
FLAGS = [f"--config.train.steps={STEPS}", "--config.train.log_every=1",
         "--config.train.checkpoint_every=4", "--config.train.progress_bar=False"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_device(smoke_config, tmp_path):
  smoke_config.train.update(steps=STEPS, log_every=1, checkpoint_every=4, progress_bar=False)
  single = train(smoke_config, str(tmp_path / "single"))
  workdir, port = tmp_path / "multi", _free_port()
  env = {**os.environ, "PYTHONPATH": str(REPO),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "experiments.train", "--config=configs/lm_moe.py:smoke",
       f"--workdir={workdir}", f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}", *FLAGS], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  single_losses = [r["loss"] for r in read_jsonl(tmp_path / "single" / "metrics.jsonl")]
  multi_losses = [r["loss"] for r in read_jsonl(workdir / "metrics.jsonl")]
  assert len(multi_losses) == STEPS
  for a, b in zip(single_losses, multi_losses):
    assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (single_losses, multi_losses)
  assert sorted(os.listdir(workdir / "checkpoints"))[-1] == str(STEPS)
  assert abs(single["eval_loss"] - float(outputs[0][0].strip().splitlines()[-1].split(
      '"eval_loss": ')[1].split(",")[0])) <= 1e-5 * single["eval_loss"]
