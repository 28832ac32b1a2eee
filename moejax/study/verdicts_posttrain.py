"""Finding 6: neither test-time compute (self-consistency) nor GRPO post-training rescues overly
sparse models on reasoning; both raise accuracy but keep the models' order.

Self-consistency: majority vote over n sampled answers (``reason_sc{n}_accuracy``, n = the
study's ``eval.sc_ns``), compared between the smallest and the largest n over every model with
results: the mean gain and the Spearman correlation of the models' accuracies (the order),
each with its interval over items. GRPO (``grpo_reason_accuracy``, present when the study ran
with ``--grpo``): the mean gain over greedy pre-trained accuracy and the order's Spearman; GRPO's
evaluation keeps no per-item data, so its part has no interval. "Rescue" is read within the
fixed-active families only (``verdict_common.families`` with two or more sizes): the sparsest
(largest-E) model trailing its family's best before and leading it after.

Each part is "reproduced" when it raises accuracy while keeping the order (Spearman >=
``ORDER_KEPT``) and rescuing no family, "not reproduced" when it raises accuracy but reorders
or rescues, or when it lowers accuracy; the verdict is "not reproduced" when any part is,
"reproduced" when every part is, else "inconclusive".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analysis.results_schema import sc_accuracy_columns
from moejax.study.intervals import ItemBootstrap, rank_correlation
from moejax.study.verdict_common import (REASON_COL, ci_text, families, reasoning_at_chance,
                                         rho_text, verdict)

ORDER_KEPT = 0.5  # Spearman between the models' accuracies before and after
GRPO_COL = "grpo_reason_accuracy"


def _sparsest_deficits(df: pd.DataFrame, column: str) -> dict[str, float]:
  """Per fixed-active family: best accuracy minus the sparsest (largest-E) model's."""
  out = {}
  for group, runs in families(df, min_sizes=2).items():
    if runs[column].notna().all():
      sparsest = runs["num_experts"].idxmax()
      out[group] = float(runs[column].max() - runs.loc[sparsest, column])
  return out


def _rescued(df: pd.DataFrame, before: str, after: str) -> tuple[list[str], list[str], dict]:
  deficits = {"before": _sparsest_deficits(df, before), "after": _sparsest_deficits(df, after)}
  trailed = sorted(g for g, d in deficits["before"].items() if d > 0)
  rescued = sorted(g for g in trailed if deficits["after"].get(g, np.inf) <= 0)
  return trailed, rescued, deficits


def _part_outcome(raises: bool, lowers: bool, order: float, rescued: list[str]) -> str:
  if not np.isfinite(order):
    return "inconclusive"
  if raises:
    return "not reproduced" if order < ORDER_KEPT or rescued else "reproduced"
  return "not reproduced" if lowers else "inconclusive"


def self_consistency(df: pd.DataFrame, boot: ItemBootstrap | None) -> dict[str, Any] | None:
  """The self-consistency part (None when fewer than two n were evaluated)."""
  cols = sc_accuracy_columns(df)
  ns = list(cols)
  if len(ns) < 2:
    return None
  runs = df.dropna(subset=list(cols.values()))
  if len(runs) < 2:
    return {"outcome": "inconclusive", "ns": ns,
            "text": "Fewer than two models have self-consistency results."}
  lo_n, hi_n = ns[0], ns[-1]
  acc = {n: runs[c].to_numpy(float) for n, c in cols.items()}
  reps = {n: boot.replicates_of(c, runs["name"]) if boot is not None else None
          for n, c in cols.items()}
  mean_by_n = {n: float(a.mean()) for n, a in acc.items()}
  gain = mean_by_n[hi_n] - mean_by_n[lo_n]
  paired = reps[lo_n] is not None and reps[hi_n] is not None
  nan_ci = [float("nan")] * 2
  gain_ci = (boot.interval(gain, (reps[hi_n] - reps[lo_n]).mean(axis=0))["ci"] if paired
             else nan_ci)
  order = {n: float(rank_correlation(acc[lo_n], acc[n][:, None])[0]) for n in ns}
  order_ci = (boot.interval(order[hi_n], np.array([
      rank_correlation(x, y[:, None])[0] for x, y in zip(reps[lo_n].T, reps[hi_n].T)]))["ci"]
              if paired else nan_ci)
  trailed, rescued, deficits = _rescued(runs, cols[lo_n], cols[hi_n])
  raises = gain_ci[0] > 0 if np.isfinite(gain_ci[0]) else gain > 0
  lowers = gain_ci[1] < 0 if np.isfinite(gain_ci[1]) else gain < 0
  outcome = _part_outcome(raises, lowers, order[hi_n], rescued)
  why = (" Accuracies are equal across models at some n (e.g. all zero): no order to compare."
         if not np.isfinite(order[hi_n]) else "")
  curve = ", ".join(f"n={n}: {mean_by_n[n]:.3f}" for n in ns)
  text = (f"Self-consistency (mean reasoning accuracy over {len(runs)} models: {curve}; greedy "
          f"{runs.get(REASON_COL, pd.Series(np.nan)).mean():.3f}) changed accuracy by "
          f"{gain:+.3f}{ci_text(gain_ci, '+.3f')} from n={lo_n} to n={hi_n}; the models' order "
          f"at n={hi_n} vs n={lo_n} has Spearman {rho_text(order[hi_n])}{ci_text(order_ci)} "
          f"(kept at >= {ORDER_KEPT:+.2f}); the sparsest model of a family became its best in "
          f"{len(rescued)} of {len(trailed)} families where it trailed at n={lo_n}.{why}")
  ranking = {n: runs.sort_values(c, ascending=False, kind="stable")["name"].tolist()
             for n, c in cols.items()}
  return {"outcome": outcome, "text": text, "ns": ns, "mean_accuracy_by_n": mean_by_n,
          "mean_gain": gain, "mean_gain_ci": gain_ci, "order_spearman_by_n": order,
          "order_spearman": order[hi_n], "order_spearman_ci": order_ci,
          "sparsest_deficit_by_n": {lo_n: deficits["before"], hi_n: deficits["after"]},
          "rescued_families": rescued, "ranking_by_n": ranking}


