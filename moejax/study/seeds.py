"""Seeds of one model: the results table has one row per run, the study one row per model.

A sweep preset with several seeds names its runs ``MODEL-s{seed}`` (configs/sweeps/
optimal_sparsity.py ``_run``); the seeds of a model share every count (total and active
parameters, FLOPs), so verdicts and figures must see one point per model: the mean over its
seeds, with the spread over seeds beside it. A preset with one seed has no suffix and the
model table equals the runs table (plus ``num_seeds`` = 1).
"""

from __future__ import annotations

import re

import pandas as pd

_SEED_SUFFIX = re.compile(r"-s\d+$")
# Metrics whose spread over seeds is reported (per-difficulty and per-attribute breakdowns are
# averaged but get no spread columns).
_SPREAD = re.compile(r"^(final_eval_loss|final_train_loss|train_loss_tail|.+_accuracy|"
                     r".+_task_loss)$")


def model_name(run_name: str) -> str:
  """The model a run trains: its name without the ``-s{seed}`` suffix."""
  return _SEED_SUFFIX.sub("", run_name)


def spread_columns(df: pd.DataFrame) -> list[str]:
  return [c for c in df.columns if _SPREAD.match(c) and pd.api.types.is_float_dtype(df[c])]


def by_model(runs: pd.DataFrame) -> pd.DataFrame:
  """One row per model (in first-seen order), named by ``model_name``.

  Float columns (metrics) are averaged over the model's seeds; others (counts, names, config)
  take the first seed's value. Added: ``num_seeds``, ``seeds`` (comma-separated), ``runs``
  (the run names, comma-separated) and, for each metric of ``spread_columns``,
  ``{metric}_seed_sd`` (sample standard deviation; NaN with one seed), ``{metric}_seed_min``
  and ``{metric}_seed_max``.
  """
  runs = runs.assign(model=runs["name"].map(model_name))
  groups = runs.groupby("model", sort=False)
  floats = [c for c in runs.columns if pd.api.types.is_float_dtype(runs[c])]
  others = [c for c in runs.columns if c not in floats and c != "model"]
  out = groups[others].first().join(groups[floats].mean())
  spread = spread_columns(runs)
  for stat in ("sd", "min", "max"):
    values = groups[spread].agg("std" if stat == "sd" else stat)
    out = out.join(values.add_suffix(f"_seed_{stat}"))
  out["num_seeds"] = groups.size()
  out["seeds"] = groups["seed"].agg(lambda s: ",".join(map(str, s))) if "seed" in runs else ""
  out["runs"] = groups["name"].agg(",".join)
  out["name"] = out.index
  return out[list(runs.columns.drop("model")) + [c for c in out.columns
                                                if c not in runs.columns]].reset_index(drop=True)


def pick_run(rows: pd.DataFrame, experts: int = 8) -> str:
  """The run analysed in depth among ``rows`` (results-table rows with at least one MoE run):
  seed 0 of E=``experts``, else the largest E."""
  moe = rows[rows["num_experts"] > 1].sort_values(["seed", "num_experts"])
  match = moe[moe["num_experts"] == experts]
  return (match if len(match) else moe.iloc[::-1]).iloc[0]["name"]
