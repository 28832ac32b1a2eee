"""Runs a sweep and records one row per run in ``WORKDIR/results.sqlite``.

  from moejax.sweeps import load_sweep, run_sweep
  df = run_sweep(load_sweep("configs/sweeps/optimal_sparsity.py:tiny"), "/tmp/sweep",
                 processes=2, evaluate=my_hook)  # my_hook(run, run_dir) -> dict

Layout of WORKDIR: ``results.sqlite`` (the table), ``runs/NAME/`` (each run's workdir: config,
metrics, checkpoints, eval.json), ``logs/NAME.log`` (output of runs in child processes).

Re-running is safe: ``done`` (and ``diverged``, unless ``retry_diverged``) runs are skipped;
``pending``, ``failed`` and ``running`` ones (left by a killed sweep) are run again and resume
from their own checkpoints. Every result is committed when its run ends, so a killed sweep loses
at most the runs in flight. Before anything runs, every model is validated and every existing
run directory is checked against its config (a changed sweep definition fails with the fields
that differ instead of silently mixing old and new results).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import os
import time
from typing import Mapping, Sequence

import pandas as pd
from tqdm import tqdm

from moejax.sweeps import backends, results, spec
from moejax.sweeps.execute import EvalHook
from moejax.sweeps.spec import SweepRun
from moejax.training import workdir as workdir_lib

BACKENDS = ("local", "ray")
FINISHED = (results.DONE, results.DIVERGED)


def run_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, "runs", name)


def log_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, "logs", f"{name}.log")


def _for_sweep(run: SweepRun) -> SweepRun:
  """The run as the sweep trains it: no per-run progress bar (the sweep shows one over runs)."""
  config = copy.deepcopy(run.config)
  config.train.progress_bar = False
  return dataclasses.replace(run, config=config)


def to_run(runs: Sequence[SweepRun], statuses: Mapping[str, str],
           retry_diverged: bool = False) -> list[SweepRun]:
  """The runs a (re-)run of the sweep must execute, given the recorded statuses."""
  skip = (results.DONE,) if retry_diverged else FINISHED
  return [r for r in runs if statuses.get(r.name) not in skip]


def prepare_data(runs: Sequence[SweepRun]) -> None:
  """Builds every data-suite preset the runs train on, once, before runs start side by side
  (parallel runs would otherwise race to build the same preset)."""
  from moejax.data import stream  # pylint: disable=import-outside-toplevel
  needed = {(r.config.data.data_dir, r.config.data.preset): r.config.data for r in runs
            if r.config.data.get("source") == "suites"}
  for data_config in needed.values():
    stream.require_data(data_config)


def record_plan(table: results.ResultsTable, runs: Sequence[SweepRun]) -> None:
  """Writes every run's known-before-training columns; new rows are ``pending``."""
  for run in runs:
    table.upsert(run.name, {**spec.static_columns(run), "status": results.PENDING},
                 keep_status=True)


def run_sweep(runs: Sequence[SweepRun], workdir: str, *, backend: str = "local",
              processes: int = 1, evaluate: EvalHook | str | None = None,
              retry_diverged: bool = False, ray_address: str | None = None,
              ray_num_cpus: float = 1, ray_resources: Mapping[str, float] | None = None,
              progress: bool = True) -> pd.DataFrame:
  """Runs every unfinished run of ``runs`` and returns the results table.

  Args:
    runs: the sweep (see spec.py).
    workdir: the sweep's directory (created).
    backend: "local" or "ray".
    processes: local: 0 runs in this process, N >= 1 in fresh child processes, N at a time;
      ray: the most tasks in flight (0 or 1: as many as the cluster's resources allow).
    evaluate: optional hook ``evaluate(run, run_dir) -> dict[str, float]`` (or its
      ``file.py:function`` spec) called after each successful training; its keys become
      columns.
    retry_diverged: also re-run runs recorded as diverged.
    ray_address: Ray cluster address (None: a running local cluster or a new one).
    ray_num_cpus, ray_resources: what one Ray task reserves.
    progress: show a progress bar over runs.
  """
  if backend not in BACKENDS:
    raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
  runs = [_for_sweep(r) for r in runs]
  spec.validate(runs)
  for run in runs:
    workdir_lib.check_compatible(run_dir(workdir, run.name), run.config)
  with results.ResultsTable(workdir) as table:
    record_plan(table, runs)
    todo = to_run(runs, table.statuses(), retry_diverged)
    prepare_data(todo)
    tasks = [backends.Task(r, run_dir(workdir, r.name), log_path(workdir, r.name))
             for r in todo]
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep", unit="run",
               disable=not progress)
    outcomes = collections.Counter()

    def on_start(task: backends.Task) -> None:
      table.upsert(task.run.name, {"status": results.RUNNING, "error": None,
                                   "diverged_step": None, "started_at": time.time()})
      bar.set_description(f"sweep ({task.run.name})")

    def on_done(task: backends.Task, row: Mapping) -> None:
      table.upsert(task.run.name, {**row, "finished_at": time.time()})
      outcomes[row["status"]] += 1
      bar.set_postfix(outcomes)
      bar.update(1)

    try:
      if backend == "ray":
        backends.run_ray(tasks, evaluate, on_start, on_done, address=ray_address,
                         num_cpus=ray_num_cpus, resources=ray_resources,
                         max_concurrent=processes if processes > 1 else None)
      elif processes == 0:
        backends.run_inline(tasks, evaluate, on_start, on_done)
      else:
        backends.run_processes(tasks, evaluate, on_start, on_done, processes=processes)
    finally:
      bar.close()
  return results.read_table(workdir)
