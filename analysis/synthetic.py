"""Synthetic scaling-law data drawn from known coefficients, for recovery checks.

The fitter is validated the way Besiroglu et al. (2024) validate theirs: draw losses from a
known law with noise, fit, and check that the reported intervals contain the truth. The
default truth is Hoffmann et al. 2022's fitted Chinchilla law (E = 1.69, A = 406.4,
B = 410.7, alpha = 0.34, beta = 0.28); the default design is a realistic small sweep: seven
model sizes from 30M to 3B parameters, each trained at five tokens-per-parameter ratios
(5 to 80, around the compute-optimal ~20), with 1% multiplicative noise (seed-to-seed noise
of final losses is of this order).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

CHINCHILLA_TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
DEFAULT_SIZES = tuple(np.logspace(np.log10(3e7), np.log10(3e9), 7))
DEFAULT_TPP = (5.0, 10.0, 20.0, 40.0, 80.0)


def chinchilla_loss(n: np.ndarray, d: np.ndarray, truth: Mapping[str, float]) -> np.ndarray:
  """E + A / N^alpha + B / D^beta."""
  return truth["E"] + truth["A"] / n ** truth["alpha"] + truth["B"] / d ** truth["beta"]


def synthetic_chinchilla_runs(seed: int = 0,
                              truth: Mapping[str, float] = CHINCHILLA_TRUTH,
                              sizes: Sequence[float] = DEFAULT_SIZES,
                              tokens_per_param: Sequence[float] = DEFAULT_TPP,
                              noise: float = 0.01) -> dict[str, np.ndarray]:
  """{"N", "D", "loss"} for every (size, TPP) pair; loss has log-normal noise ``noise``."""
  rng = np.random.default_rng(seed)
  n, tpp = np.meshgrid(np.asarray(sizes, np.float64), np.asarray(tokens_per_param, np.float64))
  n, d = n.ravel(), (n * tpp).ravel()
  loss = chinchilla_loss(n, d, truth) * np.exp(noise * rng.standard_normal(n.shape))
  return {"N": n, "D": d, "loss": loss}
