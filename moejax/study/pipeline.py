"""The study end to end: sweep -> evaluation -> intervals -> fits -> figures -> report.

The sweep runs through moejax.sweeps (skipping finished runs, so re-running resumes); each run's
trainer already evaluates the data suites into its eval.json and eval_items.npz
(``config.eval``), and ``suite_columns`` lifts those metrics into the results table. Finished
runs become one row per model (seeds averaged, ``seeds.by_model``) with bootstrap intervals
over evaluation items (``intervals.ItemBootstrap``), which the verdicts, figures and report use.
With a GRPO config, every done run is then post-trained and evaluated again
(moejax/posttrain/study.py: ``grpo_*`` columns, each run's grpo.json, and a ``grpo`` section in
summary.json).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import ml_collections
import numpy as np
import pandas as pd

from moejax.study import intervals, report, seeds, verdicts

SUITE_PREFIXES = ("mem_", "mem_train_", "reason_", "knowledge_", "bits_per_param")


def suite_columns(run, run_dir: str) -> dict[str, float]:
  """Evaluation hook for moejax.sweeps: the suite metrics from the run's eval.json."""
  del run
  with open(os.path.join(run_dir, "eval.json")) as f:
    results = json.load(f)
  return {k: float(v) for k, v in results.items()
          if k.startswith(SUITE_PREFIXES) and isinstance(v, (int, float))}


def fit_routed_law(df: pd.DataFrame, num_resamples: int = 200) -> dict[str, Any]:
  """Clark et al. (2022) unified routed law of held-out loss in (active params, experts),
  with bootstrap intervals; an explanation instead when the runs cannot identify it."""
  from analysis.bootstrap import bootstrap_fit  # pylint: disable=import-outside-toplevel
  from analysis.fitting import fit_law  # pylint: disable=import-outside-toplevel
  from analysis.laws import get_law  # pylint: disable=import-outside-toplevel
  runs = df[(df["status"] == "done") & np.isfinite(df["final_eval_loss"])]
  if len(runs) < 5 or runs["num_experts"].nunique() < 2 or runs["active_params"].nunique() < 2:
    return {"clark": "not fitted: needs >= 5 finished runs over >= 2 active sizes and E values"}
  inputs = {"N": runs["active_params"].to_numpy(float), "E": runs["num_experts"].to_numpy(float)}
  fit = fit_law(get_law("clark"), inputs, runs["final_eval_loss"].to_numpy(float))
  # Seeds of a model are one cluster: resampled together, not as independent points.
  boot = bootstrap_fit(fit, num_resamples, groups=runs["name"].map(seeds.model_name).to_numpy())
  return {"clark": {"params": boot.summary(0.95), **fit.summary()}}


def run_study(sweep_spec: str, workdir: str, *, preset: str, processes: int = 1,
              backend: str = "local", overrides: tuple[str, ...] = (),
              grpo: ml_collections.ConfigDict | None = None) -> dict[str, Any]:
  """Runs (or resumes) the sweep, then writes DIR/report.md and DIR/summary.json.

  ``grpo`` (configs/grpo.py) also post-trains every done run with GRPO (resumable).
  """
  from analysis.figures import make_study_figures  # pylint: disable=import-outside-toplevel
  from moejax.sweeps import load_sweep, run_sweep  # pylint: disable=import-outside-toplevel
  from moejax.sweeps.runner import run_dir  # pylint: disable=import-outside-toplevel
  from moejax.sweeps.spec import apply_overrides  # pylint: disable=import-outside-toplevel
  start = time.time()
  runs = apply_overrides(load_sweep(sweep_spec), list(overrides))
  os.makedirs(workdir, exist_ok=True)
  sweep_dir = os.path.join(workdir, "sweep")
  df = run_sweep(runs, sweep_dir, backend=backend, processes=processes, evaluate=suite_columns)
  grpo_extra = {}
  if grpo is not None:
    from moejax.posttrain import study as posttrain  # pylint: disable=import-outside-toplevel
    df = posttrain.grpo_sweep(sweep_dir, grpo)
    grpo_extra["grpo"] = posttrain.grpo_summary(df)
  done = df[df["status"] == "done"].copy()
  items = intervals.load_run_items(done["name"], lambda name: run_dir(sweep_dir, name))
  boot = intervals.ItemBootstrap(seeds.by_model(done), items)
  models = boot.with_intervals()
  fits: dict[str, Any]
  try:
    fits = fit_routed_law(done)
  except Exception as e:  # pylint: disable=broad-except  (a failed fit is reported, not fatal)
    logging.warning("fit failed: %s", e)
    fits = {"clark": f"fit failed: {e}"}
  found = verdicts.all_verdicts(models, boot)
  figures = (make_study_figures(models, os.path.join(workdir, "figures"), found) if len(done)
             else {})
  return report.write(workdir, df, models, found, figures, fits,
                      {"preset": preset, "intervals": boot.settings(),
                       "wall_time_s": time.time() - start, **grpo_extra})
