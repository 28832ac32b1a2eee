"""Functional train and eval steps: ``nnx.merge`` inside ``jax.jit``, no Python-side modules.

Axes: B batch, T sequence, V vocabulary.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from moejax.training.optimizer import make_optimizer
from moejax.training.state import TrainState


def masked_cross_entropy(logits_BTV, targets_BT, mask_BT):
  """Mean next-token cross-entropy (nats) over positions where ``mask_BT`` is 1."""
  losses_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)
  return jnp.sum(losses_BT * mask_BT) / jnp.maximum(jnp.sum(mask_BT), 1.0)


def _forward(graphdef, params, model_state, batch):
  model = nnx.merge(graphdef, params, model_state)
  logits_BTV, aux = model(batch["inputs"], batch["positions"], batch["segment_ids"])
  return masked_cross_entropy(logits_BTV, batch["targets"], batch["loss_mask"]), aux


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
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (total, (ce, aux)), grads = grad_fn(state.params, state.model_state, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": ce, "total_loss": total, "grad_norm": optax.global_norm(grads),
               "learning_rate": schedule(state.step), **aux}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(graphdef: nnx.GraphDef) -> Callable:
  """``eval_step(state, batch) -> cross-entropy``."""

  def eval_step(state: TrainState, batch):
    return _forward(graphdef, state.params, state.model_state, batch)[0]

  return eval_step
