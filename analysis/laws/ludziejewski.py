"""Joint MoE law (Ludziejewski et al. 2025, "Joint MoE Scaling Laws: Mixture of Experts Can Be
Memory Efficient"):

  L(N, D, E) = c + a E_hat^delta N^(-alpha + gamma ln E_hat)
               + b E_hat^omega D^(-beta + zeta ln E_hat),

N the active parameters, D the training tokens, E_hat the transformed expert count (Clark et
al. 2022; identity by default). The paper writes the exponents as alpha + gamma ln E_hat with
alpha < 0; here alpha and beta are the (positive) dense exponents, so the dense limit E = 1
is exactly the Chinchilla form and gamma, zeta keep the paper's sign. Fitted on log-loss as a
log-sum-exp of three terms, scales as natural logs. The grid starts every interaction at 0
(the dense law) and lets L-BFGS move them.
"""

from __future__ import annotations

import functools
from typing import Mapping

import numpy as np

from analysis.laws import base
from analysis.laws.expert_count import transformed_expert_count

INIT_GRID = {
    "log_c": (-1.0, 0.0, 1.0),
    "log_a": (0.0, 10.0, 20.0),
    "log_b": (0.0, 10.0, 20.0),
    "alpha": (0.25, 0.75, 1.5),
    "beta": (0.25, 0.75, 1.5),
    "delta": (0.0,),
    "gamma": (0.0,),
    "omega": (0.0,),
    "zeta": (0.0,),
}


def _features(inputs: Mapping[str, np.ndarray], e_start: float,
              e_max: float) -> dict[str, np.ndarray]:
  log_n = base.positive_log(inputs["N"], "N")
  log_d = base.positive_log(inputs["D"], "D")
  log_e = np.log(transformed_expert_count(inputs["E"], e_start, e_max))
  return {"neg_log_n": -log_n, "neg_log_d": -log_d, "log_e": log_e,
          "log_e_log_n": log_e * log_n, "log_e_log_d": log_e * log_d}


def _report(p: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {"c": np.exp(p["log_c"]), "a": np.exp(p["log_a"]), "b": np.exp(p["log_b"])}
  out.update({n: p[n] for n in ("alpha", "beta", "delta", "gamma", "omega", "zeta")})
  return out


def make_law(e_start: float = 1.0, e_max: float = np.inf) -> base.ScalingLaw:
  """The Ludziejewski et al. joint law with a fixed expert-count transform."""
  return base.ScalingLaw(
      name="ludziejewski",
      formula="L = c + a E^delta N^(-alpha + gamma ln E) + b E^omega D^(-beta + zeta ln E)",
      citation="Ludziejewski et al. 2025",
      param_names=("log_c", "log_a", "log_b", "alpha", "beta", "delta", "gamma", "omega",
                   "zeta"),
      input_names=("N", "D", "E"),
      features=functools.partial(_features, e_start=e_start, e_max=e_max),
      terms=({"log_c": 1.0},
             {"log_a": 1.0, "delta": "log_e", "alpha": "neg_log_n", "gamma": "log_e_log_n"},
             {"log_b": 1.0, "omega": "log_e", "beta": "neg_log_d", "zeta": "log_e_log_d"}),
      init_grid=INIT_GRID,
      report=_report,
  )
