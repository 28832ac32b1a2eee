"""Fitting a scaling law: Huber loss on log-loss, L-BFGS from a grid of initialisations.

Hoffmann et al. (2022, approach 3) minimise sum_i Huber_delta(log Lhat_i - log L_i) from every
point of a grid of initialisations and keep the best. Besiroglu et al. (2024) showed that the
published fit was under-determined, so a fit here reports, beside the optimum, the objective,
the residuals, and how the grid's starts agree (``FitResult.stability``); intervals come from
``analysis.bootstrap``.

The grid is optimised with the batched L-BFGS of ``analysis.optimize`` (all starts at once);
the best start is then polished with scipy's L-BFGS-B and analytic gradients, so the reported
optimum is a scipy L-BFGS-B solution.

Axes: S starts, R data rows (runs), P parameters of the law, F free (not fixed) parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import scipy.optimize

from analysis import huber as huber_lib
from analysis.laws.base import ScalingLaw
from analysis.optimize import minimize_batched

# Starts are optimised in chunks so that the per-term arrays [S, R, P] stay near 32 MB.
_MAX_CHUNK_ELEMENTS = 4_000_000
# A start counts as reaching the best optimum when its objective is within this relative gap.
NEAR_BEST_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Problem:
  """A law, its data and its fixed parameters, in the optimiser's centred coordinates.

  The optimiser works on x = M theta (``ScalingLaw.centering_matrix``), an exact linear
  change of variables that decorrelates intercepts from exponents; only the entries ``free``
  of x are optimised, the others keep the values of ``template_x``.
  """
  law: ScalingLaw
  features: Mapping[str, np.ndarray]
  log_loss: np.ndarray
  delta: float
  free: np.ndarray
  m_PP: np.ndarray
  template_x: np.ndarray

  @classmethod
  def create(cls, law, features, log_loss, delta, theta_template_P, fixed_names):
    free = np.array([i for i, n in enumerate(law.param_names) if n not in fixed_names],
                    dtype=np.int64)
    m_PP = law.centering_matrix(features, tuple(fixed_names))
    template_x = _apply(m_PP, theta_template_P[None])[0]
    return cls(law, features, log_loss, delta, free, m_PP, template_x)

  @property
  def minv_PP(self) -> np.ndarray:
    # M = I + U where U maps feature coefficients into intercepts; no intercept is a feature
    # coefficient, so U @ U = 0 and M^-1 = I - U exactly (no round-off: -inf entries for
    # dropped terms stay exact).
    return 2.0 * np.eye(len(self.m_PP)) - self.m_PP

  def to_x(self, theta_SP: np.ndarray) -> np.ndarray:
    """Free centred coordinates [S, F] of full parameter vectors [S, P]."""
    return _apply(self.m_PP, theta_SP)[:, self.free]

  def to_theta(self, x_SF: np.ndarray) -> np.ndarray:
    """Full parameter vectors [S, P] of free centred coordinates [S, F]."""
    x_SP = np.broadcast_to(self.template_x, (len(x_SF), len(self.template_x))).copy()
    x_SP[:, self.free] = x_SF
    return _apply(self.minv_PP, x_SP)

  def objective(self, weights_SR: np.ndarray | None = None):
    """Batched objective over free centred coordinates: sum_r w_r Huber(log Lhat - log L).

    Args:
      weights_SR: optional per-row data weights (bootstrap counts); row s of the batch uses
        ``weights_SR[s]``. Unit weights when None.

    Returns:
      fun(x_SF, rows_S) -> (f_S, g_SF), as expected by ``minimize_batched``.
    """
    minv_PP = self.minv_PP

    def fun(x_SF: np.ndarray, rows_S: np.ndarray):
      theta_SP = self.to_theta(x_SF)
      with np.errstate(over="ignore", invalid="ignore"):
        log_pred_SR, vjp = self.law.log_predict(theta_SP, self.features)
        r_SR = log_pred_SR - self.log_loss
        h_SR = huber_lib.huber(r_SR, self.delta)
        psi_SR = huber_lib.huber_grad(r_SR, self.delta)
        if weights_SR is not None:
          w_SR = weights_SR[rows_S]
          h_SR, psi_SR = h_SR * w_SR, psi_SR * w_SR
        f_S = h_SR.sum(axis=1)
        # d f / d x = (d f / d theta) M^-1 (theta = M^-1 x).
        g_SF = (vjp(psi_SR) @ minv_PP)[:, self.free]
      bad = ~np.isfinite(f_S) | ~np.all(np.isfinite(g_SF), axis=1)
      f_S[bad] = np.inf
      g_SF[bad] = 0.0
      return f_S, g_SF

    return fun

  def minimize(self, theta0_SP: np.ndarray, weights_SR: np.ndarray | None = None,
               max_iter: int = 2000):
    """Batched L-BFGS from every start (chunked); returns (theta_SP, f_S, converged_S)."""
    num_rows = len(self.log_loss)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, num_rows * len(self.template_x)))
    x0_SF = self.to_x(theta0_SP)
    thetas, fs, convs = [], [], []
    for lo in range(0, len(x0_SF), chunk):
      hi = min(lo + chunk, len(x0_SF))
      w = None if weights_SR is None else weights_SR[lo:hi]
      res = minimize_batched(self.objective(w), x0_SF[lo:hi], max_iter=max_iter)
      thetas.append(self.to_theta(res.x_SP))
      fs.append(res.f_S)
      convs.append(res.converged_S)
    return np.concatenate(thetas), np.concatenate(fs), np.concatenate(convs)

  def polish(self, theta_P: np.ndarray) -> tuple[np.ndarray, float]:
    """scipy L-BFGS-B with analytic gradients from one start; returns (theta, objective)."""
    fun = self.objective()

    def scalar(x_F):
      f, g = fun(x_F[None], np.zeros(1, dtype=np.int64))
      return float(f[0]), g[0]

    res = scipy.optimize.minimize(scalar, self.to_x(theta_P[None])[0], jac=True,
                                  method="L-BFGS-B",
                                  options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12})
    return self.to_theta(res.x[None])[0], float(res.fun)


def _apply(m_PP: np.ndarray, v_SP: np.ndarray) -> np.ndarray:
  """Rows of v mapped by m (v @ m.T), exact for -inf entries whose coefficients are 0/1."""
  out = np.empty_like(v_SP, dtype=np.float64)
  for i in range(m_PP.shape[0]):
    acc = 0.0
    for j in np.flatnonzero(m_PP[i]):
      acc = acc + m_PP[i, j] * v_SP[:, j]
    out[:, i] = acc
  return out


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
  """
  law: ScalingLaw
  theta: np.ndarray
  problem: Problem
  objective: float
  residuals: np.ndarray
  starts_theta: np.ndarray
  starts_objective: np.ndarray
  starts_converged: np.ndarray

  @property
  def num_rows(self) -> int:
    return len(self.problem.log_loss)

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

  def best_starts(self, count: int, min_distance: float = 1e-3) -> np.ndarray:
    """Up to ``count`` distinct optima of the grid, best first, as rows [<=count, P].

    Optima closer than ``min_distance`` (max-abs over free parameters) to one already taken
    are skipped, so the rows are the best representatives of different basins.
    """
    order = np.argsort(self.starts_objective, kind="stable")
    chosen = [self.theta]
    for s in order:
      if len(chosen) >= count:
        break
      if not np.isfinite(self.starts_objective[s]):
        break
      cand = self.starts_theta[s]
      dist = [np.max(np.abs(cand[self.free] - c[self.free])) for c in chosen]
      if min(dist) > min_distance:
        chosen.append(cand)
    return np.array(chosen)

  def stability(self) -> dict:
    """How the grid's starts agree: the evidence that the optimum is not an accident.

    Returns a dict with the number of starts, how many converged, how many reached the best
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

  starts_SP, f_S, conv_S = problem.minimize(grid_SP, max_iter=max_iter)
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
                   starts_objective=f_S, starts_converged=conv_S)