def grpo_part(df: pd.DataFrame) -> dict[str, Any] | None:
  """The GRPO part (None without ``grpo_reason_accuracy``)."""
  if GRPO_COL not in df or REASON_COL not in df:
    return None
  runs = df.dropna(subset=[GRPO_COL, REASON_COL])
  if len(runs) < 2:
    return {"outcome": "inconclusive", "text": "Fewer than two models have GRPO results."}
  before, after = runs[REASON_COL].to_numpy(float), runs[GRPO_COL].to_numpy(float)
  gain = float(np.mean(after - before))
  order = float(rank_correlation(before, after[:, None])[0])
  trailed, rescued, _ = _rescued(runs, REASON_COL, GRPO_COL)
  outcome = _part_outcome(gain > 0, gain < 0, order, rescued)
  text = (f"GRPO changed mean reasoning accuracy by {gain:+.3f} over {len(runs)} models (no "
          f"per-item interval); the order after vs before has Spearman {rho_text(order)}; "
          f"the sparsest model became its family's best in {len(rescued)} of {len(trailed)} "
          "families where it trailed.")
  return {"outcome": outcome, "text": text, "mean_gain": gain, "order_spearman": order,
          "rescued_families": rescued}


def test_time_compute(df: pd.DataFrame, boot: ItemBootstrap | None = None) -> dict[str, Any]:
  """Finding 6 from its self-consistency and GRPO parts (module docstring)."""
  sc = self_consistency(df, boot)
  grpo = grpo_part(df)
  parts = {name: part for name, part in (("self_consistency", sc), ("grpo", grpo)) if part}
  if not parts:
    return verdict(6, "not tested", "Self-consistency was not evaluated at two or more n "
                   "(config.eval.sc_samples, config.eval.sc_ns) and no model was post-trained "
                   "with GRPO (--grpo).")
  outcomes = [p["outcome"] for p in parts.values()]
  at_chance = reasoning_at_chance(df)
  if at_chance:
    outcome = "inconclusive"
  elif "not reproduced" in outcomes:
    outcome = "not reproduced"
  else:
    outcome = "reproduced" if all(o == "reproduced" for o in outcomes) else "inconclusive"
  missing = ("" if grpo else " GRPO was not run (--grpo).") + (
      "" if sc else " Self-consistency was not evaluated at two or more n.")
  statement = " ".join(f"{p['text']} [{name}: {p['outcome']}]" for name, p in parts.items())
  statement += missing + (f" {at_chance}" if at_chance else "")
  numbers = {k: v for k, v in (sc or {}).items() if k not in ("outcome", "text")}
  return verdict(6, outcome, statement, **numbers,
                 parts={n: p["outcome"] for n, p in parts.items()},
                 grpo={k: v for k, v in grpo.items() if k != "text"} if grpo else None)
