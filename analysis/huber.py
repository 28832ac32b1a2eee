"""The Huber loss used to fit scaling laws on log-loss (Hoffmann et al. 2022, approach 3).

Hoffmann et al. minimise sum_i Huber_delta(log Lhat_i - log L_i) with delta = 1e-3, which
behaves like least squares for residuals below delta and like least absolute deviations above
it: residuals of a few percent are far above 1e-3, so in practice the fit is a robust,
median-like regression on log-loss that discounts outlying runs.
"""

from __future__ import annotations

import numpy as np

DEFAULT_DELTA = 1e-3


def huber(r: np.ndarray, delta: float = DEFAULT_DELTA) -> np.ndarray:
  """Elementwise Huber loss: r^2 / 2 for |r| <= delta, delta (|r| - delta / 2) beyond."""
  abs_r = np.abs(r)
  return np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta))


def huber_grad(r: np.ndarray, delta: float = DEFAULT_DELTA) -> np.ndarray:
  """Derivative of :func:`huber` with respect to r: r clipped to [-delta, delta]."""
  return np.clip(r, -delta, delta)
