"""Statistics of expert choice shared by the image studies (ViT-MoE, DiT-MoE): normalised
mutual information between each token's first-choice expert and an attribute of the token,
against a permutation null, and expert usage by attribute value.

Axes: R rows (images, or image x timestep), S tokens per row, E experts, V attribute values.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skmetrics

PERMUTE = ("rows", "within_rows")


def nmi_against_null(first_RS, attr_RS, permute: str, num_permutations: int,
                     rng: np.random.Generator) -> tuple[float, float, float]:
  """(NMI(expert; attribute), null mean, null 95th percentile) over the tokens with an expert
  (first_RS >= 0). The null permutes the attribute over rows (``"rows"``: an attribute of the
  row, e.g. class or timestep) or within each row (``"within_rows"``: e.g. patch position),
  which keeps its marginal and breaks its link with the expert."""
  if permute not in PERMUTE:
    raise ValueError(f"permute={permute!r} is not one of {PERMUTE}")
  has_RS = first_RS >= 0
  nmi = skmetrics.normalized_mutual_info_score(attr_RS[has_RS], first_RS[has_RS])
  null = []
  for _ in range(num_permutations):
    if permute == "rows":
      shuffled_RS = attr_RS[rng.permutation(len(attr_RS))]
    else:
      shuffled_RS = rng.permuted(attr_RS, axis=1)
    null.append(skmetrics.normalized_mutual_info_score(shuffled_RS[has_RS], first_RS[has_RS]))
  return float(nmi), float(np.mean(null)), float(np.percentile(null, 95))


def usage_by_value(first_RS, attr_RS, num_values: int, num_experts: int) -> np.ndarray:
  """[V, E]: the fraction of the tokens of each attribute value whose first choice is each
  expert (rows of values without tokens are 0)."""
  has_RS = first_RS >= 0
  counts_VE = np.zeros((num_values, num_experts))
  np.add.at(counts_VE, (attr_RS[has_RS], first_RS[has_RS]), 1.0)
  return counts_VE / np.maximum(counts_VE.sum(1, keepdims=True), 1.0)


def normalized_entropy(usage_VE) -> np.ndarray:
  """[V]: entropy of each usage row over experts / log E (1 = uniform use of the experts)."""
  p = np.asarray(usage_VE, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(p > 0, -p * np.log(p), 0.0)
  return terms.sum(-1) / np.log(p.shape[-1])
