"""The Ray backend against a local Ray cluster that the test starts and stops: each run is a
Ray task, the driver records the rows, and a task whose worker dies is recorded as failed."""

import os

import pytest

from configs.sweeps import optimal_sparsity
from moejax.sweeps import run_sweep

ray = pytest.importorskip("ray")
CRASH = "d32-E2-k1-0.04M-A0.02M"


def evaluate_or_crash(run, run_dir):
  """An evaluation hook that kills its worker process for one run."""
  del run_dir
  if run.name == CRASH:
    os._exit(7)  # pylint: disable=protected-access
  return {"mem_accuracy": 1.0}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # Ray starts its daemons
def test_ray_backend_runs_each_run_as_a_task(tmp_path):
  runs = optimal_sparsity.get_sweep("smoke")[:2]
  assert runs[1].name == CRASH
  ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
  try:
    df = run_sweep(runs, str(tmp_path), backend="ray", evaluate=evaluate_or_crash,
                   progress=False)
    assert ray.is_initialized()  # a cluster the caller started is left running
  finally:
    ray.shutdown()
  rows = {row["name"]: row for row in df.to_dict("records")}
  done = rows[runs[0].name]
  assert done["status"] == "done" and done["mem_accuracy"] == 1.0
  assert done["final_eval_loss"] < 4.2
  assert rows[CRASH]["status"] == "failed" and "ray task failed" in rows[CRASH]["error"]
  assert os.path.exists(tmp_path / "runs" / runs[0].name / "eval.json")
