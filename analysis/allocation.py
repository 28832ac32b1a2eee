"""Compute-optimal allocation (N*, D*) for a FLOP budget, with bootstrap intervals.

For a budget C = k N D (k = 6 FLOPs per parameter per token, Kaplan et al. 2020 and Hoffmann
et al. 2022; for MoE, N is the active parameter count) the compute-optimal model minimises the
fitted loss along the iso-FLOP line. For the Chinchilla form this has the closed form of
Hoffmann et al. (2022, eq. 4), N* = G (C/k)^(beta/(alpha+beta)); here it is found numerically
for any law that reads N and D (the MoE laws at fixed E, G or S too), on a fine grid in log N
refined by a parabola through the three best grid points, for the point estimate and for every
bootstrap replicate at once. The tests check the result against eq. 4.

Axes: B parameter vectors (point estimate or bootstrap replicates), G grid points in log N.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from analysis.bootstrap import BootstrapResult, interval
from analysis.fitting import FitResult

FLOPS_PER_PARAM_TOKEN = 6.0
# Search N* within this many decades either side of sqrt(C / k), at this resolution.
_SEARCH_DECADES = 8.0
_GRID_STEP_DECADES = 0.01


def optimal_n(fit: FitResult, theta_BP: np.ndarray, flops: float,
              flops_per_param_token: float = FLOPS_PER_PARAM_TOKEN,
              extra_inputs: Mapping[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Loss-minimising N on the iso-FLOP line for each parameter row; returns (N*_B, L*_B).

  N* is NaN where the minimum sits on the edge of the search range (no interior optimum,
  e.g. a replicate with a non-positive exponent).
  """
  law = fit.law
  if not {"N", "D"} <= set(law.input_names):
    raise ValueError(f"law {law.name!r} does not read both N and D; no allocation to optimise")
  extra = dict(extra_inputs or {})
  missing = set(law.input_names) - {"N", "D"} - set(extra)
  if missing:
    raise ValueError(f"law {law.name!r} needs fixed values for {sorted(missing)} "
                     "(pass extra_inputs, e.g. {'E': 64})")
  centre = 0.5 * np.log10(flops / flops_per_param_token)
  log10_n_G = np.arange(centre - _SEARCH_DECADES, centre + _SEARCH_DECADES + 1e-9,
                        _GRID_STEP_DECADES)
  n_G = 10.0 ** log10_n_G
  inputs = {"N": n_G, "D": flops / (flops_per_param_token * n_G)}
  inputs.update({k: np.full_like(n_G, v) for k, v in extra.items()})
  feats = law.features(inputs)
  with np.errstate(over="ignore", invalid="ignore"):
    log_loss_BG, _ = law.log_predict(np.atleast_2d(theta_BP), feats)
  log_loss_BG = np.where(np.isfinite(log_loss_BG), log_loss_BG, np.inf)
  best_B = np.argmin(log_loss_BG, axis=1)
  interior = (best_B > 0) & (best_B < len(n_G) - 1)
  i = np.clip(best_B, 1, len(n_G) - 2)
  rows = np.arange(len(best_B))
  y0, y1, y2 = (log_loss_BG[rows, i - 1], log_loss_BG[rows, i], log_loss_BG[rows, i + 1])
  curvature = y0 - 2.0 * y1 + y2
  with np.errstate(divide="ignore", invalid="ignore"):
    shift = np.clip(np.where(curvature > 0, 0.5 * (y0 - y2) / curvature, 0.0), -1.0, 1.0)
  log10_n_opt = log10_n_G[i] + shift * _GRID_STEP_DECADES
  # Vertex value of the parabola through the three points (log-loss at N*).
  log_loss_opt = y1 - 0.25 * (y0 - y2) * shift
  n_opt = np.where(interior, 10.0 ** log10_n_opt, np.nan)
  loss_opt = np.where(interior, np.exp(log_loss_opt), np.nan)
  return n_opt, loss_opt


def compute_optimal(fit: FitResult, flops: float, *, boot: BootstrapResult | None = None,
                    flops_per_param_token: float = FLOPS_PER_PARAM_TOKEN,
                    extra_inputs: Mapping[str, float] | None = None,
                    level: float = 0.95) -> dict:
  """N*, D*, tokens per parameter and loss at the optimum for one budget, with intervals.

  Args:
    fit: a fitted law reading N and D.
    flops: training compute budget C.
    boot: bootstrap replicates for intervals (point estimates only when None).
    flops_per_param_token: k in C = k N D.
    extra_inputs: fixed values of the law's other inputs (E, G or S).
    level: interval level.

  Returns:
    {"flops", "n_opt", "d_opt", "tokens_per_param", "loss_opt", "n_no_interior"}, each
    quantity as {"estimate", "se", "ci"} (se and ci NaN without ``boot``); n_no_interior
    counts replicates without an interior optimum (left out of the intervals).
  """
  n_pt, l_pt = optimal_n(fit, fit.theta[None], flops, flops_per_param_token, extra_inputs)
  if boot is None:
    reps_n, reps_l = np.full(0, np.nan), np.full(0, np.nan)
  else:
    reps_n, reps_l = optimal_n(fit, boot.theta_BP, flops, flops_per_param_token,
                               extra_inputs)
  to_d = lambda n: flops / (flops_per_param_token * n)
  return {
      "flops": float(flops),
      "n_opt": interval(n_pt[0], reps_n, level),
      "d_opt": interval(to_d(n_pt[0]), to_d(reps_n), level),
      "tokens_per_param": interval(to_d(n_pt[0]) / n_pt[0], to_d(reps_n) / reps_n, level),
      "loss_opt": interval(l_pt[0], reps_l, level),
      "n_no_interior": int(np.sum(~np.isfinite(reps_n))),
  }
