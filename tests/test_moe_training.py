"""MoE training-time state through the real train step: the aux-loss-free balancing bias (updated
from each step's expert loads, checkpointed and resumed), the top-k schedule (logged, applied,
final k in evaluation), and the config checks that guard both before anything compiles."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import lm_moe
from moejax import validation
from moejax.data.sources import BATCH_KEYS, make_source
from moejax.moe import routers
from moejax.moe.layer import MoEStep, set_moe_step
from moejax.tasks.lm import LMTask
from moejax.training import checkpointing
from moejax.training.state import make_init_fn, model_graphdef
from moejax.training.step import build_train_step, make_eval_step
from tests.test_moe import fast_jit

STEPS = 40
RATE = 0.01


def smoke_moe(**moe) -> ml_collections.ConfigDict:
  """The smoke preset (E=4, k=2, two MoE layers) without the balance and z losses: a
  deliberately skewed setup where only the bias (if any) balances the experts' load.
  ``moe`` updates ``config.model.moe``."""
  config = lm_moe.get_config("smoke")
  config.aux_loss_weights.update(load_balance_loss=0.0, router_z_loss=0.0)
  config.model.moe.update(**moe)
  return config


class Trainer:
  """The jitted train step of a config on synthetic batches, one step at a time."""

  def __init__(self, config):
    self.config = config
    self.graphdef = model_graphdef(config)
    train_step, tx, _ = build_train_step(config, self.graphdef)
    self.step = fast_jit(train_step)
    self._init = fast_jit(make_init_fn(config, tx))
    self.source = make_source(config.data, config.model.vocab_size)

  def init(self):
    """A fresh state, committed to the device like a restored one (no second compile)."""
    return jax.device_put(self._init(), jax.devices()[0])

  def batch(self, step: int) -> dict:
    return {k: jnp.asarray(v) for k, v in self.source.batch(step).items() if k in BATCH_KEYS}

  def run(self, state, start: int, stop: int):
    """(state after steps start..stop-1, the metrics of each step)."""
    rows = []
    for step in range(start, stop):
      state, metrics = self.step(state, self.batch(step))
      rows.append(jax.device_get(metrics))
    return state, rows


def router_bias(state) -> np.ndarray:
  """The stacked aux-free bias [L, E] in a TrainState's model_state."""
  (bias,) = [np.asarray(v[...]) for v in jax.tree.leaves(
      state.model_state, is_leaf=lambda v: isinstance(v, routers.RouterBias))
             if isinstance(v, routers.RouterBias)]
  return bias


def late_max_load(rows) -> float:
  return float(np.mean([row["max_load"] for row in rows[-10:]]))


@pytest.fixture(scope="module")
def biased():
  """A straight STEPS-step run with aux-free balancing: (trainer, final state, metrics)."""
  trainer = Trainer(smoke_moe(router="sigmoid_top_k", bias_update_rate=RATE))
  state, rows = trainer.run(trainer.init(), 0, STEPS)
  return trainer, state, rows


def test_aux_free_bias_balances_the_expert_load(biased):
  _, state, rows = biased
  plain = Trainer(smoke_moe(router="sigmoid_top_k"))
  _, plain_rows = plain.run(plain.init(), 0, STEPS)
  assert not any("expert_load" in row for row in rows)  # consumed by the step, not logged
  print(f"max/mean load over the last 10 steps: {late_max_load(plain_rows):.3f} without the "
        f"bias, {late_max_load(rows):.3f} with it")
  assert late_max_load(plain_rows) > 1.2  # the unbalanced run drifts ...
  assert late_max_load(rows) < late_max_load(plain_rows) - 0.1  # ... the biased one does not
  bias_LE = router_bias(state)
  assert bias_LE.shape == (2, 4) and np.abs(bias_LE).min() > 0
  # Every update moves each entry by exactly +-RATE (or 0 at the mean load).
  steps_LE = bias_LE / RATE
  np.testing.assert_allclose(steps_LE, np.round(steps_LE), atol=1e-3)
  assert np.abs(steps_LE).max() <= STEPS
  assert int(state.step) == STEPS


