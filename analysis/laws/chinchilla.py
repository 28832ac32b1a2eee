"""Chinchilla law (Hoffmann et al. 2022, approach 3): L(N, D) = E + A / N^alpha + B / D^beta.

Parameterised as in the paper: log L = LSE(a - alpha log N, b - beta log D, e) with
a = log A, b = log B, e = log E. The initialisation grid is the paper's (also used by
Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt"):
alpha, beta in {0, 0.5, ..., 2}; e in {-1, -0.5, ..., 1}; a, b in {0, 5, ..., 25}
(5 * 5 * 5 * 6 * 6 = 4,500 starts).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from analysis.laws import base

INIT_GRID = {
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}


def _features(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {"neg_log_n": -base.positive_log(inputs["N"], "N"),
          "neg_log_d": -base.positive_log(inputs["D"], "D")}


def _report(p: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  alpha, beta = p["alpha"], p["beta"]
  # Compute-optimal exponents N* ~ C^(beta / (alpha + beta)), D* ~ C^(alpha / (alpha + beta))
  # (Hoffmann et al. 2022, eq. 4).
  n_opt_exponent = beta / (alpha + beta)
  return {"E": np.exp(p["e"]), "A": np.exp(p["a"]), "B": np.exp(p["b"]), "alpha": alpha,
          "beta": beta, "n_opt_exponent": n_opt_exponent,
          "d_opt_exponent": 1.0 - n_opt_exponent}


LAW = base.ScalingLaw(
    name="chinchilla",
    formula="L(N, D) = E + A / N^alpha + B / D^beta",
    citation="Hoffmann et al. 2022 (approach 3); Besiroglu et al. 2024",
    param_names=("e", "a", "b", "alpha", "beta"),
    input_names=("N", "D"),
    features=_features,
    terms=({"e": 1.0},
           {"a": 1.0, "alpha": "neg_log_n"},
           {"b": 1.0, "beta": "neg_log_d"}),
    init_grid=INIT_GRID,
    report=_report,
)
