"""One verdict per finding of Nakamura et al. 2025 (listed in docs/optimal_sparsity.md), computed from the study's model table.

The table has one row per model (``seeds.by_model``: metrics averaged over seeds), so seeds
are never counted as different total sizes. Each verdict is ``{"finding", "verdict",
"numbers", "statement"}`` where ``verdict`` is "reproduced", "not reproduced",
"inconclusive" or "not tested"; the statement is plain text with the numbers. Families are
models of equal active parameters (``family`` column, e.g. ``d64-k1``): within one, total
parameters grow with the number of experts.

With an ``intervals.ItemBootstrap`` (per-item results of the runs), statistics built from
accuracies get 95% percentile-bootstrap intervals over evaluation items, and a statistic
compared with a threshold is "inconclusive" when its interval holds values on both sides of
the threshold (the items cannot tell). Intervals cover item sampling only, not seeds.
Correlations of constant accuracies (e.g. all zero) are undefined, not zero: such families
are left out, and a finding with none left is "inconclusive".

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

from analysis.results_schema import sc_accuracy_columns
from moejax.study.intervals import ItemBootstrap, rank_correlation

MEMORIZATION_COL = "mem_train_accuracy"
ORDER_KEPT = 0.5  # Spearman between the models' accuracies at the smallest and largest n


def families(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
  """Runs of equal active parameters with at least 3 distinct total sizes, by group."""
  out = {}
  for group, runs in df.groupby("family"):
    if runs["total_params"].nunique() >= 3:
      out[str(group)] = runs.sort_values("total_params")
  return out


def family_spearman(df: pd.DataFrame, column: str) -> dict[str, float]:
  """Spearman correlation of ``column`` with total parameters, per family (NaN when the
  column is constant within the family)."""
  out = {}
  for group, runs in families(df).items():
    if column in runs and runs[column].notna().sum() >= 3:
      rho = (stats.spearmanr(runs["total_params"], runs[column], nan_policy="omit").statistic
             if runs[column].nunique() > 1 else np.nan)
      out[group] = float(rho)
  return out


def _mean(values: dict[str, float]) -> float:
  finite = [v for v in values.values() if np.isfinite(v)]
  return float(np.mean(finite)) if finite else float("nan")


def spearman_intervals(df: pd.DataFrame, column: str,
                       boot: ItemBootstrap | None) -> dict[str, dict]:
  """Bootstrap intervals of ``family_spearman`` per family and of their mean ("mean"):
  items are resampled jointly for all models, and resamples where a correlation is undefined
  (ties everywhere) are left out of its interval."""
  rhos = family_spearman(df, column)
  fams = families(df)
  reps = {g: boot.replicates_of(column, fams[g]["name"]) if boot is not None else None
          for g in rhos}
  empty = {"estimate": float("nan"), "se": float("nan"), "ci": [float("nan"), float("nan")]}
  if not rhos or any(r is None for r in reps.values()):
    return {**{g: {**empty, "estimate": r} for g, r in rhos.items()},
            "mean": {**empty, "estimate": _mean(rhos)}}
  per_family = {g: rank_correlation(fams[g]["total_params"].to_numpy(float), reps[g])
                for g in rhos}
  out = {g: boot.interval(rhos[g], reps) for g, reps in per_family.items()}
  out["mean"] = boot.interval(_mean(rhos), pd.DataFrame(per_family).mean(axis=1).to_numpy())
  return out


def _against(estimate: float, ci, threshold: float) -> str:
  """"reproduced" when ``estimate`` >= ``threshold``, else "not reproduced"; "inconclusive"
  when the estimate is undefined or its interval holds values on both sides of the
  threshold."""
  if not np.isfinite(estimate):
    return "inconclusive"
  lo, hi = ci
  if np.isfinite(lo) and np.isfinite(hi) and lo < threshold <= hi:
    return "inconclusive"
  return "reproduced" if estimate >= threshold else "not reproduced"


def _rho_text(rho: float) -> str:
  return f"{rho:+.2f}" if np.isfinite(rho) else "undefined"


def _ci_text(ci) -> str:
  lo, hi = ci
  return f" [95% CI {lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) and np.isfinite(hi) else ""


def _verdict(finding: int, verdict: str, statement: str, **numbers) -> dict[str, Any]:
  return {"finding": finding, "verdict": verdict, "statement": statement, "numbers": numbers}


def reasoning_at_chance(df: pd.DataFrame) -> str | None:
  """A sentence saying that no model's reasoning accuracy is above guessing (its 95% interval
  over items reaches the chance level 1/p), or None when some model is above chance. Reasoning
  verdicts read from noise around chance would be spurious."""
  if "reason_accuracy" not in df or "reason_chance_accuracy" not in df:
    return None
  acc = df["reason_accuracy"].to_numpy(float)
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


TRAIN_LOSS_COL = "train_loss_tail"


def loss_vs_total(df: pd.DataFrame) -> dict[str, Any]:
  """Finding 1 on the pre-training loss, i.e. the loss on the training distribution. The paper
  trains for less than one epoch, where that equals a held-out loss; the tiny study repeats its
  data ~30 times, and its held-out split holds facts about new people (unpredictable by
  construction), so the training loss (``train_loss_tail``) is the faithful quantity. The
  held-out loss is reported beside it."""
  column = TRAIN_LOSS_COL if TRAIN_LOSS_COL in df and df[TRAIN_LOSS_COL].notna().all() else (
      "final_eval_loss")
  rhos = family_spearman(df, column)
  if not rhos:
    return _verdict(1, "inconclusive", "No family has three total sizes.")
  mean = _mean(rhos)
  held_out = _mean(family_spearman(df, "final_eval_loss"))
  verdict = ("inconclusive" if not np.isfinite(mean)
             else "reproduced" if mean <= -0.5 else "not reproduced")
  name = ("training loss (mean over the last 10% of steps)" if column == TRAIN_LOSS_COL
          else "held-out loss")
  return _verdict(1, verdict, f"Pre-training {name} vs total parameters at fixed active "
                  f"parameters: mean Spearman {mean:+.2f} over {len(rhos)} families (negative = "
                  f"loss falls as total parameters grow); held-out loss on the test split: "
                  f"{_rho_text(held_out)}.", spearman=rhos, mean_spearman=mean, column=column,
                  held_out_mean_spearman=held_out)


def memorization_vs_total(df: pd.DataFrame, boot: ItemBootstrap | None = None
                          ) -> dict[str, Any]:
  rhos = family_spearman(df, MEMORIZATION_COL)
  test_rhos = family_spearman(df, "mem_accuracy")
  if not rhos:
    return _verdict(2, "inconclusive", "No memorization accuracy was measured.",
                    mean_spearman=float("nan"), mean_spearman_ci=[float("nan")] * 2)
  intervals = spearman_intervals(df, MEMORIZATION_COL, boot)
  mean, ci = intervals["mean"]["estimate"], intervals["mean"]["ci"]
  defined = sum(np.isfinite(r) for r in rhos.values())
  if not defined:
    return _verdict(2, "inconclusive", "Memorization QA accuracy is constant within every "
                    f"family ({len(rhos)}; e.g. all zero): no trend with total parameters to "
                    "rank.", spearman=rhos, mean_spearman=mean, mean_spearman_ci=ci)
  return _verdict(2, _against(mean, ci, 0.8), f"Memorization QA accuracy vs total parameters "
                  f"at fixed active parameters: mean Spearman {mean:+.2f}{_ci_text(ci)} over "
                  f"{defined} families (held-out biography-only facts: "
                  f"{_rho_text(_mean(test_rhos))}); reproduced at >= +0.80.", spearman=rhos,
                  spearman_ci={g: v["ci"] for g, v in intervals.items() if g != "mean"},
                  mean_spearman=mean, mean_spearman_ci=ci, test_split_spearman=test_rhos)


def reasoning_vs_total(df: pd.DataFrame) -> dict[str, Any]:
  rhos = family_spearman(df, "reason_accuracy")
  if not rhos:
    return _verdict(3, "inconclusive", "No reasoning accuracy was measured.")
  if not any(np.isfinite(r) for r in rhos.values()):
    return _verdict(3, "inconclusive", "Reasoning accuracy is constant within every family "
                    f"({len(rhos)}; e.g. all zero): no shape to read.", spearman=rhos)
  at_chance = reasoning_at_chance(df)
  if at_chance:
    return _verdict(3, "inconclusive", at_chance, spearman=rhos)
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
  at_chance = reasoning_at_chance(df)
  verdict = "inconclusive" if at_chance else verdict
  return _verdict(4, verdict, f"Raising top-k at fixed (d_model, E) changed held-out loss by "
                  f"{loss_change:+.1%} on average and reasoning accuracy by "
                  f"{reason_change:+.3f} over {len(pairs)} cells. Note: in this grid a larger k "
                  "also means more active parameters." + (f" {at_chance}" if at_chance else ""),
                  pairs=pairs)


def iso_flop(df: pd.DataFrame) -> dict[str, Any]:
  budgets = df["family"].astype(str).str.startswith("C").sum() if "family" in df else 0
  if not budgets:
    return _verdict(5, "not tested", "This preset trains no iso-FLOP sweep "
                    "(configs/sweeps/optimal_sparsity.py:isoflop_tiny runs one).")
  return _verdict(5, "inconclusive", "Iso-FLOP runs present; see the iso-FLOP figure.")


def _sparsest_deficits(df: pd.DataFrame, column: str) -> dict[str, float]:
  """Per family (>= 2 sparsity levels): best accuracy minus the sparsest model's accuracy."""
  out = {}
  for group, runs in df.groupby("family"):
    sparsity = 1 - runs["top_k"] / runs["num_experts"].clip(lower=1)
    if sparsity.nunique() >= 2:
      out[str(group)] = float(runs[column].max() - runs.loc[sparsity.idxmax(), column])
  return out


