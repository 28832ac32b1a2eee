"""Functional train and eval steps: ``nnx.merge`` inside ``jax.jit``, no Python-side modules.

Besides the optimizer update, a train step keeps the MoE layers' non-gradient state in
``TrainState.model_state`` (so it is checkpointed and resumed): it sets ``MoEStep`` (the top-k
schedule, router noise) to the step before the forward pass and to the new step after it, and
applies the aux-loss-free bias update from the step's per-layer expert loads after the
gradient. The eval step runs the model in eval mode (final top_k, no router noise).

Axes: B batch, T sequence, V vocabulary, L layer groups, E experts.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from moejax.moe.layer import EXPERT_LOAD, set_moe_step
from moejax.training.optimizer import make_optimizer
from moejax.training.state import TrainState, split_model


def masked_cross_entropy(logits_BTV, targets_BT, mask_BT):
  """Mean next-token cross-entropy (nats) over positions where ``mask_BT`` is 1."""
  losses_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)
  return jnp.sum(losses_BT * mask_BT) / jnp.maximum(jnp.sum(mask_BT), 1.0)


def _forward(graphdef, params, model_state, batch, deterministic: bool = False):
  # copy=True: fresh Variables of the current trace (under jax.grad, ``model_state`` comes from
  # the enclosing jit trace, and nnx.scan refuses Variables of another trace level).
  model = nnx.merge(graphdef, params, model_state, copy=True)
  if deterministic:
    model.eval()
  logits_BTV, aux = model(batch["inputs"], batch["positions"], batch["segment_ids"])
  return masked_cross_entropy(logits_BTV, batch["targets"], batch["loss_mask"]), aux


def _update_router_biases(graphdef, params, model_state, expert_load_LE):
  """``model_state`` after the aux-free bias update of every MoE layer (no gradient)."""
  model = nnx.merge(graphdef, params, model_state, copy=True)
  model.update_router_biases(jax.lax.stop_gradient(expert_load_LE))
  return split_model(model)[2]


def loss_coefficients(optim: ml_collections.ConfigDict) -> dict[str, float]:
  """Weights of the auxiliary losses in the total loss, by aux name."""
  return {"load_balance_loss": optim.load_balance_coef, "router_z_loss": optim.router_z_coef}


def build_train_step(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef):
  """(train_step, optimizer, schedule) for a run config."""
  tx, schedule = make_optimizer(config.optim, config.train.steps)
  return make_train_step(graphdef, tx, schedule, loss_coefficients(config.optim)), tx, schedule


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, loss_coefs: dict[str, float]) -> Callable:
  """``train_step(state, batch) -> (state, metrics)``; the total loss is the cross-entropy
  plus ``coef * aux[name]`` for each ``name, coef`` in ``loss_coefs``."""

  def loss_fn(params, model_state, batch):
    ce, aux = _forward(graphdef, params, model_state, batch)
    total = ce + sum(coef * aux[name] for name, coef in loss_coefs.items() if name in aux)
    return total, (ce, aux)

  def train_step(state: TrainState, batch):
    model_state = set_moe_step(state.model_state, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (total, (ce, aux)), grads = grad_fn(state.params, model_state, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    expert_load_LE = aux.pop(EXPERT_LOAD, None)
    if expert_load_LE is not None:  # aux-free balancing: the bias follows this step's loads
      model_state = _update_router_biases(graphdef, state.params, model_state, expert_load_LE)
    metrics = {"loss": ce, "total_loss": total, "grad_norm": optax.global_norm(grads),
               "learning_rate": schedule(state.step), **aux}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=set_moe_step(model_state, state.step + 1))
    return new_state, metrics

  return train_step


def make_eval_step(graphdef: nnx.GraphDef) -> Callable:
  """``eval_step(state, batch) -> cross-entropy`` of the model in eval mode (final top_k)."""

  def eval_step(state: TrainState, batch):
    return _forward(graphdef, state.params, state.model_state, batch, deterministic=True)[0]

  return eval_step
