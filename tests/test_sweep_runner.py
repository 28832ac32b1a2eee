"""The sweep runner on the ``smoke`` sweep: one row per run, re-runs skip finished runs and
resume interrupted ones, divergence and failures are recorded while the sweep goes on, and a
killed sweep loses only the run in flight."""

import os
import signal
import subprocess
import sys
import time

import pytest

from analysis import results_schema
from configs.sweeps import optimal_sparsity
from moejax.sweeps import ResultsTable, make_run, read_table, run_sweep
from moejax.sweeps.spec import apply_overrides
from moejax.validation import ConfigError
from tests.conftest import REPO

SWEEP = "configs/sweeps/optimal_sparsity.py:smoke"
EVALUATED = []


def fake_evaluate(run, run_dir):
  """An evaluation hook: checks it sees the trained run, returns schema and custom metrics."""
  assert os.path.exists(os.path.join(run_dir, "eval.json"))
  EVALUATED.append(run.name)
  return {"mem_accuracy": 0.5, "my_metric": float(len(run.name))}


def broken_evaluate(run, run_dir):
  del run, run_dir
  raise ValueError("bad\nno answers")


def _rows(df):
  return {row["name"]: row for row in df.to_dict("records")}


def test_sweep_records_rows_skips_finished_and_reruns_interrupted(tmp_path):
  runs = optimal_sparsity.get_sweep("smoke")[:2]
  workdir = str(tmp_path)
  EVALUATED.clear()
  df = run_sweep(runs, workdir, processes=0, evaluate=fake_evaluate, progress=False)
  assert list(df.status) == ["done", "done"] and EVALUATED == [r.name for r in runs]
  assert not results_schema.missing_columns(df, results_schema.REQUIRED_COLUMNS)
  assert (df.mem_accuracy == 0.5).all() and df.my_metric.tolist() == [len(r.name) for r in runs]
  assert (df.final_eval_loss < 4.2).all() and (df.wall_time_s > 0).all()
  assert (df.tpp == df.train_tokens / df.total_params).all()
  table = results_schema.load_results(os.path.join(workdir, "results.sqlite"))
  assert len(results_schema.finished_runs(table)) == 2
  for run in runs:
    assert os.path.exists(os.path.join(workdir, "runs", run.name, "eval.json"))

  # Re-running skips done runs; a row left 'running' by a killed sweep runs again (and
  # resumes from its own checkpoints: here the final one, so no step is trained twice).
  EVALUATED.clear()
  with ResultsTable(workdir) as t:
    t.upsert(runs[1].name, {"status": "running"})
  before = _rows(df)
  df = run_sweep(runs, workdir, processes=0, evaluate=fake_evaluate, progress=False)
  rows = _rows(df)
  assert EVALUATED == [runs[1].name] and list(df.status) == ["done", "done"]
  assert rows[runs[0].name]["finished_at"] == before[runs[0].name]["finished_at"]
  assert rows[runs[1].name]["resumed_from_step"] == runs[1].config.train.steps

  # A failing evaluation marks the run failed (training results kept); it is retried later.
  with ResultsTable(workdir) as t:
    t.upsert(runs[1].name, {"status": "failed"})
  row = _rows(run_sweep(runs, workdir, processes=0, evaluate=broken_evaluate,
                        progress=False))[runs[1].name]
  assert row["status"] == "failed" and row["error"] == "evaluation: ValueError: no answers"
  assert row["final_eval_loss"] < 4.2

  # A changed sweep definition is refused before anything runs (results are never mixed).
  with pytest.raises(ConfigError, match="different config"):
    run_sweep(apply_overrides(runs, ["train.steps=13"]), workdir, processes=0, progress=False)


def test_divergence_and_failures_are_recorded_and_the_sweep_goes_on(tmp_path):
  ok = optimal_sparsity.get_sweep("smoke")[1]
  nan = make_run(ok.config, name="lr1e6", optim=dict(lr=1e6, min_lr=1e5),
                 train=dict(log_every=1))  # the loss is NaN by step 5 (checked)
  broken = make_run(ok.config, name="broken", data=dict(source="no_such_source"))
  df = run_sweep([nan, broken, ok], str(tmp_path), processes=0, progress=False)
  rows = _rows(df)
  assert rows["lr1e6"]["status"] == "diverged"
  assert 1 <= rows["lr1e6"]["diverged_step"] <= ok.config.train.steps
  assert "loss became nan" in rows["lr1e6"]["error"]
  assert rows["broken"]["status"] == "failed" and "no_such_source" in rows["broken"]["error"]
  assert rows[ok.name]["status"] == "done"
  assert len(results_schema.finished_runs(df)) == 1

  # Diverged runs are final (skipped on re-run); failed ones are retried.
  df = run_sweep([nan, broken, ok], str(tmp_path), processes=0, progress=False)
  again = _rows(df)
  assert again["lr1e6"]["finished_at"] == rows["lr1e6"]["finished_at"]
  assert again["broken"]["finished_at"] > rows["broken"]["finished_at"]


def _sweep_cmd(workdir):
  return [sys.executable, "-m", "experiments.sweep", f"--sweep={SWEEP}", f"--workdir={workdir}",
          "--processes=1", "--only=dense|E2", "--override=train.steps=24",
          "--override=train.checkpoint_every=4"]


def _statuses(workdir):
  try:
    with ResultsTable(str(workdir)) as t:
      return t.statuses()
  except Exception:  # pylint: disable=broad-except  (not created yet)
    return {}


def _alive(pid):
  """Running (not exited, not a zombie waiting to be reaped)."""
  try:
    with open(f"/proc/{pid}/status") as f:
      return "\tZ" not in next(line for line in f if line.startswith("State:"))
  except FileNotFoundError:
    return False


@pytest.mark.slow
def test_killed_sweep_loses_only_the_run_in_flight(tmp_path):
  """Child processes: kill the driver while its second run trains; the child exits with it,
  finished rows stay done, and the re-run completes the rest (resuming the killed run)."""
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  names = [r.name for r in optimal_sparsity.get_sweep("smoke")]
  proc = subprocess.Popen(_sweep_cmd(tmp_path), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  second = tmp_path / "runs" / names[1] / "metrics.jsonl"
  deadline = time.time() + 240
  while not (second.exists() and second.read_text().count("\n") >= 2):
    assert proc.poll() is None and time.time() < deadline, "sweep ended before it was killed"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert _statuses(tmp_path) == {names[0]: "done", names[1]: "running"}
  # The orphaned child notices and exits (it would otherwise race the re-run).
  child_pid = int((tmp_path / "logs" / f"{names[1]}.log").read_text().split()[3])
  deadline = time.time() + 10
  while _alive(child_pid) and time.time() < deadline:
    time.sleep(0.1)
  assert not _alive(child_pid)

  out = subprocess.run(_sweep_cmd(tmp_path), cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300, check=True).stdout
  assert '"done": 2' in out
  rows = _rows(read_table(str(tmp_path)))
  assert rows[names[1]]["resumed_from_step"] > 0
  assert rows[names[0]]["resumed_from_step"] == 0
