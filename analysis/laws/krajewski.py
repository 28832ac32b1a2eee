"""Fine-grained MoE law (Krajewski et al. 2024, "Scaling Laws for Fine-Grained Mixture of Experts").

  L(N, D, G) = c + (g / G^gamma + a) / N^alpha + b / D^beta,

G the granularity (dense FFN hidden size / expert hidden size; G = 1 is a standard MoE).
Fitted on log-loss as a log-sum-exp of four terms; scales are optimised as their natural logs
(``log_c`` etc.) so that every parameter is unconstrained.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from analysis.laws import base

INIT_GRID = {
    "log_c": (-1.0, 0.0, 1.0),
    "log_g": (0.0, 10.0, 20.0),
    "log_a": (0.0, 10.0, 20.0),
    "log_b": (0.0, 10.0, 20.0),
    "alpha": (0.25, 0.75, 1.5),
    "beta": (0.25, 0.75, 1.5),
    "gamma": (0.25, 1.0),
}


def _features(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {"neg_log_n": -base.positive_log(inputs["N"], "N"),
          "neg_log_d": -base.positive_log(inputs["D"], "D"),
          "neg_log_g": -base.positive_log(inputs["G"], "G")}


def _report(p: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {"c": np.exp(p["log_c"]), "g": np.exp(p["log_g"]), "a": np.exp(p["log_a"]),
          "b": np.exp(p["log_b"]), "alpha": p["alpha"], "beta": p["beta"],
          "gamma": p["gamma"]}


LAW = base.ScalingLaw(
    name="krajewski",
    formula="L(N, D, G) = c + (g / G^gamma + a) / N^alpha + b / D^beta",
    citation="Krajewski et al. 2024",
    param_names=("log_c", "log_g", "log_a", "log_b", "alpha", "beta", "gamma"),
    input_names=("N", "D", "G"),
    features=_features,
    terms=({"log_c": 1.0},
           {"log_g": 1.0, "gamma": "neg_log_g", "alpha": "neg_log_n"},
           {"log_a": 1.0, "alpha": "neg_log_n"},
           {"log_b": 1.0, "beta": "neg_log_d"}),
    init_grid=INIT_GRID,
    report=_report,
)
