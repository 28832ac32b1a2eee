"""What evaluation accepts as "a model", reduced to ``(graphdef, states)`` for jitted functions.

A model may be given as
  * an ``nnx.Module`` (e.g. a freshly built ``MoELM``);
  * a ``TrainState`` (its ``params`` and ``model_state``), with ``graphdef`` from
    ``training.state.init_train_state`` or ``model_graphdef``;
  * a tuple ``(graphdef, state, ...)`` as returned by ``nnx.split``.

The jitted evaluation functions take the graphdef as a static argument and the states as a
pytree, and rebuild the module with ``nnx.merge(graphdef, *states)`` inside the trace.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from moejax.training.state import TrainState

Model = Any  # nnx.Module | TrainState | tuple[nnx.GraphDef, nnx.State, ...]


def split(model: Model, graphdef: nnx.GraphDef | None = None
          ) -> tuple[nnx.GraphDef, tuple[nnx.State, ...]]:
  """``(graphdef, states)`` such that ``nnx.merge(graphdef, *states)`` rebuilds ``model``."""
  if isinstance(model, nnx.Module):
    graphdef, *states = nnx.split(model, nnx.Param, ...)
    return graphdef, tuple(states)
  if isinstance(model, TrainState):
    if graphdef is None:
      raise ValueError("Evaluating a TrainState needs its graphdef (see training/state.py)")
    return graphdef, (model.params, model.model_state)
  if isinstance(model, tuple) and model and isinstance(model[0], nnx.GraphDef):
    return model[0], tuple(model[1:])
  raise TypeError(f"Cannot evaluate a {type(model).__name__}; pass an nnx.Module, a TrainState "
                  "with its graphdef, or (graphdef, *states)")


def num_params(states: tuple[nnx.State, ...]) -> int:
  """Number of scalars in the ``nnx.Param`` variables of ``states`` (embeddings included)."""
  total = 0
  for state in states:
    params = nnx.filter_state(state, nnx.Param) if isinstance(state, nnx.State) else state
    total += sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  return total
