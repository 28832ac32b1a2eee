"""Creating parameters that carry logical axis names.

Every weight is an ``nnx.Param`` whose ``out_sharding`` metadata holds *logical* axis names
(``embed``, ``mlp``, ``heads``, ``expert``, ``vocab``, ...). ``moejax.sharding`` maps them to
mesh axes with a rules table from the config; nothing here knows about meshes.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[..., jax.Array]


def param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int],
          axes: Sequence[str | None], dtype=jnp.float32) -> nnx.Param:
  """Returns a parameter initialised by ``init`` and annotated with logical ``axes``."""
  if len(axes) != len(shape):
    raise ValueError(f"axes {tuple(axes)} do not match shape {tuple(shape)}")
  value = init(rngs.params(), tuple(shape), dtype)
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def fan_in_init(fan_in_axes: Sequence[int] = (0,)) -> Initializer:
  """Truncated-normal init with variance 1/fan_in over the given (input) axes."""
  return nnx.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=tuple(fan_in_axes), out_axis=-1)
