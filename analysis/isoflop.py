"""Iso-FLOP analysis (Hoffmann et al. 2022, approach 2), in log N or in sparsity.

Runs are grouped by training compute; within a budget the loss is fitted with a parabola in
x (log10 of total or active parameters, or the sparsity 1 - k/E as in Abnar et al. 2025), and
its vertex is the budget's optimum. The optimum's interval comes from a residual bootstrap
of the parabola (resampling residuals rather than runs, so that a budget with five runs never
draws a degenerate design); replicates whose parabola is not convex have no optimum and are
counted. The interval measures noise only: the loss is not exactly a parabola in log N, so a
wide span of sizes biases the vertex (a known caveat of approach 2); keep each budget's runs
within a decade or two of the optimum. Across budgets, ``optimum_scaling`` fits
x* = slope * log10 C + intercept (for x = log10 N this is Hoffmann et al.'s exponent a in
N* ~ C^a), propagating every budget's replicates into the interval of the slope.

Axes: B bootstrap replicates, R runs of one budget, C budgets.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis.bootstrap import interval


def budget_groups(flops_R: np.ndarray, rtol: float = 0.05) -> np.ndarray:
  """Group id per run: runs whose compute is within ``rtol`` of their group's smallest.

  Sweeps aim runs at a few budgets but hit them only approximately (rounded step counts).
  """
  flops_R = np.asarray(flops_R, dtype=np.float64)
  order = np.argsort(flops_R, kind="stable")
  group_R = np.empty(len(flops_R), dtype=np.int64)
  gid, anchor = -1, -np.inf
  for r in order:
    if flops_R[r] > anchor * (1.0 + rtol):
      gid, anchor = gid + 1, flops_R[r]
    group_R[r] = gid
  return group_R


def isoflop_budgets(df: pd.DataFrame, budget_col: str = "train_flops", rtol: float = 0.05,
                    min_runs: int = 3) -> list[tuple[float, pd.DataFrame]]:
  """(budget, runs) per iso-FLOP budget, budgets ascending: runs of equal training compute
  (``budget_groups``) whose active parameters take two or more values, with at least
  ``min_runs`` runs. A family of fixed active parameters trained for a fixed number of tokens
  also spends equal FLOPs, but trades nothing against steps: it is not an iso-FLOP budget.
  The budget is the median compute of its runs."""
  if budget_col not in df or "active_params" not in df:
    return []
  sub = df[np.isfinite(pd.to_numeric(df[budget_col], errors="coerce"))]
  groups = budget_groups(sub[budget_col].to_numpy(), rtol)
  out = []
  for g in np.unique(groups):
    runs = sub[groups == g]
    if len(runs) >= min_runs and runs["active_params"].nunique() >= 2:
      out.append((float(np.median(runs[budget_col])), runs))
  return sorted(out, key=lambda b: b[0])


@dataclasses.dataclass(frozen=True)
class ParabolaOptimum:
  """One budget's parabola fit: vertex, its interval and the evidence behind it."""
  budget: float
  num_runs: int
  coef: np.ndarray  # [3]: c2, c1, c0 of loss = c2 x^2 + c1 x + c0
  x_opt: dict  # {"estimate", "se", "ci"}
  loss_opt: dict
  frac_convex: float  # share of replicates with a convex parabola
  interior: bool  # vertex inside the sampled x range
  x_opt_replicates: np.ndarray  # [B], NaN where not convex
  x_R: np.ndarray  # the budget's runs: x (log10 when fitted in log space)
  loss_R: np.ndarray  # and loss


def fit_parabola_optimum(x_R: np.ndarray, loss_R: np.ndarray, budget: float, *,
                         num_resamples: int = 1000, seed: int = 0,
                         level: float = 0.95) -> ParabolaOptimum:
  """Least-squares parabola loss(x), its vertex, and a residual-bootstrap interval.

  With exactly three runs the parabola interpolates and the residuals are zero: the interval
  then collapses to the point and only says that nothing measures the noise; use four or more
  runs per budget. A concave fit (no minimum) has no optimum: estimate and interval are NaN.
  """
  x_R, loss_R = np.asarray(x_R, np.float64), np.asarray(loss_R, np.float64)
  if len(x_R) < 3 or len(np.unique(x_R)) < 3:
    raise ValueError(f"budget {budget:g}: a parabola needs at least 3 distinct x values")
  design_R3 = np.stack([x_R * x_R, x_R, np.ones_like(x_R)], axis=1)
  pinv_3R = np.linalg.pinv(design_R3)
  coef_3 = pinv_3R @ loss_R
  fitted_R = design_R3 @ coef_3
  resid_R = loss_R - fitted_R
  dof = len(x_R) - 3
  scale = np.sqrt(len(x_R) / dof) if dof > 0 else 0.0
  rng = np.random.default_rng(seed)
  draws_BR = rng.integers(0, len(x_R), size=(num_resamples, len(x_R)))
  y_BR = fitted_R + scale * resid_R[draws_BR]
  coef_B3 = y_BR @ pinv_3R.T
  convex_B = coef_B3[:, 0] > 0
  with np.errstate(divide="ignore", invalid="ignore"):
    x_opt_B = np.where(convex_B, -coef_B3[:, 1] / (2.0 * coef_B3[:, 0]), np.nan)
    l_opt_B = np.where(convex_B, coef_B3[:, 2] - coef_B3[:, 1] ** 2 / (4.0 * coef_B3[:, 0]),
                       np.nan)
  c2, c1, c0 = coef_3
  if c2 > 0:
    x_opt, l_opt = -c1 / (2.0 * c2), c0 - c1 * c1 / (4.0 * c2)
  else:  # No minimum: the replicates' vertices would describe nothing; report none.
    x_opt = l_opt = np.nan
    x_opt_B, l_opt_B = np.full_like(x_opt_B, np.nan), np.full_like(l_opt_B, np.nan)
  return ParabolaOptimum(
      budget=float(budget), num_runs=len(x_R), coef=coef_3,
      x_opt=interval(x_opt, x_opt_B, level), loss_opt=interval(l_opt, l_opt_B, level),
      frac_convex=float(np.mean(convex_B)),
      interior=bool(np.isfinite(x_opt) and x_R.min() <= x_opt <= x_R.max()),
      x_opt_replicates=x_opt_B, x_R=x_R, loss_R=loss_R)


