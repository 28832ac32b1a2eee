"""Fitting a scaling law: Huber loss on log-loss, L-BFGS from a grid of initialisations.

Hoffmann et al. (2022, approach 3) minimise sum_i Huber_delta(log Lhat_i - log L_i) from every
point of a grid of initialisations and keep the best. Besiroglu et al. (2024) showed that the
published fit was under-determined, so a fit here reports, beside the optimum, the objective,
the residuals, and how the grid's starts agree (``FitResult.stability``); intervals come from
``analysis.bootstrap``.

The grid is optimised with the batched L-BFGS of ``analysis.optimize`` (all starts at once);
the best start is then polished with scipy's L-BFGS-B and analytic gradients, so the reported
optimum is a scipy L-BFGS-B solution. After ``ABANDON_AFTER`` iterations, starts whose
objective is still above ``ABANDON_RATIO`` times the best are stopped: they sit in degenerate
regions (an exponent at 0 turns a power-law term into a constant that trades off against E)
where L-BFGS crawls for thousands of iterations toward optima tens of times worse than the
best; they are counted as abandoned in ``FitResult.stability``.

Axes: S starts, R data rows (runs), P parameters of the law, F free (not fixed) parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from analysis import huber as huber_lib
from analysis.laws.base import ScalingLaw
from analysis.problem import Problem

# A start counts as reaching the best optimum when its objective is within this relative gap.
NEAR_BEST_RTOL = 1e-4
ABANDON_AFTER = 200
ABANDON_RATIO = 5.0


@dataclasses.dataclass(frozen=True)
class FitResult:
  """A fitted law with everything needed to judge it and to bootstrap it.

  Attributes:
    law: the functional form.
    theta: best parameter vector [P] (fixed entries included), in ``law.param_names`` order.
    problem: the data, fixed parameters and optimiser coordinates (for refits).
    objective: sum of Huber losses at ``theta``.
    residuals: log Lhat - log L per row [R] (positive: the law over-predicts the loss).
    starts_theta: optimised parameter vector of every start [S, P].
    starts_objective: objective reached from every start [S].
    starts_converged: whether each start met the stopping criterion [S].
    starts_abandoned: whether each start was stopped as hopeless (see module docstring) [S].
  """
  law: ScalingLaw
  theta: np.ndarray
  problem: Problem
  objective: float
  residuals: np.ndarray
  starts_theta: np.ndarray
  starts_objective: np.ndarray
  starts_converged: np.ndarray
  starts_abandoned: np.ndarray

  @property
  def num_rows(self) -> int:
    return self.problem.num_runs

  @property
  def free(self) -> np.ndarray:
    """Indices [F] of the optimised parameters."""
    return self.problem.free

  def params(self) -> dict[str, float]:
    """Reported quantities at the optimum, in the paper's notation."""
    return {k: float(v[0]) for k, v in self.law.reported(self.theta[None]).items()}

  def predict(self, inputs: Mapping[str, Sequence[float]]) -> np.ndarray:
    """Predicted loss (not log) for new inputs."""
    feats = self.law.features({k: np.asarray(v, dtype=np.float64) for k, v in inputs.items()})
    log_pred, _ = self.law.log_predict(self.theta[None], feats)
    return np.exp(log_pred[0])

  def best_starts(self, count: int, max_ratio: float = 1.5) -> np.ndarray:
    """The optimum and up to ``count - 1`` other basins of the grid, best first [<=count, P].

    Starts are distinct basins when their objectives differ by more than ``NEAR_BEST_RTOL``
    (relative) from every one already taken: starts that stopped at different points of one
    flat valley share its objective and are represented once. Basins worse than
    ``max_ratio`` times the best objective are left out: a bootstrap resample does not
    reverse a gap that large (checked by the tests against full-grid refits).
    """
    order = np.argsort(self.starts_objective, kind="stable")
    best = self.objective
    chosen_theta, chosen_f = [self.theta], [best]
    tol = NEAR_BEST_RTOL * max(abs(best), 1e-12)
    for s in order:
      f = self.starts_objective[s]
      if len(chosen_theta) >= count or not np.isfinite(f) or f > max_ratio * best:
        break
      if all(abs(f - c) > tol for c in chosen_f):
        chosen_theta.append(self.starts_theta[s])
        chosen_f.append(f)
    return np.array(chosen_theta)

  def stability(self) -> dict:
    """How the grid's starts agree: the evidence that the optimum is not an accident.

    Returns a dict with the number of starts, how many converged (and how many were
    abandoned as hopeless), how many reached the best
    objective (within ``NEAR_BEST_RTOL``), and for every reported quantity the range over
    the starts that did. A wide range at equal objective means a flat direction: the data
    do not determine that parameter (Besiroglu et al. 2024).
    """
    f = self.starts_objective
    best = min(self.objective, float(np.min(f)))
    near = np.isfinite(f) & (f <= best + NEAR_BEST_RTOL * max(abs(best), 1e-12))
    rep = self.law.reported(self.starts_theta[near])
    return {
        "n_starts": int(len(f)),
        "n_converged": int(np.sum(self.starts_converged)),
        "n_abandoned": int(np.sum(self.starts_abandoned)),
        "n_near_best": int(np.sum(near)),
        "near_best_rtol": NEAR_BEST_RTOL,
        "near_best_range": {k: [float(np.min(v)), float(np.max(v))] for k, v in rep.items()},
    }

  def summary(self) -> dict:
    """Objective and residual statistics (log-space residuals)."""
    r = self.residuals
    return {"objective": float(self.objective), "n_rows": self.num_rows,
            "delta": self.problem.delta,
            "residual_rms": float(np.sqrt(np.mean(r * r))),
            "residual_max_abs": float(np.max(np.abs(r)))}


