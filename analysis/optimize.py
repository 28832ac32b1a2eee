"""Batched L-BFGS: many independent small minimisations advanced together in numpy.

A scaling-law fit is a handful of parameters and a few hundred data rows, minimised from
thousands of starting points (Hoffmann et al. 2022, approach 3: L-BFGS from a grid), and then
again for every bootstrap resample. One scipy call per start costs ~10 ms here, almost all of
it Python overhead, so the grid alone would take most of a minute. This module advances every
start at once: each row of ``x_SP`` is its own problem (own curvature memory, own line search),
and the objective is evaluated for all rows in one vectorised call. Rows that converge leave
the active set, so late iterations only pay for the stragglers.

The algorithm per row is textbook L-BFGS (Nocedal & Wright 2006, alg. 7.4/7.5): two-loop
recursion with the initial scaling s'y / y'y, a backtracking Armijo line search, and a
curvature-pair update only when s'y > 0. Stopping follows scipy's L-BFGS-B conventions:
relative objective change below ``ftol`` or largest gradient component below ``gtol``
(defaults stricter than scipy's, see ``minimize_batched``).

Axes: S rows (independent problems), P parameters, M memory pairs.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

# fun(x_SP, rows_S) -> (f_S, g_SP); ``rows_S`` are the indices of the rows being evaluated, so
# that an objective with per-row data (bootstrap weights) can select its slice.
BatchedObjective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

_ARMIJO_C1 = 1e-4
_MAX_BACKTRACKS = 40
_MIN_CURVATURE = 1e-200


@dataclasses.dataclass(frozen=True)
class BatchedMinimum:
  """Result of :func:`minimize_batched`, one entry per row."""
  x_SP: np.ndarray
  f_S: np.ndarray
  grad_SP: np.ndarray
  n_iter_S: np.ndarray
  converged_S: np.ndarray
  abandoned_S: np.ndarray


def _two_loop_direction(g_SP, s_SMP, y_SMP, rho_SM):
  """Returns -H g for each row, with H the L-BFGS inverse-Hessian estimate.

  History is ordered oldest first; unused slots have rho = 0 and contribute nothing.
  """
  q_SP = g_SP.copy()
  num_mem = s_SMP.shape[1]
  alpha_SM = np.zeros_like(rho_SM)
  for i in reversed(range(num_mem)):
    alpha_SM[:, i] = rho_SM[:, i] * np.einsum("sp,sp->s", s_SMP[:, i], q_SP)
    q_SP -= alpha_SM[:, i, None] * y_SMP[:, i]
  # Initial Hessian scaling gamma = s'y / y'y from the newest pair (slot M-1), else 1.
  s_new, y_new = s_SMP[:, -1], y_SMP[:, -1]
  yy_S = np.einsum("sp,sp->s", y_new, y_new)
  sy_S = np.einsum("sp,sp->s", s_new, y_new)
  gamma_S = np.where((rho_SM[:, -1] > 0) & (yy_S > 0), sy_S / np.where(yy_S > 0, yy_S, 1.0), 1.0)
  r_SP = gamma_S[:, None] * q_SP
  for i in range(num_mem):
    beta_S = rho_SM[:, i] * np.einsum("sp,sp->s", y_SMP[:, i], r_SP)
    r_SP += s_SMP[:, i] * (alpha_SM[:, i] - beta_S)[:, None]
  return -r_SP


def _line_search(fun, x_SP, f_S, g_SP, d_SP, step_S, rows_S):
  """Backtracking Armijo search along d for every row; returns (x, f, g, accepted)."""
  slope_S = np.einsum("sp,sp->s", g_SP, d_SP)
  x_new = x_SP.copy()
  f_new = f_S.copy()
  g_new = g_SP.copy()
  accepted = np.zeros(len(f_S), dtype=bool)
  pending = np.arange(len(f_S))
  step = step_S.copy()
  for _ in range(_MAX_BACKTRACKS):
    if pending.size == 0:
      break
    trial = x_SP[pending] + step[pending, None] * d_SP[pending]
    f_trial, g_trial = fun(trial, rows_S[pending])
    ok = np.isfinite(f_trial) & (
        f_trial <= f_S[pending] + _ARMIJO_C1 * step[pending] * slope_S[pending])
    done = pending[ok]
    x_new[done], f_new[done], g_new[done] = trial[ok], f_trial[ok], g_trial[ok]
    accepted[done] = True
    pending = pending[~ok]
    step[pending] *= 0.5
  return x_new, f_new, g_new, accepted


def minimize_batched(fun: BatchedObjective, x0_SP: np.ndarray, *, max_iter: int = 2000,
                     memory: int = 10, gtol: float = 1e-8, ftol: float = 1e-10,
                     f_floor: float = 0.0,
                     abandon: tuple[int, float] | None = None) -> BatchedMinimum:
  """Minimises ``fun`` from every row of ``x0_SP`` independently (unconstrained L-BFGS).

  Args:
    fun: batched objective, see ``BatchedObjective``; must return finite values at x0.
    x0_SP: starting points, one row per problem.
    max_iter: iteration cap per row.
    memory: number of curvature pairs kept per row.
    gtol: stop a row when max |gradient| falls below this (scipy's ``pgtol``).
    ftol: stop a row when (f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, f_floor) <= ftol. Unlike
      scipy (whose floor is 1), the default criterion is purely relative: Huber objectives
      of good fits are ~1e-3, and an absolute floor would stop rows while they still drift
      along the flat valleys that the bootstrap is meant to measure.
    f_floor: absolute scale below which objective changes count as relative to it.
    abandon: (iteration, ratio): at that iteration, stop the rows whose objective exceeds
      ratio times the best row's (``abandoned_S``). Only meaningful when every row
      minimises the same function from a different start (a grid), never for rows with
      their own data.

  Returns:
    A ``BatchedMinimum``. Rows whose line search fails (no decrease along a descent direction
    even after resetting the memory) stop where they are and count as converged: at that
    point the objective cannot be decreased at machine precision.
  """
  x_SP = np.array(x0_SP, dtype=np.float64, copy=True)
  num_rows, num_params = x_SP.shape
  all_rows = np.arange(num_rows)
  f_S, g_SP = fun(x_SP, all_rows)
  f_S, g_SP = np.array(f_S, dtype=np.float64), np.array(g_SP, dtype=np.float64)
  s_SMP = np.zeros((num_rows, memory, num_params))
  y_SMP = np.zeros((num_rows, memory, num_params))
  rho_SM = np.zeros((num_rows, memory))
  n_iter_S = np.zeros(num_rows, dtype=np.int64)
  converged_S = np.max(np.abs(g_SP), axis=1) <= gtol
  abandoned_S = np.zeros(num_rows, dtype=bool)
  active = all_rows[~converged_S]

  for it in range(max_iter):
    if abandon is not None and it == abandon[0] and active.size:
      worse = f_S[active] > abandon[1] * np.min(f_S)
      abandoned_S[active[worse]] = True
      active = active[~worse]
    if active.size == 0:
      break
    g_a = g_SP[active]
    with np.errstate(over="ignore", invalid="ignore"):
      d_a = _two_loop_direction(g_a, s_SMP[active], y_SMP[active], rho_SM[active])
      slope = np.einsum("sp,sp->s", g_a, d_a)
    # Fall back to steepest descent (and forget the memory) where d is not a finite descent
    # direction.
    not_descent = ~(slope < 0) | ~np.all(np.isfinite(d_a), axis=1)
    d_a[not_descent] = -g_a[not_descent]
    rho_SM[active[not_descent]] = 0.0
    fresh = rho_SM[active].max(axis=1) == 0
    gnorm = np.linalg.norm(g_a, axis=1)
    step = np.where(fresh, np.minimum(1.0, 1.0 / np.maximum(gnorm, 1e-300)), 1.0)
    x_new, f_new, g_new, ok = _line_search(fun, x_SP[active], f_S[active], g_a, d_a, step,
                                           active)
    # A failed search after a fresh (steepest-descent) start means we are done; after a
    # quasi-Newton step, retry once from steepest descent on the next iteration.
    failed = ~ok
    stuck = failed & fresh
    rho_SM[active[failed & ~fresh]] = 0.0

    moved = active[ok]
    s_new = x_new[ok] - x_SP[moved]
    y_new = g_new[ok] - g_SP[moved]
    sy = np.einsum("sp,sp->s", s_new, y_new)
    # Curvature pairs must satisfy s'y > 0 clearly (and not underflow: 1 / s'y is stored).
    good = ((sy > 1e-10 * np.linalg.norm(s_new, axis=1) * np.linalg.norm(y_new, axis=1))
            & (sy > _MIN_CURVATURE))
    upd = moved[good]
    s_SMP[upd] = np.roll(s_SMP[upd], -1, axis=1)
    y_SMP[upd] = np.roll(y_SMP[upd], -1, axis=1)
    rho_SM[upd] = np.roll(rho_SM[upd], -1, axis=1)
    s_SMP[upd, -1] = s_new[good]
    y_SMP[upd, -1] = y_new[good]
    rho_SM[upd, -1] = 1.0 / sy[good]

    f_old = f_S[moved]
    x_SP[moved], f_S[moved], g_SP[moved] = x_new[ok], f_new[ok], g_new[ok]
    n_iter_S[active] += 1
    scale = np.maximum(np.maximum(np.abs(f_old), np.abs(f_S[moved])), f_floor)
    small_change = (f_old - f_S[moved]) <= ftol * scale
    small_grad = np.max(np.abs(g_SP[moved]), axis=1) <= gtol
    converged_S[moved[small_change | small_grad]] = True
    converged_S[active[stuck]] = True
    active = active[~converged_S[active]]

  return BatchedMinimum(x_SP=x_SP, f_S=f_S, grad_SP=g_SP, n_iter_S=n_iter_S,
                        converged_S=converged_S, abandoned_S=abandoned_S)
