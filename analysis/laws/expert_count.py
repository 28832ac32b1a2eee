"""Clark et al. (2022) saturating transform of the expert count, shared by the MoE laws.

Unified Scaling Laws for Routed Language Models (Clark et al. 2022, eq. for E-hat):
  1 / E_hat = 1 / (E - 1 + (1 / E_start - 1 / E_max)^-1) + 1 / E_max,
so E_hat = E_start at E = 1 and E_hat -> E_max as E -> infinity: returns from more experts
diminish above E_max and the law is not distorted by tiny expert counts below E_start.
Ludziejewski et al. (2025) use the same transformed count in their joint law. With
E_start = 1 and E_max = inf (the defaults here) E_hat = E.
"""

from __future__ import annotations

import numpy as np


def transformed_expert_count(num_experts: np.ndarray, e_start: float = 1.0,
                             e_max: float = np.inf) -> np.ndarray:
  """E_hat of Clark et al. (2022); identity for the defaults. Requires E >= 1."""
  num_experts = np.asarray(num_experts, dtype=np.float64)
  if not np.all(np.isfinite(num_experts)) or np.any(num_experts < 1):
    raise ValueError("the number of experts must be finite and >= 1")
  if not (e_start > 0 and e_max > e_start):
    raise ValueError(f"need 0 < E_start < E_max, got E_start={e_start}, E_max={e_max}")
  inv_e_max = 0.0 if np.isinf(e_max) else 1.0 / e_max
  offset = 1.0 / (1.0 / e_start - inv_e_max)
  return 1.0 / (1.0 / (num_experts - 1.0 + offset) + inv_e_max)
