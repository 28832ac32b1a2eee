"""Run a sweep: ``python -m experiments.sweep --sweep=configs/sweeps/NAME.py:PRESET --workdir=DIR``.

  --list                  print one line per run (name, total/active params, FLOPs, tokens)
  --processes=N           local: N runs at a time, each in a fresh process (0: in this process)
  --backend=ray           one Ray task per run (--ray_address=HOST:PORT, or a local cluster)
  --only=REGEX            only the runs whose name matches
  --override=train.steps=100   change a config field of every run (repeatable)

Results: DIR/results.sqlite (one row per run; ``moejax.sweeps.read_table(DIR)``), runs in
DIR/runs/NAME, logs in DIR/logs. Re-running skips finished runs and resumes interrupted ones.
The sweep file's ``evaluate(run, run_dir)``, if it defines one, evaluates each trained model
(``--evaluate=file.py:function`` names another, ``--evaluate=none`` turns it off).
"""

import json
import os

from absl import flags

from experiments import cli
from moejax.sweeps import runner, spec

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file and preset, e.g. "
                             "configs/sweeps/optimal_sparsity.py:tiny", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (results table, runs, logs).")
_LIST = flags.DEFINE_bool("list", False, "Print the runs and exit.")
_BACKEND = flags.DEFINE_enum("backend", "local", runner.BACKENDS, "Where runs execute.")
_PROCESSES = flags.DEFINE_integer(
    "processes", 1, "local: runs at a time, each in a child process (0: in this process); "
    "ray: most tasks in flight (<= 1: what the cluster's resources allow).", lower_bound=0)
_ONLY = flags.DEFINE_string("only", None, "Regular expression: run only matching runs.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "section.field=value for every run.")
_EVALUATE = flags.DEFINE_string(
    "evaluate", None, "Evaluation hook file.py:function or module:function; default: the "
    "sweep file's evaluate() if it has one; 'none': no evaluation.")
_RETRY_DIVERGED = flags.DEFINE_bool("retry_diverged", False, "Re-run diverged runs too.")
_RAY_ADDRESS = flags.DEFINE_string(
    "ray_address", None, "Ray cluster HOST:PORT; unset: a running local cluster or a new one; "
    "'local': always a new local cluster.")
_RAY_NUM_CPUS = flags.DEFINE_float("ray_num_cpus", 1, "CPUs one Ray task reserves.")
_RAY_RESOURCES = flags.DEFINE_string("ray_resources", "{}",
                                     'Other resources of one Ray task, JSON, e.g. {"TPU": 4}.')


def _evaluate_hook() -> str | None:
  """The evaluation hook's spec string (resolved where each run executes)."""
  if _EVALUATE.value:
    return None if _EVALUATE.value.lower() == "none" else _EVALUATE.value
  target = _SWEEP.value.rpartition(":")[0]
  if hasattr(spec.load_module(_SWEEP.value), "evaluate"):
    return f"{os.path.abspath(target) if target.endswith('.py') else target}:evaluate"
  return None


def main(argv):
  del argv
  runs = cli.run_or_exit(lambda: spec.select(
      spec.apply_overrides(spec.load_sweep(_SWEEP.value), _OVERRIDE.value), _ONLY.value))
  if _LIST.value:
    print("\n".join(spec.listing(runs)))
    return
  if not _WORKDIR.value:
    raise SystemExit("error: --workdir is required unless --list is given")
  df = cli.run_or_exit(lambda: runner.run_sweep(
      runs, _WORKDIR.value, backend=_BACKEND.value, processes=_PROCESSES.value,
      evaluate=_evaluate_hook(), retry_diverged=_RETRY_DIVERGED.value,
      ray_address=_RAY_ADDRESS.value, ray_num_cpus=_RAY_NUM_CPUS.value,
      ray_resources=json.loads(_RAY_RESOURCES.value)))
  names = {r.name for r in runs}
  counts = df[df["name"].isin(names)]["status"].value_counts().to_dict()
  print(json.dumps({"workdir": _WORKDIR.value, "runs": len(runs), "status": counts}))


if __name__ == "__main__":
  cli.run(main)
