"""Percentile-bootstrap intervals over evaluation items, from each run's eval_items.npz.

An accuracy measured on N items is uncertain because the items are a sample of the suite:
resampling the items with replacement (B resamples, a fixed seed) and recomputing the metric
gives its sampling distribution, and the 2.5th and 97.5th percentiles a 95% interval.

Items are resampled jointly: resample b draws the same items (by position in the split) for
every run, since every run of a study is evaluated on the same items (checked by item id). A
statistic across models (a Spearman correlation over a family, the gain from 1 to 16 votes)
computed inside each resample therefore keeps the pairing of models. The seeds of a model are
averaged inside each resample, so a model's interval is that of its seed mean over items; the
spread over seeds is reported beside it (``seeds.by_model``), not folded in.

Metrics with per-item data (``suite_metrics`` module docstring), for split S in mem, mem_train,
reason, reason_train: ``S_accuracy``, ``S_task_loss`` (sum of NLL over sum of answer tokens),
``reason_sc{n}_accuracy`` and ``reason_pass_at_{k}`` (unbiased pass@k per item).

Axes: M models, B resamples, N items, S samples.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from analysis.bootstrap import interval, resample_counts
from moejax.evaluation import metrics
from moejax.evaluation.suite_metrics import ITEMS_FILENAME, load_items

NUM_RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
_METRIC = re.compile(r"(mem_train|mem|reason_train|reason)_"
                     r"(accuracy|task_loss|sc\d+_accuracy|pass_at_(\d+))")


def load_run_items(names: Iterable[str],
                   run_dir: Callable[[str], str]) -> dict[str, dict[str, np.ndarray]]:
  """``{run name: per-item arrays}`` for the runs whose directory holds ``ITEMS_FILENAME``."""
  out = {}
  for name in names:
    path = os.path.join(run_dir(name), ITEMS_FILENAME)
    if os.path.exists(path):
      out[name] = load_items(path)
  return out


def item_values(column: str, arrays: Mapping[str, np.ndarray]):
  """(split, numerator_N, denominator_N) whose ratio of sums is ``column``; None if the run
  has no per-item data for it."""
  match = _METRIC.fullmatch(column)
  if not match:
    return None
  split, metric, k = match.groups()
  if metric == "task_loss":
    keys = (f"{split}_nll", f"{split}_answer_tokens")
  elif k is not None:
    keys = (f"{split}_sample_correct",)
  else:
    keys = (f"{split}_{metric.removesuffix('_accuracy')}_correct" if metric != "accuracy"
            else f"{split}_correct",)
  if not all(key in arrays for key in (*keys, f"{split}_uid")):
    return None
  if metric == "task_loss":
    return split, arrays[keys[0]].astype(np.float64), arrays[keys[1]].astype(np.float64)
  values = arrays[keys[0]]
  if k is not None:
    correct_N, num_samples = values.sum(axis=1), values.shape[1]
    if int(k) > num_samples:
      return None
    values = np.array([metrics.pass_at_k(num_samples, int(c), int(k)) for c in correct_N])
  values = np.asarray(values, np.float64)
  return split, values, np.ones_like(values)


def rank_correlation(x_M: np.ndarray, y_MB: np.ndarray) -> np.ndarray:
  """Spearman correlation of ``x_M`` with each column of ``y_MB`` ([B]; NaN where y is constant
  or has missing values)."""
  ranks_x = stats.rankdata(x_M)
  ranks_MB = stats.rankdata(y_MB, axis=0)
  dx = ranks_x - ranks_x.mean()
  dy_MB = ranks_MB - ranks_MB.mean(axis=0)
  denominator = np.sqrt((dx ** 2).sum() * (dy_MB ** 2).sum(axis=0))
  with np.errstate(invalid="ignore", divide="ignore"):
    rho_B = (dx[:, None] * dy_MB).sum(axis=0) / denominator
  rho_B[~np.isfinite(y_MB).all(axis=0)] = np.nan
  return np.where(denominator > 0, rho_B, np.nan)


class ItemBootstrap:
  """Bootstrap replicates over evaluation items of model-level metrics.

  Args:
    models: the model table (``seeds.by_model``: a ``runs`` column lists each model's runs).
    items: ``{run name: per-item arrays}`` (``load_run_items``).
    num_resamples, seed, level: B, the resampling seed and the interval's coverage.
  """

  def __init__(self, models: pd.DataFrame, items: Mapping[str, Mapping[str, np.ndarray]], *,
               num_resamples: int = NUM_RESAMPLES, seed: int = SEED, level: float = LEVEL):
    self.models = models.reset_index(drop=True)
    self.items = items
    self.num_resamples, self.seed, self.level = num_resamples, seed, level
    self._cache: dict[str, np.ndarray | None] = {}
    self._counts: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # split: (uids_N, counts_BN)

  def settings(self) -> dict:
    return {"method": "percentile bootstrap over evaluation items (resampled jointly for all "
                      "runs; seeds averaged within each resample)",
            "resamples": self.num_resamples, "seed": self.seed, "level": self.level,
            "runs_with_items": len(self.items)}

  def _split_counts(self, split: str, uids_N: np.ndarray) -> np.ndarray:
    """Resample counts [B, N] of a split (one draw per split, shared by all runs)."""
    if split not in self._counts:
      self._counts[split] = (uids_N, resample_counts(
          len(uids_N), self.num_resamples, self.seed + zlib.crc32(split.encode())))
    reference, counts_BN = self._counts[split]
    if not np.array_equal(reference, uids_N):
      raise ValueError(f"runs were evaluated on different {split} items")
    return counts_BN

  def _run_replicates(self, column: str, run: str) -> np.ndarray | None:
    arrays = self.items.get(run)
    found = item_values(column, arrays) if arrays is not None else None
    if found is None:
      return None
    split, numerator_N, denominator_N = found
    counts_BN = self._split_counts(split, arrays[f"{split}_uid"])
    with np.errstate(invalid="ignore", divide="ignore"):
      return (counts_BN @ numerator_N) / (counts_BN @ denominator_N)

  def replicates(self, column: str) -> np.ndarray | None:
    """Replicates [M, B] of ``column`` (seed mean per model; a row of NaN for a model without
    per-item data), or None when no model has per-item data for it."""
    if column not in self._cache:
      rows, found = [], False
      try:
        for runs in self.models["runs"]:
          per_seed = [self._run_replicates(column, run) for run in runs.split(",")]
          found |= any(r is not None for r in per_seed)
          rows.append(np.mean(per_seed, axis=0) if all(r is not None for r in per_seed)
                      else np.full(self.num_resamples, np.nan))
      except ValueError as e:
        logging.warning("no interval for %s: %s", column, e)
        found = False
      self._cache[column] = np.stack(rows) if found and rows else None
    return self._cache[column]

  def replicates_of(self, column: str, names: Iterable[str]) -> np.ndarray | None:
    """``replicates`` rows [len(names), B] of the models named ``names``."""
    reps_MB = self.replicates(column)
    if reps_MB is None:
      return None
    position = {name: i for i, name in enumerate(self.models["name"])}
    return reps_MB[[position[name] for name in names]]

  def interval(self, estimate: float, replicates_B: np.ndarray | None) -> dict:
    """``{"estimate", "se", "ci": [lo, hi]}`` (NaN interval without replicates)."""
    if replicates_B is None:
      return {"estimate": float(estimate), "se": float("nan"),
              "ci": [float("nan"), float("nan")]}
    return interval(estimate, replicates_B, self.level)

  def with_intervals(self, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """The model table with ``{column}_lo`` and ``{column}_hi`` for every metric that has
    per-item data (default: every column ``item_values`` understands)."""
    out = self.models.copy()
    columns = [c for c in (columns or out.columns) if _METRIC.fullmatch(c)]
    for column in columns:
      reps_MB = self.replicates(column)
      if reps_MB is None:
        continue
      bounds = [self.interval(e, r)["ci"] for e, r in zip(out[column], reps_MB)]
      out[f"{column}_lo"], out[f"{column}_hi"] = np.array(bounds, np.float64).T
    return out


def seed_interval(values, level: float = 0.95) -> dict:
  """Mean over seeds with a Student-t interval (n - 1 degrees of freedom): with 2 seeds the
  interval is wide (t = 12.7), which is the honest width of two runs. NaN bounds with one."""
  values = np.asarray(values, np.float64)
  mean, n = float(values.mean()), len(values)
  if n < 2:
    return {"estimate": mean, "ci": [float("nan"), float("nan")], "seeds": n}
  half = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / np.sqrt(n)
  return {"estimate": mean, "ci": [mean - half, mean + half], "seeds": n}
