"""A damaged newest checkpoint: restore falls back to the newest intact one with a one-line
warning naming the bad step (kept on disk), and fails with one line when none is intact; on one
device and on a (data 4, fsdp 2) mesh of 8 fake CPU devices."""

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from configs import lm_moe
from moejax.training.checkpointing import CheckpointError
from moejax.training.restore import restore_run
from moejax.training.trainer import train
from tests.conftest import run_module

STEPS, EVERY = 30, 10
TRAIN_FLAGS = ["--config=configs/lm_moe.py:smoke", f"--config.train.steps={STEPS}",
               f"--config.train.checkpoint_every={EVERY}", "--config.train.progress_bar=False"]


def _data_files(step_dir: Path) -> list[Path]:
  """The files holding the arrays' bytes (orbax OCDBT data files)."""
  files = sorted(p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d")
  assert files, f"no OCDBT data files under {step_dir}"
  return files


def _truncate(step_dir: Path) -> None:
  for path in _data_files(step_dir):
    os.truncate(path, path.stat().st_size // 2)


def _remove(step_dir: Path) -> None:
  for path in _data_files(step_dir):
    path.unlink()


def _garble(step_dir: Path) -> None:
  rng = random.Random(0)
  for path in _data_files(step_dir):
    path.write_bytes(rng.randbytes(path.stat().st_size))


DAMAGE = {"truncated": _truncate, "missing": _remove, "garbage": _garble}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  config = lm_moe.get_config("smoke")
  config.train.update(steps=STEPS, checkpoint_every=EVERY, progress_bar=False)
  workdir = tmp_path_factory.mktemp("finished") / "run"
  results = train(config, str(workdir))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20", "30"]
  return config, workdir, results


def _copy(run: Path, tmp_path: Path) -> Path:
  target = tmp_path / "run"
  shutil.copytree(run, target)
  return target


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_restore_falls_back_to_the_newest_intact_step(finished_run, damage, tmp_path, capfd):
  _, pristine, _ = finished_run
  run = _copy(pristine, tmp_path)
  DAMAGE[damage](run / "checkpoints" / "30")
  before = sorted(p.name for p in (run / "checkpoints" / "30").rglob("*"))
  restored = restore_run(str(run))
  assert restored.step == 20 and int(restored.state.step) == 20
  warnings = capfd.readouterr().err.strip().splitlines()
  assert len(warnings) == 2, warnings
  assert warnings[0].startswith("warning: checkpoint step 30 of ") and "Traceback" not in \
      "".join(warnings)
  assert warnings[1].startswith("warning: restored step 20")
  # restore_run only reads: the damaged step stays where it was, as it was.
  assert sorted(p.name for p in (run / "checkpoints" / "30").rglob("*")) == before


def test_training_resumes_from_the_intact_step_and_sets_the_damaged_one_aside(
    finished_run, tmp_path, capfd):
  config, pristine, first = finished_run
  run = _copy(pristine, tmp_path)
  _truncate(run / "checkpoints" / "30")
  again = train(config, str(run))
  assert again["resumed_from_step"] == 20
  assert again["eval_loss"] == first["eval_loss"]  # resume is exact
  assert sorted(os.listdir(run / "checkpoints")) == ["10", "20", "30", "30.damaged"]
  assert "kept for inspection: " + str(run / "checkpoints" / "30.damaged") in capfd.readouterr().err
  assert restore_run(str(run)).step == 30  # the step saved again restores


def test_no_intact_checkpoint_is_one_line(finished_run, tmp_path):
  _, pristine, _ = finished_run
  run = _copy(pristine, tmp_path)
  for step, damage in zip(("10", "20", "30"), (_truncate, _remove, _garble)):
    damage(run / "checkpoints" / step)
  with pytest.raises(CheckpointError, match="steps 30, 20, 10 all fail to restore"):
    restore_run(str(run))
  proc = run_module("experiments.train", *TRAIN_FLAGS, f"--workdir={run}", check=False)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert [line.split(" of ")[0] for line in lines[:3]] == [
      f"warning: checkpoint step {s}" for s in (30, 20, 10)], lines
  assert lines[3:] == [f"checkpoint error: no intact checkpoint under {run / 'checkpoints'}: "
                       "steps 30, 20, 10 all fail to restore"], lines
  assert sorted(os.listdir(run / "checkpoints")) == ["10", "20", "30"]  # nothing renamed


@pytest.mark.slow
def test_fallback_on_a_mesh_of_eight_devices(tmp_path):
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  flags = [*TRAIN_FLAGS, "--config.mesh.data=4", "--config.mesh.fsdp=2", f"--workdir={tmp_path}"]
  first = json.loads(run_module("experiments.train", *flags, env=env).stdout.splitlines()[-1])
  _garble(tmp_path / "checkpoints" / "30")
  proc = run_module("experiments.train", *flags, env=env)
  again = json.loads(proc.stdout.splitlines()[-1])
  assert again["resumed_from_step"] == 20
  assert again["eval_loss"] == first["eval_loss"]
  warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
  assert len(warnings) == 2 and "step 30" in warnings[0], proc.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20", "30", "30.damaged"]
