"""Unified routed-LM law (Clark et al. 2022, "Unified Scaling Laws for Routed Language Models").

  log10 L(N, E) = a log10 N + b log10 E_hat + c log10 N log10 E_hat + d,

with base-10 logs as in the paper, N the dense (per-token) parameter count and E_hat the
saturating transform of the expert count (see ``expert_count``). The fit is done, like every
law here, with the Huber loss on natural-log residuals: ln L = a ln N + b ln E_hat
+ (c / ln 10) ln N ln E_hat + d ln 10, the same law with the paper's coefficients.
It is linear in (a, b, c, d) for a fixed transform, so the objective is convex and the small
initialisation grid is only a check; E_start and E_max are fixed by the caller (Clark et al.
fit them too; our tables have too few expert counts to identify them).
Coefficients depend on the units of N: pass raw parameter counts to compare with the paper.
"""

from __future__ import annotations

import functools
from typing import Mapping

import numpy as np

from analysis.laws import base
from analysis.laws.expert_count import transformed_expert_count

INIT_GRID = {"a": (-0.1, 0.0), "b": (-0.1, 0.0), "c": (-0.01, 0.0, 0.01), "d": (0.0, 1.0)}
_LN10 = float(np.log(10.0))


def _features(inputs: Mapping[str, np.ndarray], e_start: float,
              e_max: float) -> dict[str, np.ndarray]:
  log_n = base.positive_log(inputs["N"], "N")
  log_e = np.log(transformed_expert_count(inputs["E"], e_start, e_max))
  return {"log_n": log_n, "log_e": log_e, "log_n_log_e": log_n * log_e / _LN10}


def _report(p: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {name: p[name] for name in ("a", "b", "c", "d")}


def make_law(e_start: float = 1.0, e_max: float = np.inf) -> base.ScalingLaw:
  """The Clark et al. law with a fixed expert-count transform (identity by default)."""
  return base.ScalingLaw(
      name="clark",
      formula="log10 L = a log10 N + b log10 E_hat + c log10 N log10 E_hat + d",
      citation="Clark et al. 2022",
      param_names=("a", "b", "c", "d"),
      input_names=("N", "E"),
      features=functools.partial(_features, e_start=e_start, e_max=e_max),
      terms=({"a": "log_n", "b": "log_e", "c": "log_n_log_e", "d": _LN10},),
      init_grid=INIT_GRID,
      report=_report,
  )
