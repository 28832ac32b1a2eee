"""Dispatch: route tokens to experts, run them, and combine the outputs, in three stages.

  permute  x_TD -> (x_grouped, ctx): the tokens' rows grouped by expert in the strategy's
           layout; ``ctx`` (a small pytree dataclass) keeps what the later stages need:
           token ids, combine weights, group sizes, drop statistics.
  compute  (x_grouped, experts, ctx) -> y_grouped: ``experts(x, matmul)`` (experts.py) with the
           grouped matmul that fits the layout.
  combine  (y_grouped, ctx) -> (y_TD, stats): each token gets the combine-weighted outputs of
           its choices, accumulated in float32; ``stats`` holds ``dropped_fraction``.
Expert parallelism ships x_grouped to the experts' devices between permute and compute, and
y_grouped back between compute and combine (base.py has the interface).

``dispatch(strategy, x_TD, routing, experts, **options) -> (y_TD, stats)`` runs a strategy by
name. Options: ``capacity_factor`` (None: dropless; else each expert keeps C = ceil(T*K*cf/E)
choices in priority order, plan.py, and a dropped choice leaves its token the residual path),
``batch_prioritized`` and ``rows_per_expert``; ``sorted`` also takes ``block_rows``. All
strategies compute the same function; the tests check values and gradients against a
per-token loop.

  einsum      GShard one-hot dispatch/combine tensors [T, E, C] (Lepikhin et al. 2020): the
              readable reference; O(T*E*C) memory, so dropless use (C = T) is for small T only.
  sorted      sort by expert; the first ``rows_per_expert`` rows of every expert as a padded
              batch [E, C, D]; dropless, exact passes over the overflow in blocks of one expert.
  ragged_dot  one row per choice sorted by expert, ``jax.lax.ragged_dot`` over the groups.
  pallas      the same layout with the Pallas grouped matmul of kernels_pallas/ (TPU Mosaic,
              GPU Triton; interpreted on CPU). The accelerator choice:
              ``--config.model.moe.dispatch=pallas`` (docs/kernels.md).

A new strategy is one module here defining ``permute``, ``compute`` and ``combine`` and a
``base.Strategy`` of them, plus its entry in ``STRATEGIES``.

Axes: T tokens, D d_model, E experts, K choice slots per token, C rows per expert.
"""

from __future__ import annotations

from moejax.moe.dispatch import einsum, grouped
from moejax.moe.dispatch import sorted as sorted_dispatch
from moejax.moe.dispatch.base import ExpertFn, Strategy
from moejax.moe.dispatch.sorted import default_rows_per_expert  # pylint: disable=unused-import
from moejax.moe.plan import drop_over_capacity  # pylint: disable=unused-import
from moejax.moe.routers import Routing

STRATEGIES: dict[str, Strategy] = {
    "einsum": einsum.STRATEGY,
    "sorted": sorted_dispatch.STRATEGY,
    "ragged_dot": grouped.RAGGED_DOT,
    "pallas": grouped.PALLAS,
}


def dispatch(strategy: str, x_TD, routing: Routing, experts: ExpertFn, **options):
  """Runs the named strategy; ``options`` are passed to its ``permute``."""
  if strategy not in STRATEGIES:
    # Not the builtin ``sorted``: importing the ``sorted`` submodule binds that name here.
    raise ValueError(f"unknown dispatch strategy {strategy!r}; known: {list(STRATEGIES)}")
  return STRATEGIES[strategy](x_TD, routing, experts, **options)
