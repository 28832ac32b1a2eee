"""Finding 7: learning rate and initialisation move the generalization gap like sparsity does.

The generalization gap is train_eval minus test: ``reason_train_accuracy - reason_accuracy``
(the verdict's metric), ``mem_train_accuracy - mem_accuracy`` and the task-loss gap
``reason_task_loss - reason_train_task_loss`` (reported). The learning-rate / initialisation
sweep (``--preset=small``) tags its runs with ``lr`` and ``init_scale`` (the multiplier of the
fan-in init std, ``model.init_scale``); a model (d_model, E, k) trained at two or more values
of one knob, the other at its base value (init scale 1; the model's most common learning rate),
gives that knob's effect: the gap at the largest value minus the gap at the smallest, with its
interval over items, averaged over models. Sparsity's effect is read in the fixed-active
families: the gap of the sparsest (largest-E) model minus the densest's, averaged.

Reproduced when sparsity and at least one knob move the gap (intervals excluding 0); not
reproduced when sparsity moves it and every knob's interval lies within half of sparsity's
effect (the knobs demonstrably move it less); inconclusive otherwise. Not tested without the
sweep.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from moejax.study.intervals import ItemBootstrap
from moejax.study.verdict_common import (decide, estimate_text, families, no_interval,
                                         statistic_interval, verdict)

GAPS = {  # name: (train-split column, test column, sign so that positive = a larger gap)
    "reason_accuracy_gap": ("reason_train_accuracy", "reason_accuracy", 1.0),
    "mem_accuracy_gap": ("mem_train_accuracy", "mem_accuracy", 1.0),
    "reason_task_loss_gap": ("reason_train_task_loss", "reason_task_loss", -1.0),
}
VERDICT_GAP = "reason_accuracy_gap"
KNOBS = {"lr": "learning rate", "init_scale": "init scale"}
BASE_INIT_SCALE = 1.0


def gap_values(runs: pd.DataFrame, name: str) -> pd.Series:
  train, test, sign = GAPS[name]
  if train not in runs or test not in runs:
    return pd.Series(np.nan, index=runs.index)
  return sign * (runs[train] - runs[test])


def _end_difference(pairs: list[tuple[pd.DataFrame, pd.DataFrame]], name: str,
                    boot: ItemBootstrap | None) -> dict[str, Any]:
  """Mean over pairs of gap(second row set) - gap(first), with its interval over items."""
  if not pairs:
    return no_interval()
  train, test, sign = GAPS[name]
  n = sum(len(low) for low, _ in pairs)
  rows = pd.concat([a for a, _ in pairs] + [b for _, b in pairs])  # the low rows, then the high
  return statistic_interval(rows, [train, test], lambda v: sign * (
      (v[train][n:] - v[test][n:]) - (v[train][:n] - v[test][:n])).mean(axis=0), boot)


def knob_rows(df: pd.DataFrame, knob: str) -> list[pd.DataFrame]:
  """Per model (d_model, E, k, active parameters, training tokens) trained at two or more
  values of ``knob`` with the other knob at its base value: those rows, sorted by ``knob``."""
  other = next(k for k in KNOBS if k != knob)
  if knob not in df or other not in df:
    return []
  out = []
  model = [c for c in ("d_model", "num_experts", "top_k", "active_params", "train_tokens")
           if c in df]  # one model trained for one budget (dense baselines differ in d_ff)
  for _, runs in df.dropna(subset=list(KNOBS)).groupby(model):
    base = (BASE_INIT_SCALE if other == "init_scale"
            else float(runs["lr"].mode().iloc[0]))  # the model's most common learning rate
    rows = runs[np.isclose(runs[other], base)].sort_values(knob)
    if rows[knob].nunique() >= 2:
      out.append(rows)
  return out


def knob_pairs(df: pd.DataFrame, knob: str) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
  """(smallest-value row, largest-value row) of ``knob`` per model (``knob_rows``)."""
  return [(rows.iloc[[0]], rows.iloc[[-1]]) for rows in knob_rows(df, knob)]


def hyperparameters(df: pd.DataFrame, boot: ItemBootstrap | None = None) -> dict[str, Any]:
  """Finding 7 (module docstring)."""
  knobs = {k: knob_pairs(df, k) for k in KNOBS}
  if not any(knobs.values()):
    return verdict(7, "not tested", "No model was trained at two learning rates or two "
                   "initialisation scales (the lr / init sweep of --preset=small).")
  sparse_pairs = [(runs.iloc[[0]], runs.loc[[runs["num_experts"].idxmax()]])
                  for runs in families(df, min_sizes=2).values()]
  effects = {name: {"sparsity": _end_difference(sparse_pairs, name, boot),
                    **{k: _end_difference(p, name, boot) for k, p in knobs.items() if p}}
             for name in GAPS}
  main = effects[VERDICT_GAP]
  sparsity = main["sparsity"]
  moved = [k for k in knobs if k in main and decide(main[k]) != 0]
  half = abs(sparsity["estimate"]) / 2 if np.isfinite(sparsity["estimate"]) else np.nan

  def within_half(entry):
    lo, hi = entry["ci"]
    if not (np.isfinite(lo) and np.isfinite(hi)):
      lo = hi = entry["estimate"]
    return bool(np.isfinite(lo) and -half < lo and hi < half)

  if decide(sparsity) != 0 and moved:
    outcome = "reproduced"
  elif decide(sparsity) != 0 and all(within_half(main[k]) for k in knobs if k in main):
    outcome = "not reproduced"
  else:
    outcome = "inconclusive"
  ranges = {k: sorted(set(float(v) for a, b in p for v in (a[k].iloc[0], b[k].iloc[0])))
            for k, p in knobs.items() if p}
  effect_text = "; ".join(
      f"{KNOBS.get(what, what)} ({len(knobs.get(what, sparse_pairs))} models"
      + (f", {ranges[what][0]:g} -> {ranges[what][-1]:g}" if what in ranges else
         ", densest -> sparsest of each family") + f"): {estimate_text(entry)}"
      for what, entry in main.items())
  statement = (f"Change of the reasoning generalization gap (train_eval minus test accuracy) "
               f"from the smallest to the largest value of each knob: {effect_text}. "
               "Reproduced when sparsity and a knob both move the gap (interval excluding 0); "
               "not reproduced when every knob's interval lies within half of sparsity's "
               "effect.")
  return verdict(7, outcome, statement, effects=effects, knob_values=ranges,
                 knobs_moving_gap=moved)
