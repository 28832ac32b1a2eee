"""Finding 5 (iso-FLOP): sparser models win at small budgets; denser ones overtake on reasoning
at large budgets.

Read over the iso-FLOP budgets only (``analysis.isoflop.isoflop_budgets``: runs of equal
training FLOPs whose active sizes differ). Sparsity is ``1 - k/E`` (0 for a dense model; the
results table's ``sparsity`` column). Per budget:
  accuracy-optimal sparsity   the sparsity of the model with the best reasoning accuracy;
  task-loss-optimal sparsity  of the model with the lowest reasoning task loss;
  loss-optimal sparsity       of the model with the lowest pre-training loss
                              (``train_loss_tail``, else the held-out loss).
The first two get 95% intervals over items: the optimum is taken in each bootstrap replicate
(items resampled jointly for every model) and the interval is the replicates' percentiles.
The pre-training loss has no item bootstrap: with several seeds its interval spans the
sparsities of the models whose seed range reaches the best model's (tied within the seeds'
spread), otherwise it has none.

The trend with budget is the least-squares slope of an optimal sparsity against log10 FLOPs
(in every replicate for the interval). Reproduced when the accuracy-optimal sparsity falls with
budget (slope's interval below 0); not reproduced when it does not (interval at or above 0);
inconclusive otherwise, with fewer than two budgets, or with reasoning at chance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analysis.bootstrap import interval
from analysis.isoflop import isoflop_budgets
from moejax.study.intervals import LEVEL, ItemBootstrap
from moejax.study.verdict_common import (REASON_COL, REASON_LOSS_COL, estimate_text, no_interval,
                                         reasoning_at_chance, train_loss_column, verdict)


def sparsity_of(runs: pd.DataFrame) -> np.ndarray:
  """1 - k/E per run (0 for a dense model)."""
  if "sparsity" in runs and runs["sparsity"].notna().all():
    return runs["sparsity"].to_numpy(float)
  return 1.0 - runs["top_k"].to_numpy(float) / runs["num_experts"].to_numpy(float)


def best_sparsity(values_MX: np.ndarray, sparsity_M: np.ndarray, lower_is_better: bool
                  ) -> np.ndarray:
  """[X]: the sparsity of the best row of each column (NaN where a column is all NaN)."""
  score_MX = np.where(np.isfinite(values_MX), -values_MX if lower_is_better else values_MX,
                      -np.inf)
  best_X = sparsity_M[np.argmax(score_MX, axis=0)]
  return np.where(np.isfinite(values_MX).any(axis=0), best_X, np.nan)


def _item_optima(budgets, column: str, lower: bool, boot: ItemBootstrap | None):
  """(estimate [C], replicates [C, B] or None) of the optimal sparsity per budget."""
  estimate_C = np.array([best_sparsity(runs[column].to_numpy(float)[:, None], sparsity_of(runs),
                                       lower)[0] if column in runs else np.nan
                         for _, runs in budgets])
  reps = [boot.replicates_of(column, runs["name"]) if boot is not None else None
          for _, runs in budgets]
  if any(r is None for r in reps):
    return estimate_C, None
  return estimate_C, np.stack([best_sparsity(r, sparsity_of(runs), lower)
                               for r, (_, runs) in zip(reps, budgets)])


def _seed_tied(runs: pd.DataFrame, column: str) -> dict[str, Any]:
  """Loss-optimal sparsity; interval over the models tied with the best within seed ranges."""
  sparsity_M = sparsity_of(runs)
  loss_M = runs[column].to_numpy(float)
  best = int(np.nanargmin(loss_M))
  entry = no_interval(sparsity_M[best])
  lo_col, hi_col = f"{column}_seed_min", f"{column}_seed_max"
  if lo_col in runs and runs.get("num_seeds", pd.Series([1])).max() > 1:
    tied_M = runs[lo_col].to_numpy(float) <= runs[hi_col].to_numpy(float)[best]
    entry["ci"] = [float(sparsity_M[tied_M].min()), float(sparsity_M[tied_M].max())]
  return entry


def _slope(log_c_C: np.ndarray, y_CX: np.ndarray) -> np.ndarray:
  """Least-squares slope [X] of each column against ``log_c_C`` (exactly 0 for a constant
  column: y is centred on its first row, which leaves the slope unchanged)."""
  dx_C = log_c_C - log_c_C.mean()
  return (dx_C[:, None] * (y_CX - y_CX[:1])).sum(axis=0) / (dx_C ** 2).sum()


def _trend(log_c_C: np.ndarray, estimate_C: np.ndarray, reps_CB) -> dict[str, Any]:
  estimate = float(_slope(log_c_C, estimate_C[:, None])[0])
  if reps_CB is None:
    return no_interval(estimate)
  ok_B = np.isfinite(reps_CB).all(axis=0)
  return interval(estimate, _slope(log_c_C, reps_CB[:, ok_B]), LEVEL)


def optimal_sparsity(df: pd.DataFrame, boot: ItemBootstrap | None = None,
                     budgets: list | None = None) -> dict[str, Any]:
  """Per budget and metric the optimal sparsity with its interval, and each metric's trend
  (``budgets``: ``isoflop_budgets(df)`` when already computed)."""
  budgets = isoflop_budgets(df) if budgets is None else budgets
  loss_col = train_loss_column(df)
  if not budgets:
    return {"budgets": [], "trend_per_decade": {}, "loss_column": loss_col}
  log_c_C = np.log10([b for b, _ in budgets])
  per_budget = [{"budget": b, "num_runs": int(len(runs)),
                 "sparsities": sorted(set(np.round(sparsity_of(runs), 4).tolist()))}
                for b, runs in budgets]
  trends = {}
  for name, column, lower in (("reason_accuracy", REASON_COL, False),
                              ("reason_task_loss", REASON_LOSS_COL, True)):
    estimate_C, reps_CB = _item_optima(budgets, column, lower, boot)
    for c, entry in enumerate(per_budget):
      entry[name] = (interval(estimate_C[c], reps_CB[c], LEVEL) if reps_CB is not None
                     else no_interval(estimate_C[c]))
    trends[name] = _trend(log_c_C, estimate_C, reps_CB) if len(budgets) >= 2 else None
  for entry, (_, runs) in zip(per_budget, budgets):
    entry["train_loss"] = _seed_tied(runs, loss_col)
  loss_C = np.array([e["train_loss"]["estimate"] for e in per_budget])
  trends["train_loss"] = _trend(log_c_C, loss_C, None) if len(budgets) >= 2 else None
  return {"budgets": per_budget, "trend_per_decade": trends, "loss_column": loss_col}


def iso_flop(df: pd.DataFrame, boot: ItemBootstrap | None = None) -> dict[str, Any]:
  """Finding 5 (module docstring)."""
  groups = isoflop_budgets(df)
  found = optimal_sparsity(df, boot, groups)
  budgets = found["budgets"]
  if not budgets:
    return verdict(5, "not tested", "This preset trains no iso-FLOP sweep (runs of equal "
                   "training FLOPs and different active sizes; --preset=small or isoflop_tiny "
                   "runs one).", **found)
  trend = found["trend_per_decade"]["reason_accuracy"]
  at_chance = reasoning_at_chance(pd.concat([runs for _, runs in groups]))
  if trend is None or at_chance or not np.isfinite(trend["estimate"]):
    outcome = "inconclusive"
  else:
    lo, hi = trend["ci"]
    if np.isfinite(lo) and np.isfinite(hi):
      outcome = ("reproduced" if hi < 0 else "not reproduced" if lo >= 0 else "inconclusive")
    else:
      outcome = "reproduced" if trend["estimate"] < 0 else "not reproduced"
  rows = "; ".join(
      f"C={e['budget']:.2e} ({e['num_runs']} runs): accuracy-optimal "
      f"{estimate_text(e['reason_accuracy'], '.3f')}, task-loss-optimal "
      f"{estimate_text(e['reason_task_loss'], '.3f')}, loss-optimal "
      f"{estimate_text(e['train_loss'], '.3f')}" for e in budgets)
  trends = ", ".join(f"{name} {estimate_text(t, '+.3f')}"
                     for name, t in found["trend_per_decade"].items() if t is not None)
  statement = (f"Optimal sparsity (1 - k/E) per iso-FLOP budget: {rows}. Slope per decade of "
               f"FLOPs ({len(budgets)} budgets): {trends or 'needs two budgets'}. Reproduced "
               "when the accuracy-optimal sparsity falls with budget (slope's interval below 0)."
               + (f" {at_chance}" if at_chance else ""))
  return verdict(5, outcome, statement, **found)
