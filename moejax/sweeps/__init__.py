"""Sweeps: define families of runs, run them (locally or on Ray), record one row per run.

  from moejax.sweeps import load_sweep, run_sweep, read_table
  runs = load_sweep("configs/sweeps/optimal_sparsity.py:tiny")   # list[SweepRun]
  df = run_sweep(runs, "/tmp/sweep", processes=1)                 # pandas.DataFrame
  df = read_table("/tmp/sweep")                                   # the same table, later

Modules, one job each:
  spec      SweepRun, make_run, load_sweep, steps_for_flops, listing, overrides
  results   the SQLite (WAL) results table: ResultsTable, read_table, statuses
  execute   one run: train, classify done / diverged / failed, evaluation hook
  backends  where runs execute: in the driver, in child processes, as Ray tasks
  runner    run_sweep: plan, skip finished runs, record every outcome

Command line: ``python -m experiments.sweep --sweep=configs/sweeps/optimal_sparsity.py:tiny
--workdir=DIR`` (``--list`` prints the runs).
"""

from moejax.sweeps.execute import EvalHook, execute_run
from moejax.sweeps.results import ResultsTable, read_table
from moejax.sweeps.runner import run_sweep
from moejax.sweeps.spec import SweepRun, load_sweep, make_run, steps_for_flops

__all__ = ["EvalHook", "ResultsTable", "SweepRun", "execute_run", "load_sweep", "make_run",
           "read_table", "run_sweep", "steps_for_flops"]
