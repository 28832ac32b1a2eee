"""Bootstrap confidence intervals for a fitted scaling law.

Besiroglu et al. (2024) re-derived Hoffmann et al.'s approach-3 fit and showed that its
reported intervals were implausibly narrow; they used the nonparametric bootstrap: resample
the runs with replacement, refit, and read intervals off the refitted parameters. This module
does the same, with two choices made explicit:

* Each resample is a vector of multinomial counts over the runs, used as weights of the
  Huber terms (identical to refitting on the resampled rows, and vectorisable).
* A resample is refitted only from the few best *distinct* optima of the full fit's grid
  (``FitResult.best_starts``), not from the whole grid. A resample perturbs the objective
  slightly, so its optimum lies in one of the basins that the full grid already found; the
  few best basins are where the resampled optimum can move to, and refitting from their
  minima costs ~1/1000 of a grid per resample (1,000 resamples take seconds, not hours).
  The result of every start is kept and the best per resample is used, so a resample whose
  best basin changes is still counted correctly. ``analysis`` tests check that this agrees
  with full-grid refits on sample resamples.

Percentile intervals are reported; the standard error is the standard deviation of the
bootstrap replicates. A resample's optimiser that does not converge is kept (its objective is
still the best found) and counted in ``n_unconverged``.

Axes: B resamples, S starts per resample, R data rows, P parameters.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from analysis.fitting import FitResult


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
  """Refitted parameters of every resample and the summaries derived from them.

  Attributes:
    fit: the full-data fit (its optimum is the point estimate).
    theta_BP: refitted parameter vectors, one per resample.
    objective_B: refitted objective per resample.
    n_unconverged: resamples whose best start did not meet the stopping criterion.
    seconds: wall time of the refits.
  """
  fit: FitResult
  theta_BP: np.ndarray
  objective_B: np.ndarray
  n_unconverged: int
  seconds: float

  @property
  def num_resamples(self) -> int:
    return len(self.theta_BP)

  def replicates(self) -> dict[str, np.ndarray]:
    """Reported quantities (paper notation) of every resample, each [B]."""
    return self.fit.law.reported(self.theta_BP)

  def summary(self, level: float = 0.95) -> dict[str, dict]:
    """{name: {"estimate", "se", "ci": [lo, hi]}} for every reported quantity."""
    point = self.fit.params()
    return {name: interval(point[name], reps, level)
            for name, reps in self.replicates().items()}

  def derived(self, fn: Callable[[np.ndarray], np.ndarray], level: float = 0.95) -> dict:
    """Interval of any function of theta (e.g. an allocation), fn([S, P]) -> [S]."""
    point = float(np.asarray(fn(self.fit.theta[None]))[0])
    return interval(point, np.asarray(fn(self.theta_BP)), level)


def interval(estimate: float, replicates_B: np.ndarray, level: float = 0.95) -> dict:
  """Point estimate, bootstrap standard error and percentile interval at ``level``."""
  reps = np.asarray(replicates_B, dtype=np.float64)
  reps = reps[np.isfinite(reps)]
  if reps.size < 2:
    return {"estimate": float(estimate), "se": float("nan"),
            "ci": [float("nan"), float("nan")]}
  tail = 100.0 * (1.0 - level) / 2.0
  lo, hi = np.percentile(reps, [tail, 100.0 - tail])
  return {"estimate": float(estimate), "se": float(np.std(reps, ddof=1)),
          "ci": [float(lo), float(hi)]}


def resample_counts(num_rows: int, num_resamples: int, seed: int,
                    groups_R: np.ndarray | None = None) -> np.ndarray:
  """Multinomial resampling counts [B, R] (a bootstrap sample as row weights).

  With ``groups_R`` (e.g. a run's model size), whole groups are resampled (cluster
  bootstrap): rows of one group are not independent draws when they share a model.
  """
  rng = np.random.default_rng(seed)
  if groups_R is None:
    return rng.multinomial(num_rows, np.full(num_rows, 1.0 / num_rows),
                           size=num_resamples).astype(np.float64)
  _, group_of_row = np.unique(np.asarray(groups_R), return_inverse=True)
  num_groups = int(group_of_row.max()) + 1
  group_counts = rng.multinomial(num_groups, np.full(num_groups, 1.0 / num_groups),
                                 size=num_resamples)
  return group_counts[:, group_of_row].astype(np.float64)


def bootstrap_fit(fit: FitResult, num_resamples: int = 1000, *, seed: int = 0,
                  num_starts: int = 4, groups: np.ndarray | None = None,
                  max_iter: int = 2000) -> BootstrapResult:
  """Refits ``fit`` on ``num_resamples`` bootstrap resamples of its rows.

  Args:
    fit: a full-data ``FitResult`` (``analysis.fitting.fit_law``).
    num_resamples: B.
    seed: resampling seed (results are deterministic given the seed).
    num_starts: distinct optima of the full grid used as starts for every resample.
    groups: optional group label per row for a cluster bootstrap (see
      ``resample_counts``).
    max_iter: iteration cap per start.

  Returns:
    A ``BootstrapResult``.
  """
  start_time = time.perf_counter()
  starts_SP = fit.best_starts(num_starts)
  num_s = len(starts_SP)
  counts_BR = resample_counts(fit.num_rows, num_resamples, seed, groups)
  weights_XR = np.repeat(counts_BR, num_s, axis=0)  # X = B * S rows, resample-major.
  theta0_XP = np.tile(starts_SP, (num_resamples, 1))
  theta_XP, f_X, conv_X, _ = fit.problem.minimize(theta0_XP, weights_XR, max_iter=max_iter)
  f_BS = f_X.reshape(num_resamples, num_s)
  best_S = np.argmin(f_BS, axis=1)
  pick = np.arange(num_resamples) * num_s + best_S
  return BootstrapResult(fit=fit, theta_BP=theta_XP[pick], objective_B=f_X[pick],
                         n_unconverged=int(np.sum(~conv_X[pick])),
                         seconds=time.perf_counter() - start_time)