def test_time_compute(df: pd.DataFrame, boot: ItemBootstrap | None = None) -> dict[str, Any]:
  """Finding 6 (self-consistency part): majority vote over more samples raises reasoning
  accuracy but keeps the models' order, and does not lift the sparsest model of a family."""
  cols = sc_accuracy_columns(df)
  ns = list(cols)
  grpo = " GRPO post-training is not part of this verdict."
  if len(ns) < 2:
    return _verdict(6, "not tested", "Self-consistency was not evaluated at two or more n "
                    "(config.eval.sc_samples, config.eval.sc_ns)." + grpo)
  runs = df.dropna(subset=list(cols.values()))
  if len(runs) < 2:
    return _verdict(6, "inconclusive", "Fewer than two models have self-consistency results."
                    + grpo)
  lo_n, hi_n = ns[0], ns[-1]
  acc = {n: runs[c].to_numpy(float) for n, c in cols.items()}
  reps = {n: boot.replicates_of(c, runs["name"]) if boot is not None else None
          for n, c in cols.items()}
  mean_by_n = {n: float(a.mean()) for n, a in acc.items()}
  gain = mean_by_n[hi_n] - mean_by_n[lo_n]
  paired = reps[lo_n] is not None and reps[hi_n] is not None
  gain_ci = (boot.interval(gain, (reps[hi_n] - reps[lo_n]).mean(axis=0))["ci"] if paired
             else [float("nan")] * 2)
  order = {n: float(rank_correlation(acc[lo_n], acc[n][:, None])[0]) for n in ns}
  order_ci = (boot.interval(order[hi_n], np.array([
      rank_correlation(x, y[:, None])[0] for x, y in zip(reps[lo_n].T, reps[hi_n].T)]))["ci"]
              if paired else [float("nan")] * 2)
  deficits = {n: _sparsest_deficits(runs, cols[n]) for n in (lo_n, hi_n)}
  trailed = [g for g, d in deficits[lo_n].items() if d > 0]
  rescued = sorted(g for g in trailed if deficits[hi_n][g] <= 0)
  ranking = {n: runs.sort_values(c, ascending=False, kind="stable")["name"].tolist()
             for n, c in cols.items()}
  raises = gain_ci[0] > 0 if np.isfinite(gain_ci[0]) else gain > 0
  lowers = gain_ci[1] < 0 if np.isfinite(gain_ci[1]) else gain < 0
  why = ""
  at_chance = reasoning_at_chance(runs)
  if not np.isfinite(order[hi_n]):
    verdict = "inconclusive"
    why = " Accuracies are equal across models at some n (e.g. all zero): no order to compare."
  elif at_chance:
    verdict, why = "inconclusive", f" {at_chance}"
  elif raises and (order[hi_n] < ORDER_KEPT or rescued):
    verdict = "not reproduced"
  elif raises:
    verdict = "reproduced"
  else:
    verdict = "not reproduced" if lowers else "inconclusive"
  curve = ", ".join(f"n={n}: {mean_by_n[n]:.3f}" for n in ns)
  statement = (f"Majority vote over n sampled answers (mean reasoning accuracy over "
               f"{len(runs)} models: {curve}; greedy "
               f"{runs.get('reason_accuracy', pd.Series(np.nan)).mean():.3f}) changed accuracy "
               f"by {gain:+.3f}"
               f"{_ci_text(gain_ci)} from n={lo_n} to n={hi_n}; the models' order at n={hi_n} "
               f"vs n={lo_n} has Spearman {_rho_text(order[hi_n])}{_ci_text(order_ci)} (kept "
               f"at >= "
               f"{ORDER_KEPT:+.2f}); the sparsest model of a family became its best in "
               f"{len(rescued)} of {len(trailed)} families where it trailed at n={lo_n}."
               f"{why}{grpo}")
  return _verdict(6, verdict, statement, ns=ns, mean_accuracy_by_n=mean_by_n, mean_gain=gain,
                  mean_gain_ci=gain_ci, order_spearman_by_n=order, order_spearman=order[hi_n],
                  order_spearman_ci=order_ci, sparsest_deficit_by_n=deficits,
                  rescued_families=rescued, ranking_by_n=ranking)


def hyperparameters(df: pd.DataFrame) -> dict[str, Any]:
  del df
  return _verdict(7, "not tested", "Learning-rate and initialisation sweeps are not part of "
                  "this preset.")


FINDINGS: tuple[Callable[[pd.DataFrame], dict[str, Any]], ...] = (
    loss_vs_total, memorization_vs_total, reasoning_vs_total, top_k_effect, iso_flop,
    test_time_compute, hyperparameters)
_WITH_INTERVALS = (memorization_vs_total, test_time_compute)


def all_verdicts(df: pd.DataFrame, boot: ItemBootstrap | None = None) -> list[dict[str, Any]]:
  """Every finding's verdict from the model table (``seeds.by_model``); ``boot`` adds
  intervals over evaluation items."""
  return [finding(df, boot) if finding in _WITH_INTERVALS else finding(df)
          for finding in FINDINGS]
