"""One verdict per finding of RESEARCH.md section 1, computed from a sweep's results table.

Each verdict is ``{"finding", "verdict", "numbers", "statement"}`` where ``verdict`` is
"reproduced", "not reproduced", "inconclusive" or "not tested"; the statement is plain text
with the numbers. Families are runs of equal active parameters (``family`` column, e.g.
``d64-k1``): within one, total parameters grow with the number of experts.

Memorization accuracy here is QA accuracy on facts whose QA pairs were in the training text
(``mem_train_accuracy``): a tiny model cannot yet extract facts it saw only in biographies
(``mem_accuracy``, reported beside it), so the trend the paper sees on TriviaQA is measured on
the facts a tiny model can store.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy import stats

MEMORIZATION_COL = "mem_train_accuracy"


def families(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
  """Runs of equal active parameters with at least 3 distinct total sizes, by group."""
  out = {}
  for group, runs in df.groupby("family"):
    if runs["total_params"].nunique() >= 3:
      out[str(group)] = runs.sort_values("total_params")
  return out


def family_spearman(df: pd.DataFrame, column: str) -> dict[str, float]:
  """Spearman correlation of ``column`` with total parameters, per family."""
  out = {}
  for group, runs in families(df).items():
    if column in runs and runs[column].notna().sum() >= 3:
      rho = stats.spearmanr(runs["total_params"], runs[column], nan_policy="omit").statistic
      out[group] = float(rho) if np.isfinite(rho) else 0.0
  return out


def _mean(values: dict[str, float]) -> float:
  return float(np.mean(list(values.values()))) if values else float("nan")


def _verdict(finding: int, verdict: str, statement: str, **numbers) -> dict[str, Any]:
  return {"finding": finding, "verdict": verdict, "statement": statement, "numbers": numbers}


def loss_vs_total(df: pd.DataFrame) -> dict[str, Any]:
  rhos = family_spearman(df, "final_eval_loss")
  if not rhos:
    return _verdict(1, "inconclusive", "No family has three total sizes.")
  mean = _mean(rhos)
  verdict = "reproduced" if mean <= -0.5 else "not reproduced"
  return _verdict(1, verdict, f"Held-out pre-training loss vs total parameters at fixed active "
                  f"parameters: mean Spearman {mean:+.2f} over {len(rhos)} families "
                  "(negative = loss falls as total parameters grow).", spearman=rhos,
                  mean_spearman=mean)


def memorization_vs_total(df: pd.DataFrame) -> dict[str, Any]:
  rhos = family_spearman(df, MEMORIZATION_COL)
  test_rhos = family_spearman(df, "mem_accuracy")
  if not rhos:
    return _verdict(2, "inconclusive", "No memorization accuracy was measured.")
  mean = _mean(rhos)
  verdict = "reproduced" if mean >= 0.8 else "not reproduced"
  return _verdict(2, verdict, f"Memorization QA accuracy vs total parameters at fixed active "
                  f"parameters: mean Spearman {mean:+.2f} over {len(rhos)} families (held-out "
                  f"biography-only facts: {_mean(test_rhos):+.2f}).", spearman=rhos,
                  mean_spearman=mean, test_split_spearman=test_rhos)


def reasoning_vs_total(df: pd.DataFrame) -> dict[str, Any]:
  rhos = family_spearman(df, "reason_accuracy")
  if not rhos:
    return _verdict(3, "inconclusive", "No reasoning accuracy was measured.")
  interior_peaks, u_shapes = 0, 0
  for runs in families(df).values():
    acc = runs["reason_accuracy"].to_numpy()
    loss = runs.get("reason_task_loss", pd.Series(dtype=float)).to_numpy()
    interior_peaks += int(0 < int(np.nanargmax(acc)) < len(acc) - 1)
    if loss.size and np.isfinite(loss).all():
      u_shapes += int(0 < int(np.nanargmin(loss)) < len(loss) - 1)
  mean = _mean(rhos)
  saturating = interior_peaks > 0 or mean < _mean(family_spearman(df, MEMORIZATION_COL))
  verdict = "reproduced" if saturating and (interior_peaks or u_shapes) else "not reproduced"
  return _verdict(3, verdict, f"Reasoning accuracy vs total parameters: mean Spearman "
                  f"{mean:+.2f}; accuracy peaks inside the range in {interior_peaks} of "
                  f"{len(rhos)} families; reasoning task loss is U-shaped (interior minimum) in "
                  f"{u_shapes}.", spearman=rhos, interior_peaks=interior_peaks,
                  u_shaped_task_loss=u_shapes)


def top_k_effect(df: pd.DataFrame) -> dict[str, Any]:
  moe = df[df["num_experts"] > 1]
  pairs = []
  for (d_model, experts), runs in moe.groupby(["d_model", "num_experts"]):
    if runs["top_k"].nunique() >= 2:
      lo, hi = runs.sort_values("top_k").iloc[[0, -1]].itertuples()
      pairs.append({"d_model": int(d_model), "num_experts": int(experts),
                    "loss_change": float(hi.final_eval_loss / lo.final_eval_loss - 1),
                    "reason_change": float(getattr(hi, "reason_accuracy", np.nan)
                                           - getattr(lo, "reason_accuracy", np.nan))})
  if not pairs:
    return _verdict(4, "inconclusive", "No (d_model, E) cell was trained at two top-k values.")
  loss_change = float(np.mean([p["loss_change"] for p in pairs]))
  reason_change = float(np.nanmean([p["reason_change"] for p in pairs]))
  small_loss_effect = abs(loss_change) < 0.03
  verdict = "reproduced" if small_loss_effect and reason_change > 0 else "not reproduced"
  return _verdict(4, verdict, f"Raising top-k at fixed (d_model, E) changed held-out loss by "
                  f"{loss_change:+.1%} on average and reasoning accuracy by "
                  f"{reason_change:+.3f} over {len(pairs)} cells. Note: in this grid a larger k "
                  "also means more active parameters.", pairs=pairs)


def iso_flop(df: pd.DataFrame) -> dict[str, Any]:
  budgets = df["family"].astype(str).str.startswith("C").sum() if "family" in df else 0
  if not budgets:
    return _verdict(5, "not tested", "This preset trains no iso-FLOP sweep "
                    "(configs/sweeps/optimal_sparsity.py:isoflop_tiny runs one).")
  return _verdict(5, "inconclusive", "Iso-FLOP runs present; see the iso-FLOP figure.")


def test_time_compute(df: pd.DataFrame) -> dict[str, Any]:
  sc_cols = [c for c in df.columns if c == "reason_sc_accuracy"]
  if not sc_cols or df["reason_sc_accuracy"].isna().all():
    return _verdict(6, "not tested", "No self-consistency evaluation ran; GRPO post-training is "
                    "not implemented yet.")
  runs = df.dropna(subset=["reason_accuracy", "reason_sc_accuracy"])
  gain = float((runs["reason_sc_accuracy"] - runs["reason_accuracy"]).mean())
  rho = float(stats.spearmanr(runs["reason_accuracy"], runs["reason_sc_accuracy"]).statistic)
  verdict = "reproduced" if gain >= 0 and rho >= 0.5 else "inconclusive"
  return _verdict(6, verdict, f"Self-consistency changed reasoning accuracy by {gain:+.3f} on "
                  f"average and kept the models' order (Spearman {rho:+.2f} between greedy and "
                  "voted accuracy). GRPO post-training is not implemented yet.", mean_gain=gain,
                  order_spearman=rho)


def hyperparameters(df: pd.DataFrame) -> dict[str, Any]:
  del df
  return _verdict(7, "not tested", "Learning-rate and initialisation sweeps are not part of "
                  "this preset.")


FINDINGS: tuple[Callable[[pd.DataFrame], dict[str, Any]], ...] = (
    loss_vs_total, memorization_vs_total, reasoning_vs_total, top_k_effect, iso_flop,
    test_time_compute, hyperparameters)


def all_verdicts(df: pd.DataFrame) -> list[dict[str, Any]]:
  return [finding(df) for finding in FINDINGS]
