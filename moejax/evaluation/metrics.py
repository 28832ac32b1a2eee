"""Pure metrics on model outputs: pass@k, majority vote, and the knowledge-bits estimator.

Knowledge bits (Allen-Zhu & Li 2024, "Physics of Language Models: Part 3.3, Knowledge Capacity
Scaling Laws", arXiv:2404.05405). The memorization suite draws each attribute value uniformly
from ``|A|`` values, independently, so a fact holds exactly ``log2 |A|`` bits. A model whose
cross-entropy on the value (given the question) is ``loss`` nats has narrowed the ``|A|``
equally likely values to an effective ``e^loss`` of them; following their bit-complexity lower
bound (the attribute-value term ``N * log2(|A| / e^loss)`` with ``loss`` the mean over the N
people), the bits stored about attribute ``a`` over its ``n_a`` evaluated facts are

    bits_a = n_a * max(0, log2 |A_a| - mean_i(nll_i) / ln 2),

``nll_i = -ln p(value_i + EOS | question_i)`` (all the value's tokens; EOS makes p a distribution
over complete answers, so probability given to strings that are not values only lowers the
estimate). The total is ``sum_a bits_a``, at most the facts' information ``sum_a n_a log2 |A_a|``.
Averaging before clipping is the paper's estimator: a confidently wrong answer costs bits.
``per_fact=True`` clips each fact instead (an upper bound on the former, forgiving wrong answers).
"""

from __future__ import annotations

import collections
import math
from typing import Any, Mapping, Sequence

import numpy as np


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
  """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
  if not 0 <= num_correct <= num_samples or not 1 <= k <= num_samples:
    raise ValueError(f"Need 0 <= c <= n and 1 <= k <= n; got n={num_samples}, c={num_correct}, "
                     f"k={k}")
  if num_samples - num_correct < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(num_samples - num_correct + 1,
                                                 num_samples + 1)))


def majority_vote(answers: Sequence[str | None]) -> str | None:
  """The most frequent answer (None entries do not vote); ties go to the earliest answer."""
  counts = collections.Counter(a for a in answers if a is not None)
  if not counts:
    return None
  best = max(counts.values())
  return next(a for a in answers if a is not None and counts[a] == best)


def knowledge_bits(nll_N: Sequence[float], attributes_N: Sequence[str],
                   cardinality: Mapping[str, int], per_fact: bool = False) -> dict[str, Any]:
  """Bits of facts stored, from the value's negative log-likelihood (nats) of each fact.

  Args:
    nll_N: ``-ln p(value + EOS | question)`` per fact.
    attributes_N: the attribute each fact is about.
    cardinality: number of equally likely values of each attribute.
    per_fact: clip per fact instead of per attribute (see the module docstring).

  Returns:
    ``{"bits", "capacity_bits", "by_attribute": {a: {"bits", "capacity_bits", "facts",
    "loss_bits"}}}``; ``capacity_bits`` is the facts' information and ``loss_bits`` the mean
    ``-log2 p`` of the attribute's values.
  """
  if len(nll_N) != len(attributes_N):
    raise ValueError(f"{len(nll_N)} likelihoods but {len(attributes_N)} attributes")
  loss_bits_N = np.asarray(nll_N, np.float64) / math.log(2)
  attributes_N = np.asarray(attributes_N)
  by_attribute = {}
  for attribute in sorted(set(attributes_N.tolist())):
    loss_bits_F = loss_bits_N[attributes_N == attribute]
    fact_bits = math.log2(cardinality[attribute])
    if per_fact:
      bits = float(np.sum(np.maximum(0.0, fact_bits - loss_bits_F)))
    else:
      bits = len(loss_bits_F) * max(0.0, fact_bits - float(np.mean(loss_bits_F)))
    by_attribute[attribute] = {"bits": bits, "capacity_bits": len(loss_bits_F) * fact_bits,
                               "facts": len(loss_bits_F), "loss_bits": float(np.mean(loss_bits_F))}
  return {"bits": sum(v["bits"] for v in by_attribute.values()),
          "capacity_bits": sum(v["capacity_bits"] for v in by_attribute.values()),
          "by_attribute": by_attribute}
