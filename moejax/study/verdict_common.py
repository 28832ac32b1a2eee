"""What every verdict module shares: the groups a finding may read, statistics with bootstrap
intervals over evaluation items, and the wording of a verdict.

Groups are selected by what they hold, not by their name:
  fixed-active families  runs of one ``family`` whose active parameters (and training tokens,
                         when recorded) are constant and whose total parameters take at least
                         three values (findings 1, 2, 3; the top-k comparison of finding 4 and
                         the rescue check of finding 6 use the same families);
  iso-FLOP budgets       ``analysis.isoflop.isoflop_budgets``: runs of equal training FLOPs
                         whose active parameters differ (finding 5).

A statistic is computed on the model table's values and, with an ``intervals.ItemBootstrap``,
on each of its replicates (items resampled jointly for every model), which gives its 95%
percentile interval (``statistic_interval``). ``decide`` reads a sign from an interval.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from analysis.bootstrap import interval
from moejax.study.intervals import ItemBootstrap, rank_correlation

NAN_CI = [float("nan"), float("nan")]
REASON_COL = "reason_accuracy"
REASON_LOSS_COL = "reason_task_loss"
TRAIN_LOSS_COL = "train_loss_tail"


def verdict(finding: int, outcome: str, statement: str, **numbers) -> dict[str, Any]:
  return {"finding": finding, "verdict": outcome, "statement": statement, "numbers": numbers}


def mean_finite(values: Mapping[str, float]) -> float:
  finite = [v for v in values.values() if np.isfinite(v)]
  return float(np.mean(finite)) if finite else float("nan")


def rho_text(rho: float) -> str:
  return f"{rho:+.2f}" if np.isfinite(rho) else "undefined"


def ci_text(ci, fmt: str = "+.2f") -> str:
  lo, hi = ci
  return (f" [95% CI {lo:{fmt}}, {hi:{fmt}}]" if np.isfinite(lo) and np.isfinite(hi)
          else "")


def estimate_text(entry: Mapping[str, Any], fmt: str = "+.3f") -> str:
  """``estimate [95% CI lo, hi]`` of a ``statistic_interval`` result."""
  estimate = entry["estimate"]
  text = f"{estimate:{fmt}}" if np.isfinite(estimate) else "undefined"
  return text + ci_text(entry["ci"], fmt)


# A Spearman coefficient of 4 models is a multiple of 0.2, but scipy returns 0.8 as
# 0.7999999999999999: statistics are compared with thresholds up to this slack.
ROUNDING = 1e-9


def against(estimate: float, ci, threshold: float) -> str:
  """"reproduced" when ``estimate`` >= ``threshold``, else "not reproduced"; "inconclusive"
  when the estimate is undefined or its interval holds values on both sides of the
  threshold (both up to float rounding, ``ROUNDING``)."""
  if not np.isfinite(estimate):
    return "inconclusive"
  lo, hi = ci
  if np.isfinite(lo) and np.isfinite(hi) and lo < threshold - ROUNDING <= hi:
    return "inconclusive"
  return "reproduced" if estimate >= threshold - ROUNDING else "not reproduced"


def decide(entry: Mapping[str, Any]) -> int:
  """+1 when a statistic is established positive (its interval above 0, or without an interval
  a positive estimate), -1 when established negative, 0 otherwise (an interval holding 0, an
  undefined estimate, or an estimate of exactly 0 without interval)."""
  estimate, (lo, hi) = entry["estimate"], entry["ci"]
  if not np.isfinite(estimate):
    return 0
  if np.isfinite(lo) and np.isfinite(hi):
    return 1 if lo > 0 else -1 if hi < 0 else 0
  return int(np.sign(estimate))


def families(df: pd.DataFrame, min_sizes: int = 3) -> dict[str, pd.DataFrame]:
  """Fixed-active families: runs of one ``family`` with constant active parameters (and
  training tokens, when recorded) and >= ``min_sizes`` distinct total sizes, sorted by total
  parameters. Iso-FLOP budgets (varied active size) never qualify."""
  out = {}
  if "family" not in df:
    return out
  for group, runs in df.groupby("family"):
    constant = runs["active_params"].nunique() == 1
    if "train_tokens" in runs and runs["train_tokens"].notna().all():
      constant &= bool(np.ptp(runs["train_tokens"].to_numpy(float))
                       <= 1e-6 * runs["train_tokens"].max())
    if constant and runs["total_params"].nunique() >= min_sizes:
      out[str(group)] = runs.sort_values("total_params", kind="stable")
  return out


def family_spearman(df: pd.DataFrame, column: str) -> dict[str, float]:
  """Spearman correlation of ``column`` with total parameters, per fixed-active family (NaN
  when the column is constant within the family)."""
  out = {}
  for group, runs in families(df).items():
    if column in runs and runs[column].notna().sum() >= 3:
      rho = (stats.spearmanr(runs["total_params"], runs[column], nan_policy="omit").statistic
             if runs[column].nunique() > 1 else np.nan)
      out[group] = float(rho)
  return out


def spearman_intervals(df: pd.DataFrame, column: str,
                       boot: ItemBootstrap | None) -> dict[str, dict]:
  """Bootstrap intervals of ``family_spearman`` per family and of their mean ("mean"):
  items are resampled jointly for all models, and resamples where a correlation is undefined
  (ties everywhere) are left out of its interval."""
  rhos = family_spearman(df, column)
  fams = families(df)
  reps = {g: boot.replicates_of(column, fams[g]["name"]) if boot is not None else None
          for g in rhos}
  if not rhos or any(r is None for r in reps.values()):
    return {**{g: no_interval(r) for g, r in rhos.items()}, "mean": no_interval(mean_finite(rhos))}
  per_family = {g: rank_correlation(fams[g]["total_params"].to_numpy(float), reps[g])
                for g in rhos}
  out = {g: boot.interval(rhos[g], reps) for g, reps in per_family.items()}
  out["mean"] = boot.interval(mean_finite(rhos),
                              pd.DataFrame(per_family).mean(axis=1).to_numpy())
  return out


def no_interval(estimate: float = float("nan")) -> dict[str, Any]:
  """``{"estimate", "se", "ci"}`` of a statistic without replicates (NaN interval)."""
  return {"estimate": float(estimate), "se": float("nan"), "ci": list(NAN_CI)}


def statistic_interval(runs: pd.DataFrame, columns: Iterable[str],
                       fn: Callable[[dict[str, np.ndarray]], np.ndarray],
                       boot: ItemBootstrap | None) -> dict[str, Any]:
  """``fn`` of the models ``runs`` with its bootstrap interval over items.

  ``fn`` maps ``{column: values [M, X]}`` (rows in ``runs`` order) to a statistic [X]; it is
  called once on the table's values (X = 1: the estimate) and once on the replicates (X = B)
  when every column has per-item data. Returns ``{"estimate", "se", "ci"}`` (NaN interval
  without replicates)."""
  columns = list(columns)
  point = {c: (runs[c].to_numpy(float) if c in runs else np.full(len(runs), np.nan))[:, None]
           for c in columns}
  with np.errstate(invalid="ignore", divide="ignore"):
    estimate = float(np.asarray(fn(point))[0])
  reps = ({c: boot.replicates_of(c, runs["name"]) for c in columns} if boot is not None
          else {})
  if not reps or any(r is None for r in reps.values()):
    return no_interval(estimate)
  with np.errstate(invalid="ignore", divide="ignore"):
    return interval(estimate, np.asarray(fn(reps), np.float64), boot.level)


def reasoning_at_chance(df: pd.DataFrame) -> str | None:
  """A sentence saying that no model's reasoning accuracy is above guessing (its 95% interval
  over items reaches the chance level 1/p), or None when some model is above chance. Reasoning
  verdicts read from noise around chance would be spurious."""
  if REASON_COL not in df or "reason_chance_accuracy" not in df:
    return None
  acc = df[REASON_COL].to_numpy(float)
  if "reason_accuracy_lo" in df:
    lower = df["reason_accuracy_lo"].to_numpy(float)
  else:  # normal approximation over the evaluated items
    count = df.get("reason_count", pd.Series(np.nan, index=df.index)).to_numpy(float)
    lower = acc - 1.96 * np.sqrt(acc * (1 - acc) / count)
  chance = float(df["reason_chance_accuracy"].max())
  if not np.isfinite(lower).any() or np.nanmax(lower) > chance:
    return None
  return (f"Reasoning accuracy is at chance for every model (best {np.nanmax(acc):.3f}, chance "
          f"1/p = {chance:.3f}; every 95% interval reaches chance): the reasoning suite was not "
          "learned beyond guessing at this budget, so this finding cannot be read.")


def train_loss_column(df: pd.DataFrame) -> str:
  """The pre-training loss a verdict reads: the training loss over the last 10% of steps when
  logged for every model, else the held-out loss."""
  return (TRAIN_LOSS_COL if TRAIN_LOSS_COL in df and df[TRAIN_LOSS_COL].notna().all()
          else "final_eval_loss")
