"""The train state (a pytree) and its sharded initialisation.

Following nanodo/MaxText: build the model abstractly under ``nnx.eval_shape``, derive the
shardings from the parameters' logical axes, then run the real init under
``jax.jit(..., out_shardings=...)`` so each device only ever materialises its shard.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from moejax import sharding
from moejax.training import task as task_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: number of optimizer steps taken
  params: nnx.State        # nnx.Param variables
  opt_state: Any           # optax state (moments mirror ``params``)
  model_state: nnx.State   # non-parameter variables (e.g. router balancing biases), may be empty


def split_model(model: nnx.Module):
  """(graphdef, params, other variables)."""
  return nnx.split(model, nnx.Param, ...)


def model_graphdef(config: ml_collections.ConfigDict) -> nnx.GraphDef:
  """The run's model structure (call outside ``jax.set_mesh``: no shardings are made)."""
  task = task_lib.get(config)
  abstract_model = nnx.eval_shape(lambda: task.build_model(config.model, nnx.Rngs(0)))
  return split_model(abstract_model)[0]


def make_init_fn(config: ml_collections.ConfigDict, tx: optax.GradientTransformation):
  """A function of no arguments that builds the initial TrainState (to jit or eval_shape)."""
  task = task_lib.get(config)

  def init() -> TrainState:
    model = task.build_model(config.model, nnx.Rngs(config.seed))
    _, params, rest = split_model(model)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=rest)

  return init


def init_train_state(config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                     mesh: jax.sharding.Mesh):
  """Returns (state, state_shardings); call inside ``sharding.use_rules``."""
  init = make_init_fn(config, tx)
  abstract_state = jax.eval_shape(init)
  shardings = sharding.state_shardings(abstract_state, mesh)
  with jax.set_mesh(mesh):
    state = jax.jit(init, out_shardings=shardings)()
  return state, shardings


def abstract_like(state_shapes, shardings):
  """ShapeDtypeStructs carrying shardings: the restore target for a checkpoint."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state_shapes, shardings)
