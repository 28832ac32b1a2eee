"""The dispatch interface: permute -> compute -> combine, and the row operations strategies share.

A strategy is three functions with a context passed between them:
  permute(x_TD, routing, **options) -> (x_grouped, ctx)
      groups the tokens' rows by expert (the layout is the strategy's: [E, C, D], [A, D], ...);
      ``ctx`` is the strategy's small pytree dataclass of what the later stages need.
  compute(x_grouped, experts, ctx) -> y_grouped
      runs ``experts(x, matmul)`` with the grouped matmul that fits the layout (experts.py).
  combine(y_grouped, ctx) -> (y_TD, stats)
      returns each token its combine-weighted expert outputs, and ``{"dropped_fraction": ...}``.
``x_grouped`` and ``y_grouped`` are what an expert-parallel all-to-all would ship there and back;
``ctx`` stays with the tokens.

Axes: T tokens, D d_model, R rows (any shape of row indices).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from moejax.moe.routers import Routing

ExpertFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Strategy:
  """One dispatch strategy as its three stages; calling it runs them in order."""
  permute: Callable[..., tuple[Any, Any]]
  compute: Callable[[Any, ExpertFn, Any], Any]
  combine: Callable[[Any, Any], tuple[jax.Array, dict[str, jax.Array]]]

  def __call__(self, x_TD, routing: Routing, experts: ExpertFn, **options):
    """(y_TD, stats) of the whole dispatch: the stages in order, nothing between them."""
    x_grouped, ctx = self.permute(x_TD, routing, **options)
    return self.combine(self.compute(x_grouped, experts, ctx), ctx)


def take_rows(x_TD, index):
  """Rows of ``x_TD`` at ``index`` (any shape), indices promised in bounds (a fast gather)."""
  return jnp.take(x_TD, index, axis=0, mode="clip")


def scatter_weighted(y_TD, token_R, weight_R, out_RD):
  """y_TD[token] += weight * out, accumulated in float32: the combine of the row layouts."""
  weighted_RD = (out_RD.reshape(-1, out_RD.shape[-1]).astype(jnp.float32)
                 * weight_R.reshape(-1, 1))
  return y_TD.at[token_R.reshape(-1)].add(weighted_RD, mode="promise_in_bounds")
