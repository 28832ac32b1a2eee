"""The one train-step builder, used by pre-training and by post-training (GRPO): ``nnx.merge``
inside ``jax.jit``, no Python-side modules.

A step minimises ``objective loss + sum(weight[name] * aux[name])`` over the auxiliary losses
the model returns, weighted by name (``task.aux_loss_weights``: ``config.aux_loss_weights`` over
the defaults of the components that define them). Besides the optimizer update it keeps the
MoE layers' non-gradient state in ``TrainState.model_state`` (checkpointed and resumed): it sets
``MoEStep`` (the top-k schedule, router noise) to the step before the forward pass and to the
next step after it, and applies the aux-loss-free bias update from the step's per-layer expert
loads after the gradient. The eval step runs the model in eval mode (final top_k, no noise).

With ``config.train.microbatches`` = M > 1 the batch is cut into M microbatches (row i of
microbatch m is row i*M + m, so each device cuts its own rows, no data moves) and the gradient
is the mean of the M microbatch gradients, accumulated in a ``lax.scan`` in a buffer sharded like
the parameters (gradient accumulation: the memory of one microbatch, the update of the whole
batch). The logged loss and aux values are microbatch means. This is exactly one big batch's
gradient when every microbatch has as many loss positions as the others (the synthetic data;
padded batches weigh microbatches equally) and the aux losses are per-token means; batch
statistics inside a loss (the load-balance loss' expert fractions, per-shard capacity) are
taken per microbatch, as in MaxText.

An *objective* is ``objective(model, batch) -> (loss, aux)``: ``Task.loss`` for pre-training,
the clipped policy-gradient loss for GRPO (moejax/posttrain/grpo.py).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from moejax import sharding
from moejax.moe.layer import EXPERT_LOAD, set_moe_step
from moejax.training import task as task_lib
from moejax.training.optimizer import make_optimizer
from moejax.training.state import TrainState, split_model

Objective = Callable[[nnx.Module, dict], tuple[jax.Array, dict]]


def _merge(graphdef, params, model_state, deterministic: bool = False):
  # copy=True: fresh Variables of the current trace (under jax.grad, ``model_state`` comes from
  # the enclosing jit trace, and nnx.scan refuses Variables of another trace level).
  model = nnx.merge(graphdef, params, model_state, copy=True)
  if deterministic:
    model.eval()
  return model


def _update_router_biases(graphdef, params, model_state, expert_load_ME):
  """``model_state`` after the aux-free bias update of every MoE layer (no gradient)."""
  model = _merge(graphdef, params, model_state)
  model.update_router_biases(jax.lax.stop_gradient(expert_load_ME))
  return split_model(model)[2]


def build_train_step(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef):
  """(train_step, optimizer, schedule) for a run config: its task's loss, its aux weights."""
  task = task_lib.get(config)
  tx, schedule = make_optimizer(config.optim, config.train.steps)
  weights = task_lib.aux_loss_weights(config, task)
  return make_train_step(graphdef, tx, schedule, task.loss, weights,
                         microbatches=config.train.get("microbatches", 1)), tx, schedule


def split_microbatches(batch: dict, microbatches: int) -> dict:
  """[M, B/M, ...] per field: microbatch m holds rows m, M + m, 2M + m, ... (each device's
  rows stay on it when B/M divides over the batch axes)."""
  def split(x):
    rows_BM = x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:])
    rows_BM = sharding.constrain(rows_BM, ("batch",) + (None,) * (rows_BM.ndim - 1))
    return jnp.moveaxis(rows_BM, 1, 0)
  return jax.tree.map(split, batch)


def _like_params(tree):
  """``tree`` (a gradient) with each Variable constrained to its parameter's logical axes."""
  def constrain(variable):
    axes = sharding.variable_axes(variable)
    return variable if axes is None else variable.replace(sharding.constrain(variable[...], axes))
  return jax.tree.map(constrain, tree, is_leaf=lambda v: isinstance(v, nnx.Variable))


def accumulate_gradients(grad_fn, params, model_state, batch, microbatches: int):
  """``grad_fn(params, model_state, batch)`` -> ((total, (loss, aux)), grads), averaged over
  ``microbatches`` microbatches of ``batch`` in a scan (one microbatch: a plain call)."""
  if microbatches == 1:
    return grad_fn(params, model_state, batch)
  micro = split_microbatches(batch, microbatches)
  first = jax.tree.map(lambda x: x[0], micro)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(grad_fn, params, model_state, first))
  zeros = (zeros[0], _like_params(zeros[1]))

  def body(acc, microbatch):
    out = grad_fn(params, model_state, microbatch)
    acc = jax.tree.map(lambda a, b: a + b.astype(a.dtype), acc, out)
    return (acc[0], _like_params(acc[1])), None

  summed, _ = jax.lax.scan(body, zeros, micro)
  return jax.tree.map(lambda a: (a / microbatches).astype(a.dtype), summed)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, objective: Objective,
                    aux_weights: dict[str, float], step_offset: int = 0,
                    microbatches: int = 1) -> Callable:
  """``train_step(state, batch) -> (state, metrics)``.

  Args:
    graphdef: the model's structure (``state.model_graphdef``).
    tx, schedule: the optimizer and its learning-rate schedule (for the logged rate).
    objective: ``objective(model, batch) -> (loss, aux)``.
    aux_weights: weight of each auxiliary loss by aux name (every name must be in aux).
    step_offset: added to ``state.step`` for the MoE step (post-training continues the
      pre-training's schedule and noise stream instead of restarting them).
    microbatches: gradient accumulation over this many microbatches (module docstring).
  """

  def loss_fn(params, model_state, batch):
    loss, aux = objective(_merge(graphdef, params, model_state), batch)
    total = loss + sum(weight * aux[name] for name, weight in aux_weights.items())
    return total, (loss, aux)

  def train_step(state: TrainState, batch):
    model_state = set_moe_step(state.model_state, state.step + step_offset)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (total, (loss, aux)), grads = accumulate_gradients(grad_fn, state.params, model_state,
                                                       batch, microbatches)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    expert_load_ME = aux.pop(EXPERT_LOAD, None)
    if expert_load_ME is not None:  # aux-free balancing: the bias follows this step's loads
      model_state = _update_router_biases(graphdef, state.params, model_state, expert_load_ME)
    metrics = {"loss": loss, "total_loss": total, "grad_norm": optax.global_norm(grads),
               "learning_rate": schedule(state.step), **aux}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=set_moe_step(model_state,
                                                       state.step + 1 + step_offset))
    return new_state, metrics

  return train_step


def make_eval_step(graphdef: nnx.GraphDef, objective: Objective) -> Callable:
  """``eval_step(state, batch) -> loss`` of the model in eval mode (final top_k, no noise)."""

  def eval_step(state: TrainState, batch):
    model = _merge(graphdef, state.params, state.model_state, deterministic=True)
    return objective(model, batch)[0]

  return eval_step
