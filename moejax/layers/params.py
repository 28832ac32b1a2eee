"""Creating parameters that carry logical axis names.

Every weight is an ``nnx.Param`` whose ``out_sharding`` metadata holds *logical* axis names
(``embed``, ``mlp``, ``heads``, ``expert``, ``vocab``, ...). ``moejax.sharding`` maps them to
mesh axes with a rules table from the config; nothing here knows about meshes.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[..., jax.Array]
# Multiplier of the fan-in init's standard deviation for layers built inside ``init_scale``.
_INIT_SCALE = contextvars.ContextVar("init_scale", default=1.0)


@contextlib.contextmanager
def init_scale(scale: float) -> Iterator[None]:
  """Layers built inside this context draw their fan-in-initialised weights with ``scale``
  times the standard deviation (variance ``scale**2 / fan_in``; 1.0 is the default init)."""
  if not scale > 0:
    raise ValueError(f"init scale must be positive, got {scale}")
  token = _INIT_SCALE.set(float(scale))
  try:
    yield
  finally:
    _INIT_SCALE.reset(token)


def param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int],
          axes: Sequence[str | None], dtype=jnp.float32) -> nnx.Param:
  """Returns a parameter initialised by ``init`` and annotated with logical ``axes``."""
  if len(axes) != len(shape):
    raise ValueError(f"axes {tuple(axes)} do not match shape {tuple(shape)}")
  value = init(rngs.params(), tuple(shape), dtype)
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def fan_in_init(fan_in_axes: Sequence[int] = (0,)) -> Initializer:
  """Truncated-normal init with variance s**2/fan_in over the given (input) axes, s the
  ``init_scale`` in effect when the initializer is made (1 by default)."""
  return nnx.initializers.variance_scaling(
      _INIT_SCALE.get() ** 2, "fan_in", "truncated_normal", in_axis=tuple(fan_in_axes),
      out_axis=-1)