def test_bias_survives_checkpoint_and_resume(biased, tmp_path):
  trainer, straight, straight_rows = biased
  half = STEPS // 2
  state, rows = trainer.run(trainer.init(), 0, half)
  saved_bias = router_bias(state)
  assert np.abs(saved_bias).sum() > 0
  manager = checkpointing.make_manager(str(tmp_path), save_every=half, keep=1)
  checkpointing.save(manager, half, state)
  manager.wait_until_finished()
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)
  del state
  step, restored = checkpointing.restore_latest(manager, target)
  manager.close()
  assert step == half
  np.testing.assert_array_equal(router_bias(restored), saved_bias)
  resumed, more_rows = trainer.run(restored, half, STEPS)
  assert [r["loss"] for r in rows + more_rows] == [r["loss"] for r in straight_rows]
  np.testing.assert_array_equal(router_bias(resumed), router_bias(straight))


def test_top_k_schedule_is_logged_applied_and_final_in_eval():
  decay = 8
  config = smoke_moe(initial_top_k=4, top_k_decay_steps=decay, detailed_metrics=True)
  trainer = Trainer(config)
  state, rows = trainer.run(trainer.init(), 0, 6)  # stops mid-schedule, at k = 3
  expected = [routers.top_k_at(s, 2, 4, decay) for s in range(6)]
  assert expected == [4, 4, 4, 4, 3, 3]
  assert [float(r["top_k"]) for r in rows] == expected
  assert [float(r["active_experts"]) for r in rows] == expected  # k is applied, not only logged
  state, rows = trainer.run(state, 6, 12)
  assert [float(r["top_k"]) for r in rows] == [3, 3, 2, 2, 2, 2]
  steps = [v for v in jax.tree.leaves(state.model_state, is_leaf=lambda v: isinstance(
      v, MoEStep)) if isinstance(v, MoEStep)]
  assert steps and all((np.asarray(v[...]) == 12).all() for v in steps)  # == TrainState.step

  # Evaluation routes with the final k whatever step the state holds: here step 5 (k = 3).
  batch = trainer.batch(100)
  eval_loss = fast_jit(make_eval_step(trainer.graphdef, LMTask().loss))(
      state.replace(model_state=set_moe_step(state.model_state, 5)), batch)
  # The training loss of the same params at a step (computed before the update) ...
  at_step = lambda step: state.replace(step=jax.device_put(jnp.int32(step), state.step.sharding))
  at_final_k = trainer.step(at_step(decay), batch)[1]
  at_k3 = trainer.step(at_step(5), batch)[1]
  assert float(at_final_k["top_k"]) == 2.0 and float(at_k3["top_k"]) == 3.0
  np.testing.assert_allclose(eval_loss, at_final_k["loss"], rtol=1e-5)  # ... at the final k
  assert abs(float(eval_loss) - float(at_k3["loss"])) > 1e-4
  assert trainer.step._cache_size() == 1  # one compile serves every step of the schedule


@pytest.mark.parametrize("model,train,message", [
    ({"initial_top_k": 1}, {},
     "config.model.moe.initial_top_k=1 must be in [config.model.moe.top_k=2"),
    ({"initial_top_k": 5}, {}, "config.model.moe.initial_top_k=5 must be in"),
    ({"initial_top_k": 4, "top_k_decay_steps": 0}, {},
     "config.model.moe.top_k_decay_steps=0 must be > 0 for a schedule"),
    ({"initial_top_k": 4, "top_k_decay_steps": 31}, {"steps": 30},
     "config.model.moe.top_k_decay_steps=31 must be <= config.train.steps=30"),
    ({"initial_top_k": 4, "router": "expert_choice"}, {},
     "config.model.moe.initial_top_k needs"),
    ({"bias_update_rate": 0.01, "router": "noisy_top_k"}, {},
     "config.model.moe.bias_update_rate=0.01 needs config.model.moe.router in"),
    ({"bias_update_rate": 0.01, "router": "relu"}, {}, "not 'relu'"),
    ({"bias_update_rate": -0.1}, {}, "bias_update_rate=-0.1 must be >= 0"),
])
def test_impossible_schedules_and_biases_fail_fast(model, train, message, tmp_path):
  from moejax.training.trainer import train as train_run  # pylint: disable=import-outside-toplevel
  config = smoke_moe(**{"top_k_decay_steps": 10, **model})
  config.train.update(**train)
  with pytest.raises(validation.ConfigError) as error:
    validation.validate_run(config, num_devices=1)
  assert message in str(error.value) and "\n" not in str(error.value)
  with pytest.raises(validation.ConfigError):  # the trainer checks before building anything
    train_run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_valid_schedule_and_bias_pass():
  config = smoke_moe(router="sigmoid_top_k", bias_update_rate=0.01, initial_top_k=4,
                     top_k_decay_steps=30)
  validation.validate_run(config, num_devices=1)