def isoflop_optima(df: pd.DataFrame, *, budget_col: str, x_col: str, loss_col: str,
                   log_x: bool = True, budget_rtol: float = 0.05, min_runs: int = 3,
                   num_resamples: int = 1000, seed: int = 0,
                   level: float = 0.95) -> list[ParabolaOptimum]:
  """One ``ParabolaOptimum`` per compute budget of a results table.

  Args:
    df: results table.
    budget_col: training compute column (e.g. "train_flops").
    x_col: the variable of the parabola (e.g. "total_params", "active_params", "sparsity").
    loss_col: the loss to minimise (e.g. "final_eval_loss", "reason_task_loss").
    log_x: fit in log10(x) (parameters) rather than x (sparsity).
    budget_rtol: relative tolerance grouping runs into one budget (``budget_groups``).
    min_runs: budgets with fewer runs (or fewer distinct x) are skipped.
    num_resamples, seed, level: residual bootstrap settings.

  Returns:
    Optima sorted by budget; a budget's ``budget`` is the median compute of its runs.
  """
  sub = df[[budget_col, x_col, loss_col]].dropna()
  x_all = np.log10(sub[x_col].to_numpy(np.float64)) if log_x else sub[x_col].to_numpy(np.float64)
  groups = budget_groups(sub[budget_col].to_numpy(), budget_rtol)
  out = []
  for g in np.unique(groups):
    mask = groups == g
    if mask.sum() < min_runs or len(np.unique(x_all[mask])) < 3:
      continue
    budget = float(np.median(sub[budget_col].to_numpy()[mask]))
    out.append(fit_parabola_optimum(x_all[mask], sub[loss_col].to_numpy()[mask], budget,
                                    num_resamples=num_resamples, seed=seed + int(g),
                                    level=level))
  return sorted(out, key=lambda o: o.budget)


def optima_table(optima: list[ParabolaOptimum]) -> pd.DataFrame:
  """The optima as a flat table (one row per budget)."""
  return pd.DataFrame([{
      "budget": o.budget, "num_runs": o.num_runs,
      "x_opt": o.x_opt["estimate"], "x_opt_lo": o.x_opt["ci"][0], "x_opt_hi": o.x_opt["ci"][1],
      "loss_opt": o.loss_opt["estimate"], "frac_convex": o.frac_convex,
      "interior": o.interior} for o in optima])


def optimum_scaling(optima: list[ParabolaOptimum], level: float = 0.95) -> dict:
  """Fits x* = slope log10(C) + intercept across budgets, with a propagated interval.

  Only budgets with an interior, convex optimum are used. Each bootstrap replicate draws one
  vertex replicate per budget (replicates are independent across budgets) and refits the
  line; replicates with a missing vertex are dropped.
  """
  usable = [o for o in optima if o.interior and np.isfinite(o.x_opt["estimate"])]
  if len(usable) < 2:
    raise ValueError("need at least two budgets with an interior optimum")
  log_c = np.log10([o.budget for o in usable])
  x_opt = np.array([o.x_opt["estimate"] for o in usable])
  slope, intercept = np.polyfit(log_c, x_opt, 1)
  reps_CB = np.stack([o.x_opt_replicates for o in usable])
  ok_B = np.all(np.isfinite(reps_CB), axis=0)
  design_C2 = np.stack([log_c, np.ones_like(log_c)], axis=1)
  coef_2B = np.linalg.pinv(design_C2) @ reps_CB[:, ok_B]
  return {"slope": interval(slope, coef_2B[0], level),
          "intercept": interval(intercept, coef_2B[1], level),
          "num_budgets": len(usable), "num_replicates_used": int(ok_B.sum())}
