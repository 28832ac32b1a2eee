"""A sparsity law in the manner of Abnar et al. 2025 ("Parameters vs FLOPs: Scaling Laws for
Optimal Sparsity for Mixture-of-Experts Language Models").

  L(N_a, D, S) = E + A (1 - S)^lambda / N_a^alpha + B / D^beta,

N_a the active parameters, D the training tokens, S = 1 - k / E the sparsity. This is this
project's form, not the paper's fitted equation: it is the smallest extension of the
Chinchilla law that can express the paper's findings. The parameter term is a Chinchilla term
in an effective size N_eff = N_a (1 - S)^(-lambda / alpha): lambda / alpha = 0 means inactive
parameters are worth nothing, 1 means every total parameter counts like a dense one
(N_eff = N_total when N_a = (1 - S) N_total). With 0 < lambda < alpha:
  * at fixed FLOPs per token (fixed N_a and D) more sparsity lowers the loss (Abnar et al.);
  * at fixed total parameters and fixed training compute, the loss is U-shaped in S: sparsity
    buys tokens but loses active parameters.
Fitted on log-loss as a log-sum-exp of three terms (Hoffmann et al. 2022 parameterisation).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from analysis.laws import base

INIT_GRID = {
    "e": (-1.0, 0.0, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "alpha": (0.25, 0.75, 1.5),
    "beta": (0.25, 0.75, 1.5),
    "lam": (0.0, 0.5),
}


def _features(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  sparsity = np.asarray(inputs["S"], dtype=np.float64)
  if not np.all(np.isfinite(sparsity)) or np.any(sparsity < 0) or np.any(sparsity >= 1):
    raise ValueError("sparsity S must lie in [0, 1)")
  return {"neg_log_n": -base.positive_log(inputs["N"], "N"),
          "neg_log_d": -base.positive_log(inputs["D"], "D"),
          "log_density": np.log1p(-sparsity)}


def _report(p: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  weight = p["lam"] / p["alpha"]
  return {"E": np.exp(p["e"]), "A": np.exp(p["a"]), "B": np.exp(p["b"]),
          "alpha": p["alpha"], "beta": p["beta"], "lambda": p["lam"],
          "inactive_param_weight": weight}


LAW = base.ScalingLaw(
    name="sparsity",
    formula="L(N_a, D, S) = E + A (1 - S)^lambda / N_a^alpha + B / D^beta",
    citation="in the manner of Abnar et al. 2025 (this project's form)",
    param_names=("e", "a", "b", "alpha", "beta", "lam"),
    input_names=("N", "D", "S"),
    features=_features,
    terms=({"e": 1.0},
           {"a": 1.0, "alpha": "neg_log_n", "lam": "log_density"},
           {"b": 1.0, "beta": "neg_log_d"}),
    init_grid=INIT_GRID,
    report=_report,
)
