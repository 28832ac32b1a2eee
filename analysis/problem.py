"""The optimisation problem behind a fit: objective, gradient and coordinates.

A ``Problem`` binds a law to its data, its fixed parameters and the Huber threshold, and
exposes the batched objective that ``analysis.optimize.minimize_batched`` needs, for the grid
of a fit and for the weighted refits of the bootstrap alike.

Two exact transformations make it fast without changing the optimum:
* Coordinates: the optimiser works on x = M theta (``ScalingLaw.preconditioner``), which
  decorrelates intercepts from exponents and scales the features; only the ``free``
  entries of x move.
* Rows: runs that share every input (seeds, learning rates of one configuration) share a
  prediction, so the law is evaluated once per distinct input row U and the prediction is
  gathered to the R runs; gradients are summed back per distinct row.

Axes: S rows of the optimiser's batch, R runs, U distinct input rows, P parameters, F free.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import scipy.optimize

from analysis.laws.base import ScalingLaw
from analysis.optimize import minimize_batched

# Starts are optimised in chunks so that the [S, R] temporaries stay near 32 MB each.
_MAX_CHUNK_ELEMENTS = 4_000_000


@dataclasses.dataclass(frozen=True)
class Problem:
  """A law, its data and its fixed parameters, in the optimiser's coordinates.

  Attributes:
    law: the functional form.
    features_U: law features of the distinct input rows.
    log_loss_R: observed log-losses, runs sorted by distinct input row.
    order_R: the sort (``log_loss_R = log(loss)[order_R]``), applied to per-run weights.
    unique_of_R: distinct-row index of every sorted run (non-decreasing).
    segment_starts: first sorted run of every distinct row.
    delta: Huber threshold.
    free: indices [F] of the optimised parameters.
    m_PP: preconditioner, x = M theta.
    minv_PP: its inverse.
    template_x: full x vector whose non-free entries are used as is.
  """
  law: ScalingLaw
  features_U: Mapping[str, np.ndarray]
  log_loss_R: np.ndarray
  order_R: np.ndarray
  unique_of_R: np.ndarray
  segment_starts: np.ndarray
  delta: float
  free: np.ndarray
  m_PP: np.ndarray
  minv_PP: np.ndarray
  template_x: np.ndarray

  @classmethod
  def create(cls, law: ScalingLaw, features: Mapping[str, np.ndarray], log_loss: np.ndarray,
             delta: float, theta_template_P: np.ndarray,
             fixed_names: Sequence[str] = ()) -> "Problem":
    """Builds the problem for features [R] (``law.features``) and log-losses [R]."""
    names = sorted(features)
    keys_RK = np.stack([np.broadcast_to(features[n], log_loss.shape) for n in names], axis=1)
    uniq_UK, inverse_R = np.unique(keys_RK, axis=0, return_inverse=True)
    inverse_R = inverse_R.reshape(-1)
    order_R = np.argsort(inverse_R, kind="stable")
    unique_of_R = inverse_R[order_R]
    segment_starts = np.flatnonzero(np.r_[True, np.diff(unique_of_R) != 0])
    features_U = {n: uniq_UK[:, k] for k, n in enumerate(names)}
    free = np.array([i for i, n in enumerate(law.param_names) if n not in fixed_names],
                    dtype=np.int64)
    m_PP, minv_PP = law.preconditioner(features_U, tuple(fixed_names))
    template_x = _apply(m_PP, np.asarray(theta_template_P, dtype=np.float64)[None])[0]
    return cls(law=law, features_U=features_U, log_loss_R=np.asarray(log_loss)[order_R],
               order_R=order_R, unique_of_R=unique_of_R, segment_starts=segment_starts,
               delta=delta, free=free, m_PP=m_PP, minv_PP=minv_PP,
               template_x=template_x)

  @property
  def num_runs(self) -> int:
    return len(self.log_loss_R)

  @property
  def has_duplicates(self) -> bool:
    return len(self.segment_starts) < self.num_runs

  def to_x(self, theta_SP: np.ndarray) -> np.ndarray:
    """Free centred coordinates [S, F] of full parameter vectors [S, P]."""
    return _apply(self.m_PP, np.atleast_2d(theta_SP))[:, self.free]

  def to_theta(self, x_SF: np.ndarray) -> np.ndarray:
    """Full parameter vectors [S, P] of free centred coordinates [S, F]."""
    x_SP = np.broadcast_to(self.template_x, (len(x_SF), len(self.template_x))).copy()
    x_SP[:, self.free] = x_SF
    return _apply(self.minv_PP, x_SP)

  def objective(self, weights_SR: np.ndarray | None = None):
    """Batched objective over free centred coordinates: sum_r w_r Huber(log Lhat - log L).

    Args:
      weights_SR: optional per-run weights in the caller's run order (bootstrap counts);
        row s of the optimiser's batch uses ``weights_SR[s]``. Unit weights when None.

    Returns:
      fun(x_SF, rows_S) -> (f_S, g_SF), as expected by ``minimize_batched``.
    """
    minv_PP = self.minv_PP
    delta = self.delta
    weights_SR = None if weights_SR is None else np.asarray(weights_SR)[:, self.order_R]

    def fun(x_SF: np.ndarray, rows_S: np.ndarray):
      theta_SP = self.to_theta(x_SF)
      with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        log_pred_SU, vjp = self.law.log_predict(theta_SP, self.features_U)
        log_pred_SR = log_pred_SU[:, self.unique_of_R] if self.has_duplicates else log_pred_SU
        r_SR = log_pred_SR - self.log_loss_R
        # Huber(r) = psi (r - psi / 2) with psi = clip(r, -delta, delta) = Huber'(r).
        psi_SR = np.clip(r_SR, -delta, delta)
        r_SR -= 0.5 * psi_SR
        if weights_SR is not None:
          psi_SR *= weights_SR[rows_S]
        f_S = np.einsum("sr,sr->s", psi_SR, r_SR)
        cot_SU = (np.add.reduceat(psi_SR, self.segment_starts, axis=1)
                  if self.has_duplicates else psi_SR)
        # d f / d x = (d f / d theta) M^-1, as theta = M^-1 x.
        g_SF = (vjp(cot_SU) @ minv_PP)[:, self.free]
      bad = ~np.isfinite(f_S) | ~np.all(np.isfinite(g_SF), axis=1)
      f_S[bad] = np.inf
      g_SF[bad] = 0.0
      return f_S, g_SF

    return fun

  def minimize(self, theta0_SP: np.ndarray, weights_SR: np.ndarray | None = None,
               max_iter: int = 2000, abandon: tuple[int, float] | None = None):
    """Batched L-BFGS from every start (chunked).

    Returns:
      (theta_SP, f_S, converged_S, abandoned_S); ``abandon`` as in ``minimize_batched``
      (grid fits only: rows with ``weights_SR`` minimise different functions).
    """
    if abandon is not None and weights_SR is not None:
      raise ValueError("abandoning rows compares their objectives: not with per-row weights")
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, self.num_runs))
    x0_SF = self.to_x(theta0_SP)
    parts = []
    for lo in range(0, len(x0_SF), chunk):
      hi = min(lo + chunk, len(x0_SF))
      w = None if weights_SR is None else weights_SR[lo:hi]
      res = minimize_batched(self.objective(w), x0_SF[lo:hi], max_iter=max_iter,
                             abandon=abandon)
      parts.append((self.to_theta(res.x_SP), res.f_S, res.converged_S, res.abandoned_S))
    return tuple(np.concatenate(p) for p in zip(*parts))

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
  """v @ m.T; entry by entry when v holds -inf (dropped terms), so that -inf * 0 stays out."""
  if np.all(np.isfinite(v_SP)):
    return v_SP @ m_PP.T
  out = np.empty(v_SP.shape, dtype=np.float64)
  for i in range(m_PP.shape[0]):
    acc = 0.0
    for j in np.flatnonzero(m_PP[i]):
      acc = acc + m_PP[i, j] * v_SP[:, j]
    out[:, i] = acc
  return out
