"""Aux-loss weights by name: resolved from the config over each component's defaults, refused
for losses the model does not return, and read by the one train step (pre-training and GRPO)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import grpo as grpo_configs
from configs import lm_moe
from moejax.data.sources import make_source
from moejax.errors import ConfigError
from moejax.moe.layer import MoEStep
from moejax.posttrain import grpo
from moejax.training import task as task_lib
from moejax.training.optimizer import make_optimizer
from moejax.training.state import make_init_fn, model_graphdef
from moejax.training.step import build_train_step


def test_defaults_come_from_the_components_that_define_the_losses():
  config = lm_moe.get_config("smoke")
  assert task_lib.aux_loss_weights(config) == {"load_balance_loss": 1e-2, "router_z_loss": 1e-3}
  config.model.moe.router = "noisy_top_k"
  config.aux_loss_weights.load_loss = 0.02
  assert task_lib.aux_loss_weights(config) == {
      "load_balance_loss": 1e-2, "router_z_loss": 1e-3, "importance_loss": 0.005,
      "load_loss": 0.02}


def test_a_weight_for_a_loss_the_model_does_not_return_is_refused():
  config = lm_moe.get_config("smoke")
  config.aux_loss_weights.importance_loss = 0.005  # softmax top-k returns no importance loss
  with pytest.raises(ConfigError) as error:
    task_lib.aux_loss_weights(config)
  message = str(error.value)
  assert "config.aux_loss_weights.importance_loss=0.005" in message
  assert "['load_balance_loss', 'router_z_loss']" in message
  dense = lm_moe.get_config("smoke")
  dense.model.moe_every = 0
  assert task_lib.aux_loss_weights(dense) == {}
  dense.aux_loss_weights.load_balance_loss = 0.01
  with pytest.raises(ConfigError, match="it returns none"):
    task_lib.aux_loss_weights(dense)


def _first_step_metrics(config):
  graphdef = model_graphdef(config)
  train_step, tx, _ = build_train_step(config, graphdef)
  state = jax.jit(make_init_fn(config, tx))()
  batch = {k: jnp.asarray(v) for k, v in
           make_source(config.data, config.model.vocab_size).batch(0).items()}
  return jax.device_get(jax.jit(train_step)(state, batch)[1])


@pytest.mark.parametrize("router", ["noisy_top_k", "relu"])
def test_the_train_step_adds_every_weighted_loss_by_name(router):
  config = lm_moe.get_config("smoke")
  config.model.moe.router = router
  weights = task_lib.aux_loss_weights(config)
  metrics = _first_step_metrics(config)
  expected = metrics["loss"] + sum(w * metrics[name] for name, w in weights.items())
  np.testing.assert_allclose(metrics["total_loss"], expected, rtol=1e-6)
  own = sorted(set(weights) - {"load_balance_loss", "router_z_loss"})
  assert own and all(metrics[name] > 0 for name in own)


def test_grpo_uses_the_same_weights_and_continues_the_moe_step():
  config = lm_moe.get_config("smoke")
  config.model.moe.router = "noisy_top_k"
  graphdef = model_graphdef(config)
  cfg = grpo_configs.get_config("smoke")
  tx, schedule = make_optimizer(cfg.optim, 10)
  state = jax.jit(make_init_fn(config, tx))()
  weights = task_lib.aux_loss_weights(config)
  step = jax.jit(grpo.make_grpo_step(graphdef, tx, weights, temperature=1.0, clip_eps=0.2,
                                     kl_coef=0.04, vocab_limit=None, step_offset=7,
                                     schedule=schedule))
  batch = {k: jnp.asarray(v) for k, v in grpo.pack_batch(
      [(0, 5, 9), (0, 5, 9)], [(11, 1), (20, 21, 1)], np.array([1.0, -1.0]), 16).items()}
  new_state, metrics = step(state, state.params, batch)
  expected = metrics["loss"] + sum(w * metrics[name] for name, w in weights.items())
  np.testing.assert_allclose(metrics["total_loss"], expected, rtol=1e-6)
  moe_steps = [np.asarray(v[...]) for v in jax.tree.leaves(
      new_state.model_state, is_leaf=lambda x: isinstance(x, MoEStep)) if isinstance(v, MoEStep)]
  assert moe_steps and all((s == 8).all() for s in moe_steps)  # offset 7 + one step
