"""Two processes on loopback (gloo CPU collectives) train like one process on one device."""

import os
import signal
import socket
import subprocess
import sys
import time

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


def launch(workdir, *flags: str) -> list[subprocess.Popen]:
  """Two training processes of the smoke preset on loopback, 2 fake CPU devices each."""
  port = _free_port()
  env = {**os.environ, "PYTHONPATH": str(REPO),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  return [subprocess.Popen(
      [sys.executable, "-m", "experiments.train", "--config=configs/lm_moe.py:smoke",
       f"--workdir={workdir}", f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}", *FLAGS, *flags], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
  from configs import lm_moe  # pylint: disable=import-outside-toplevel
  config = lm_moe.get_config("smoke")
  config.train.update(steps=STEPS, log_every=1, checkpoint_every=4, progress_bar=False)
  workdir = tmp_path_factory.mktemp("single")
  return train(config, str(workdir)), [r["loss"] for r in read_jsonl(workdir / "metrics.jsonl")]


@pytest.mark.slow
def test_expert_axis_across_two_processes_matches_one_device(single_device_run, tmp_path):
  """The 4 experts on a mesh (expert 4) spanning both processes: tokens cross processes in the
  all-to-all (gloo); the losses are one device's within float32 reordering (1e-5 relative)."""
  procs = launch(tmp_path / "ep", "--config.mesh.data=1", "--config.mesh.expert=4")
  outputs = [p.communicate(timeout=600) for p in procs]
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  losses = [r["loss"] for r in read_jsonl(tmp_path / "ep" / "metrics.jsonl")]
  assert len(losses) == STEPS
  for a, b in zip(single_device_run[1], losses):
    assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (single_device_run[1], losses)


@pytest.mark.slow
def test_two_processes_match_one_device(single_device_run, tmp_path):
  single = single_device_run[0]
  workdir = tmp_path / "multi"
  procs = launch(workdir)
  outputs = [p.communicate(timeout=600) for p in procs]
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  single_losses = single_device_run[1]
  multi_losses = [r["loss"] for r in read_jsonl(workdir / "metrics.jsonl")]
  assert len(multi_losses) == STEPS
  for a, b in zip(single_losses, multi_losses):
    assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (single_losses, multi_losses)
  assert sorted(os.listdir(workdir / "checkpoints"))[-1] == str(STEPS)
  assert abs(single["eval_loss"] - float(outputs[0][0].strip().splitlines()[-1].split(
      '"eval_loss": ')[1].split(",")[0])) <= 1e-5 * single["eval_loss"]


@pytest.mark.slow
def test_a_killed_process_is_reported_not_waited_for(tmp_path):
  """Process 1 is killed once training is set up; process 0 must exit within the heartbeat
  timeout (10 s here) plus a margin, with JAX's error naming the lost task, not hang in a
  collective."""
  workdir = tmp_path / "killed"
  procs = launch(workdir, "--config.train.steps=2000", "--config.mesh.data=1",
                 "--config.mesh.expert=4", "--peer_timeout_s=10")
  deadline = time.time() + 600
  while not (workdir / "checkpoints").exists() and time.time() < deadline:
    time.sleep(0.5)
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  try:
    _, err = procs[0].communicate(timeout=120)  # raises TimeoutExpired on a hang
  finally:
    procs[0].kill()
    procs[1].communicate()
  print(f"the surviving process exited {time.time() - killed_at:.1f} s after the kill")
  assert procs[0].returncode != 0
  assert "stopped sending heartbeats" in err and "another task died" in err, err[-3000:]