def fit_law(law: ScalingLaw, inputs: Mapping[str, Sequence[float]], loss: Sequence[float], *,
            delta: float = huber_lib.DEFAULT_DELTA, fixed: Mapping[str, float] | None = None,
            init_grid: np.ndarray | None = None, polish: bool = True,
            max_iter: int = 2000) -> FitResult:
  """Fits ``law`` to observed losses with the Huber loss on log-loss.

  Args:
    law: a ``ScalingLaw`` (see ``analysis.laws.get_law``).
    inputs: arrays [R] for each of ``law.input_names`` (e.g. {"N": ..., "D": ...}).
    loss: observed losses [R] (> 0).
    delta: Huber threshold on log-loss residuals (Hoffmann et al. 2022 use 1e-3).
    fixed: parameters pinned to a value (optimised names, e.g. {"log_b": -np.inf} drops the
      data term of the joint law); they are not optimised and keep their value in the
      bootstrap.
    init_grid: starting points [S, P] overriding the law's grid (fixed columns are
      overwritten with their fixed values).
    polish: refine the best start with scipy L-BFGS-B.
    max_iter: iteration cap per start.

  Returns:
    A ``FitResult``.
  """
  missing = [n for n in law.input_names if n not in inputs]
  if missing:
    raise KeyError(f"law {law.name!r} needs inputs {law.input_names}; missing {missing}")
  loss_R = np.asarray(loss, dtype=np.float64)
  if loss_R.ndim != 1 or loss_R.size == 0:
    raise ValueError("loss must be a non-empty 1-d array")
  if not np.all(np.isfinite(loss_R)) or np.any(loss_R <= 0):
    raise ValueError("losses must be finite and > 0 (the law is fitted on log-loss)")
  features = law.features({n: np.asarray(inputs[n], dtype=np.float64)
                           for n in law.input_names})
  log_loss_R = np.log(loss_R)
  fixed = dict(fixed or {})
  for name in fixed:
    law.index(name)  # Raises on unknown names.
  if len(fixed) == law.num_params:
    raise ValueError("every parameter is fixed; nothing to fit")
  grid_SP = law.grid(fixed) if init_grid is None else np.array(init_grid, dtype=np.float64)
  for name, value in fixed.items():
    grid_SP[:, law.index(name)] = value
  problem = Problem.create(law, features, log_loss_R, delta, grid_SP[0].copy(), tuple(fixed))

  starts_SP, f_S, conv_S, aband_S = problem.minimize(
      grid_SP, max_iter=max_iter, abandon=(ABANDON_AFTER, ABANDON_RATIO))
  if not np.any(np.isfinite(f_S)):
    raise RuntimeError(f"no start of the grid gave a finite objective for law {law.name!r}")
  best = int(np.argmin(f_S))
  theta_P, objective = starts_SP[best].copy(), float(f_S[best])
  if polish:
    polished, f_pol = problem.polish(theta_P)
    if f_pol <= objective:
      theta_P, objective = polished, f_pol
  log_pred, _ = law.log_predict(theta_P[None], features)
  return FitResult(law=law, theta=theta_P, problem=problem, objective=objective,
                   residuals=log_pred[0] - log_loss_R, starts_theta=starts_SP,
                   starts_objective=f_S, starts_converged=conv_S,
                   starts_abandoned=aband_S)
