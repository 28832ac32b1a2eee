"""One verdict per finding of Nakamura et al. 2025 (listed in docs/optimal_sparsity.md), computed from the study's model table.

The table has one row per model (``seeds.by_model``: metrics averaged over seeds), so seeds
are never counted as different total sizes. Each verdict is ``{"finding", "verdict",
"numbers", "statement"}`` where ``verdict`` is "reproduced", "not reproduced",
"inconclusive" or "not tested"; the statement is plain text with the numbers. Each finding
reads only the groups its definition allows (``verdict_common``): findings 1 to 4 the
fixed-active families, finding 5 the iso-FLOP budgets (``verdicts_budget``), finding 6 the
models with self-consistency or GRPO results (``verdicts_posttrain``), finding 7 the
learning-rate / initialisation sweep (``verdicts_hparams``).

With an ``intervals.ItemBootstrap`` (per-item results of the runs), statistics built from
accuracies and task losses get 95% percentile-bootstrap intervals over evaluation items, and a
statistic compared with a threshold is "inconclusive" when its interval holds values on both
sides of the threshold (the items cannot tell). Intervals cover item sampling only, not seeds.
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

from moejax.study.intervals import ItemBootstrap
from moejax.study.verdict_common import (
    REASON_COL, REASON_LOSS_COL, ROUNDING, TRAIN_LOSS_COL, against, ci_text, decide,
    estimate_text, families, family_spearman, mean_finite, reasoning_at_chance, rho_text,
    spearman_intervals, statistic_interval, train_loss_column, verdict)
from moejax.study.verdicts_budget import iso_flop
from moejax.study.verdicts_hparams import hyperparameters
from moejax.study.verdicts_posttrain import test_time_compute

MEMORIZATION_COL = "mem_train_accuracy"
LOSS_EFFECT_SMALL = 0.03  # finding 4: |relative change of training loss| deemed "barely"
EQUAL_LOSS_POINTS = 5  # common training losses at which finding 4 compares top-k


def loss_vs_total(df: pd.DataFrame, boot: ItemBootstrap | None = None) -> dict[str, Any]:
  """Finding 1 on the pre-training loss, i.e. the loss on the training distribution. The paper
  trains for less than one epoch, where that equals a held-out loss; the tiny study repeats its
  data ~30 times, and its held-out split holds facts about new people (unpredictable by
  construction), so the training loss (``train_loss_tail``) is the faithful quantity. The
  held-out loss is reported beside it. Pre-training losses have no item bootstrap."""
  del boot
  column = train_loss_column(df)
  rhos = family_spearman(df, column)
  if not rhos:
    return verdict(1, "inconclusive", "No family of fixed active parameters has three total "
                   "sizes.")
  mean = mean_finite(rhos)
  held_out = mean_finite(family_spearman(df, "final_eval_loss"))
  outcome = ("inconclusive" if not np.isfinite(mean)
             else "reproduced" if mean <= -0.5 + ROUNDING else "not reproduced")
  name = ("training loss (mean over the last 10% of steps)" if column == TRAIN_LOSS_COL
          else "held-out loss")
  return verdict(1, outcome, f"Pre-training {name} vs total parameters at fixed active "
                 f"parameters: mean Spearman {mean:+.2f} over {len(rhos)} families (negative = "
                 f"loss falls as total parameters grow; reproduced at <= -0.50); held-out loss "
                 f"on the test split: {rho_text(held_out)}.", spearman=rhos,
                 mean_spearman=mean, column=column, held_out_mean_spearman=held_out)


def memorization_vs_total(df: pd.DataFrame, boot: ItemBootstrap | None = None
                          ) -> dict[str, Any]:
  rhos = family_spearman(df, MEMORIZATION_COL)
  test_rhos = family_spearman(df, "mem_accuracy")
  if not rhos:
    return verdict(2, "inconclusive", "No memorization accuracy was measured in a family of "
                   "fixed active parameters.", mean_spearman=float("nan"),
                   mean_spearman_ci=[float("nan")] * 2)
  found = spearman_intervals(df, MEMORIZATION_COL, boot)
  mean, ci = found["mean"]["estimate"], found["mean"]["ci"]
  defined = sum(np.isfinite(r) for r in rhos.values())
  if not defined:
    return verdict(2, "inconclusive", "Memorization QA accuracy is constant within every "
                   f"family ({len(rhos)}; e.g. all zero): no trend with total parameters to "
                   "rank.", spearman=rhos, mean_spearman=mean, mean_spearman_ci=ci)
  return verdict(2, against(mean, ci, 0.8), f"Memorization QA accuracy vs total parameters "
                 f"at fixed active parameters: mean Spearman {mean:+.2f}{ci_text(ci)} over "
                 f"{defined} families (held-out biography-only facts: "
                 f"{rho_text(mean_finite(test_rhos))}); reproduced at >= +0.80.",
                 spearman=rhos, spearman_ci={g: v["ci"] for g, v in found.items() if g != "mean"},
                 mean_spearman=mean, mean_spearman_ci=ci, test_split_spearman=test_rhos)


def interior_advantage(values_MX: np.ndarray) -> np.ndarray:
  """[X]: the best interior model's lead over both ends, ``max_i min(v_i - v_0, v_i - v_last)``
  over interior rows i (rows sorted by total parameters). Positive: an interior peak."""
  interior_IX = values_MX[1:-1]
  return np.max(np.minimum(interior_IX - values_MX[:1], interior_IX - values_MX[-1:]), axis=0)


def reasoning_vs_total(df: pd.DataFrame, boot: ItemBootstrap | None = None) -> dict[str, Any]:
  """Finding 3: reasoning saturates or regresses with total parameters at fixed active ones.

  Per family: Spearman of reasoning accuracy and of task loss with total parameters, and the
  shape: ``interior_advantage`` of accuracy (an interior peak) and of minus the task loss (a
  U-shaped loss), each with its interval over items. Reproduced when some family has an
  interior peak or a U-shaped task loss whose advantage is established above 0; not reproduced
  when every family's two shape statistics are established below 0 (an end model beats every
  interior one: monotone); else inconclusive."""
  rhos = family_spearman(df, REASON_COL)
  if not rhos:
    return verdict(3, "inconclusive", "No reasoning accuracy was measured in a family of "
                   "fixed active parameters.")
  if not any(np.isfinite(r) for r in rhos.values()):
    return verdict(3, "inconclusive", "Reasoning accuracy is constant within every family "
                   f"({len(rhos)}; e.g. all zero): no shape to read.", spearman=rhos)
  acc_rho = spearman_intervals(df, REASON_COL, boot)
  loss_rho = spearman_intervals(df, REASON_LOSS_COL, boot) if REASON_LOSS_COL in df else {}
  shapes, signs = {}, []
  for group, runs in families(df).items():
    if group not in rhos:
      continue
    peak = statistic_interval(runs, [REASON_COL],
                              lambda v: interior_advantage(v[REASON_COL]), boot)
    u_shape = statistic_interval(runs, [REASON_LOSS_COL],
                                 lambda v: interior_advantage(-v[REASON_LOSS_COL]), boot)
    shapes[group] = {"accuracy_peak_advantage": peak, "task_loss_u_depth": u_shape}
    signs.append((decide(peak), decide(u_shape)))
  peaks = sum(p == 1 for p, _ in signs)
  u_shapes = sum(u == 1 for _, u in signs)
  monotone = sum(p == -1 and u == -1 for p, u in signs)
  at_chance = reasoning_at_chance(df)
  if at_chance:
    outcome = "inconclusive"
  elif peaks or u_shapes:
    outcome = "reproduced"
  else:
    outcome = "not reproduced" if monotone == len(signs) else "inconclusive"
  per_family = "; ".join(
      f"{g}: accuracy Spearman {estimate_text(acc_rho[g], '+.2f')}, interior peak lead "
      f"{estimate_text(s['accuracy_peak_advantage'])}, task-loss Spearman "
      f"{estimate_text(loss_rho.get(g, {'estimate': np.nan, 'ci': [np.nan] * 2}), '+.2f')}, "
      f"U depth {estimate_text(s['task_loss_u_depth'])}" for g, s in shapes.items())
  statement = (f"Reasoning vs total parameters at fixed active parameters ({per_family}). "
               f"An interior peak of accuracy is established in {peaks} of {len(signs)} "
               f"families and a U-shaped task loss in {u_shapes}; {monotone} are monotone "
               "(both leads below 0). Reproduced when a peak or U is established (lead's "
               "interval above 0)." + (f" {at_chance}" if at_chance else ""))
  return verdict(3, outcome, statement, spearman=rhos,
                 spearman_ci={g: v["ci"] for g, v in acc_rho.items() if g != "mean"},
                 task_loss_spearman={g: v["estimate"] for g, v in loss_rho.items()
                                     if g != "mean"},
                 shapes=shapes, interior_peaks=peaks, u_shaped_task_loss=u_shapes,
                 monotone_families=monotone)


def _family_top_k(runs: pd.DataFrame) -> int:
  """A family's top-k: its MoE models' (a dense baseline has d_ff = k * expert d_ff)."""
  moe = runs[runs["num_experts"] > 1]
  return int(moe["top_k"].max()) if len(moe) else 1


def interpolate_at(x_M: np.ndarray, y_MX: np.ndarray, grid_G: np.ndarray) -> np.ndarray:
  """Piecewise-linear ``y(x)`` at ``grid_G`` for every column of ``y_MX`` -> [G, X]."""
  order = np.argsort(x_M, kind="stable")
  x_M, y_MX = x_M[order], y_MX[order]
  idx_G = np.clip(np.searchsorted(x_M, grid_G, side="right") - 1, 0, len(x_M) - 2)
  dx_G = x_M[idx_G + 1] - x_M[idx_G]
  w_G = np.where(dx_G > 0, (grid_G - x_M[idx_G]) / np.where(dx_G > 0, dx_G, 1), 0.0)
  return y_MX[idx_G] * (1 - w_G[:, None]) + y_MX[idx_G + 1] * w_G[:, None]


def _equal_loss_pairs(df: pd.DataFrame, loss_col: str, boot) -> list[dict[str, Any]]:
  """Per d_model with families of two top-k: reasoning accuracy of the larger-k family minus
  the smaller-k one's, both interpolated in training loss at ``EQUAL_LOSS_POINTS`` common
  losses spanning their overlap, averaged (with its interval over items)."""
  by_d: dict[int, dict[int, pd.DataFrame]] = {}
  for runs in families(df, min_sizes=2).values():
    by_d.setdefault(int(runs["d_model"].iloc[0]), {})[_family_top_k(runs)] = runs
  out = []
  for d_model, by_k in sorted(by_d.items()):
    if len(by_k) < 2:
      continue
    (k_lo, low), (k_hi, high) = sorted(by_k.items())[0], sorted(by_k.items())[-1]
    loss_lo, loss_hi = low[loss_col].to_numpy(float), high[loss_col].to_numpy(float)
    span = [max(loss_lo.min(), loss_hi.min()), min(loss_lo.max(), loss_hi.max())]
    entry = {"d_model": d_model, "k_low": k_lo, "k_high": k_hi, "loss_range": span}
    if not span[0] < span[1]:
      out.append({**entry, "reason_change": None})
      continue
    grid_G = np.linspace(*span, EQUAL_LOSS_POINTS)
    both = pd.concat([low, high])

    def change(v, n=len(low)):
      acc_MX = v[REASON_COL]
      return (interpolate_at(loss_hi, acc_MX[n:], grid_G)
              - interpolate_at(loss_lo, acc_MX[:n], grid_G)).mean(axis=0)

    out.append({**entry, "reason_change": statistic_interval(both, [REASON_COL], change, boot)})
  return out


def top_k_effect(df: pd.DataFrame, boot: ItemBootstrap | None = None) -> dict[str, Any]:
  """Finding 4: top-k barely moves pre-training loss, and at equal training loss a larger k
  reasons better.

  At fixed total parameters (same d_model and E, smallest vs largest k): the relative change
  of the training loss and the change of reasoning accuracy (interval over items). At equal
  training loss: ``_equal_loss_pairs``. Reproduced when the mean loss change is below
  ``LOSS_EFFECT_SMALL`` and the equal-loss accuracy change is established above 0; not
  reproduced when the loss moves more or the equal-loss change is established below 0."""
  loss_col = train_loss_column(df)
  moe = df[df["num_experts"] > 1]
  cells = []
  for (d_model, experts), runs in moe.groupby(["d_model", "num_experts"]):
    if runs["top_k"].nunique() >= 2:
      cells.append(runs.sort_values("top_k").iloc[[0, -1]])
  equal_loss = [p for p in _equal_loss_pairs(df, loss_col, boot) if p["reason_change"]]
  if not cells and not equal_loss:
    return verdict(4, "inconclusive", "No (d_model, E) cell was trained at two top-k values "
                   "and no two families of one d_model overlap in training loss.")
  pairs = [{"d_model": int(c["d_model"].iloc[0]), "num_experts": int(c["num_experts"].iloc[0]),
            "loss_change": float(c[loss_col].iloc[1] / c[loss_col].iloc[0] - 1)}
           for c in cells]
  fixed_total = {"estimate": float("nan"), "ci": [float("nan")] * 2}
  if cells:
    stacked = pd.concat([c.iloc[[0]] for c in cells] + [c.iloc[[1]] for c in cells])
    fixed_total = statistic_interval(
        stacked, [REASON_COL], lambda v: (v[REASON_COL][len(cells):]
                                          - v[REASON_COL][:len(cells)]).mean(axis=0), boot)
  loss_change = float(np.mean([p["loss_change"] for p in pairs])) if pairs else float("nan")
  eq_est = float(np.mean([p["reason_change"]["estimate"] for p in equal_loss])) if equal_loss \
      else float("nan")
  eq_signs = [decide(p["reason_change"]) for p in equal_loss]
  loss_small = abs(loss_change) < LOSS_EFFECT_SMALL if pairs else None
  at_chance = reasoning_at_chance(df)
  if at_chance:
    outcome = "inconclusive"
  elif (loss_small is False) or (eq_signs and all(s == -1 for s in eq_signs)):
    outcome = "not reproduced"
  elif loss_small and eq_signs and all(s == 1 for s in eq_signs):
    outcome = "reproduced"
  else:
    outcome = "inconclusive"
  eq_text = ("; ".join(f"d{p['d_model']} k={p['k_high']} minus k={p['k_low']} over training "
                       f"losses {p['loss_range'][0]:.3f}-{p['loss_range'][1]:.3f}: "
                       f"{estimate_text(p['reason_change'])}" for p in equal_loss)
             or "no two families of one d_model overlap in training loss")
  statement = (f"At fixed total parameters (same d_model and E, {len(pairs)} cells), raising "
               f"top-k changed the {loss_col} by {loss_change:+.1%} on average (barely moves "
               f"at < {LOSS_EFFECT_SMALL:.0%}) and reasoning accuracy by "
               f"{estimate_text(fixed_total)} (a larger k also means more active parameters). "
               f"At equal training loss, reasoning accuracy of the larger k minus the smaller: "
               f"{eq_text}. Reproduced when the loss barely moves and the equal-loss change is "
               "above 0." + (f" {at_chance}" if at_chance else ""))
  return verdict(4, outcome, statement, pairs=pairs, loss_column=loss_col,
                 mean_loss_change=loss_change, fixed_total_reason_change=fixed_total,
                 equal_loss=equal_loss, equal_loss_mean_change=eq_est)


FINDINGS: tuple[Callable[..., dict[str, Any]], ...] = (
    loss_vs_total, memorization_vs_total, reasoning_vs_total, top_k_effect, iso_flop,
    test_time_compute, hyperparameters)


def all_verdicts(df: pd.DataFrame, boot: ItemBootstrap | None = None) -> list[dict[str, Any]]:
  """Every finding's verdict from the model table (``seeds.by_model``); ``boot`` adds
  intervals over evaluation items."""
  return [finding(df, boot) for finding in FINDINGS]
