"""GRPO post-training: advantages, the loss gradient, a toy reward, a run on the smoke suites."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import grpo as grpo_configs
from configs import lm_moe
from moejax.data import build
from moejax.models.lm import MoELM
from moejax.posttrain import grpo
from moejax.posttrain import study
from moejax.sweeps import results
from moejax.training.optimizer import make_optimizer
from moejax.training.state import split_model
from moejax.training.trainer import train

VOCAB = 64  # the smoke model's vocabulary


def smoke_model(seed=0):
  cfg = lm_moe.get_config("smoke").model.copy_and_resolve_references()
  return split_model(MoELM.from_config(cfg, rngs=nnx.Rngs(seed)))


def test_group_advantages_are_normalised_within_groups():
  adv_PG = np.asarray(grpo.group_advantages(jnp.array([[1.0, 1, 1, 1], [0, 0, 0, 0],
                                                        [1, 0, 0, 0], [0.5, 1.5, 0.5, 1.5]])))
  np.testing.assert_array_equal(adv_PG[:2], 0.0)  # equal rewards: no signal
  np.testing.assert_allclose(adv_PG[2], [np.sqrt(3), -1 / np.sqrt(3), -1 / np.sqrt(3),
                                         -1 / np.sqrt(3)], rtol=1e-3)
  np.testing.assert_allclose(adv_PG[3], [-1, 1, -1, 1], rtol=1e-3)
  np.testing.assert_allclose(adv_PG.mean(axis=1), 0.0, atol=1e-6)


def test_grpo_loss_terms():
  logp_BT = jnp.log(jnp.array([[0.5, 0.25], [0.5, 0.5]]))
  mask_BT = jnp.array([[1.0, 1.0], [1.0, 0.0]])
  loss, metrics = grpo.grpo_loss(logp_BT, logp_BT, logp_BT, jnp.array([1.0, -1.0]), mask_BT,
                                 clip_eps=0.2, kl_coef=0.1)
  # Ratio 1, KL 0: the loss is minus the token-level mean advantage, (-1 - 1 + 1) / 3.
  assert float(loss) == pytest.approx(-1 / 3) and float(metrics["kl"]) == 0.0
  _, metrics = grpo.grpo_loss(logp_BT, logp_BT, logp_BT + 0.5, jnp.zeros(2), mask_BT,
                              clip_eps=0.2, kl_coef=0.1)
  assert float(metrics["kl"]) == pytest.approx(math.exp(0.5) - 1.5)  # k3 estimator
  _, metrics = grpo.grpo_loss(logp_BT + 0.5, logp_BT, logp_BT, jnp.ones(2), mask_BT,
                              clip_eps=0.2, kl_coef=0.0)
  assert float(metrics["clip_fraction"]) == 1.0


def test_a_step_raises_the_rewarded_completion_and_lowers_the_other():
  graphdef, params, rest = smoke_model()
  cfg = grpo_configs.get_config("smoke")
  cfg.optim.update(lr=1e-2, min_lr=1e-2)
  tx, _ = make_optimizer(cfg.optim, 10)
  step = jax.jit(grpo.make_grpo_step(graphdef, tx, {}, temperature=1.0, clip_eps=0.2,
                                     kl_coef=0.04, vocab_limit=None))
  prompt = (0, 5, 9, 7)
  completions = [(11, 12, 1), (20, 21, 22, 1)]
  batch = {k: jnp.asarray(v) for k, v in grpo.pack_batch(
      [prompt, prompt], completions, np.array([1.0, -1.0]), length=16).items()}
  assert batch["mask"].sum() == 7 and batch["mask"][0, 3] == 1 and batch["mask"][0, 2] == 0

  @jax.jit
  def completion_logprobs_B(p):
    logp_BT, _ = grpo.token_logprobs(nnx.merge(graphdef, p, rest), batch, 1.0, None)
    return jnp.sum(logp_BT * batch["mask"], axis=1)

  state = grpo.init_state(params, rest, tx)
  new_state, metrics = step(state, params, batch)
  before, after = completion_logprobs_B(params), completion_logprobs_B(new_state.params)
  assert after[0] > before[0] and after[1] < before[1]
  assert float(metrics["kl"]) == 0.0 and np.isfinite(float(metrics["grad_norm"]))
  # Zero advantages at the reference point: no gradient at all (k3's gradient vanishes there).
  batch["advantages"] = jnp.zeros(2)
  _, metrics = step(grpo.init_state(params, rest, tx), params, batch)
  assert float(metrics["grad_norm"]) < 1e-6


@pytest.mark.slow
def test_grpo_learns_a_toy_reward():
  """Reward 1 when the first sampled token is even: GRPO makes it (nearly) always even."""
  graphdef, params, rest = smoke_model(seed=1)
  rng = np.random.default_rng(0)
  prompts = [(0, *rng.integers(2, VOCAB, size=5)) for _ in range(32)]
  cfg = grpo_configs.get_config("smoke")
  cfg.update(steps=10, prompts_per_step=8, group_size=8, reward_window=3, progress_bar=False)
  cfg.optim.update(lr=1e-2, min_lr=1e-2)

  def reward(i, ids):
    del i
    return float(ids[0] % 2 == 0)

  original = jax.tree.map(np.array, params)
  new_params, history = grpo.train_grpo(graphdef, params, rest, prompts, reward, cfg,
                                        max_new_tokens=2, vocab_limit=VOCAB)
  summary = grpo.summarize(history, cfg.reward_window)
  assert summary["steps"] == 10 and all(np.isfinite(h["loss"]) for h in history)
  assert 0.2 < summary["reward_start"] < 0.8
  assert summary["reward_end"] > max(0.75, summary["reward_start"] + 0.25), summary
  # The caller's parameters are untouched (they are the reference, not donated).
  assert jax.tree.all(jax.tree.map(np.array_equal, original, params))
  assert not jax.tree.all(jax.tree.map(np.array_equal, original, new_params))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """A smoke model trained briefly on the smoke suites, as the sweep lays it out."""
  data_dir = str(tmp_path_factory.mktemp("data"))
  build.build(data_dir, "smoke")
  sweep_dir = str(tmp_path_factory.mktemp("sweep"))
  config = lm_moe.get_config("smoke")
  config.data.update(source="suites", preset="smoke", data_dir=data_dir, seq_len=128)
  config.model.vocab_size = 256
  config.eval.update(max_items=8, batch_size=8)
  config.train.update(steps=10, checkpoint_every=10, progress_bar=False)
  train(config, os.path.join(sweep_dir, "runs", "smoke-run"))
  with results.ResultsTable(sweep_dir) as table:
    table.upsert("smoke-run", {"status": results.DONE, "reason_accuracy": 0.0})
    table.upsert("failed-run", {"status": results.FAILED})
  return sweep_dir


@pytest.mark.slow
def test_grpo_sweep_on_a_trained_smoke_model(smoke_run):
  cfg = grpo_configs.get_config("smoke")
  cfg.progress_bar = False
  df = study.grpo_sweep(smoke_run, cfg, progress=False)
  row = df.set_index("name").loc["smoke-run"]
  for name in ("grpo_reason_accuracy", "grpo_reason_task_loss", "grpo_mem_train_accuracy",
               "grpo_reward_start", "grpo_reward_end", "grpo_kl_end"):
    assert math.isfinite(row[name]), name
  assert row["grpo_steps"] == cfg.steps and row["grpo_reason_count"] == 8
  assert pd_isna(df.set_index("name").loc["failed-run", "grpo_reason_accuracy"])
  path = os.path.join(smoke_run, "runs", "smoke-run", study.GRPO_FILE)
  with open(path) as f:
    saved = json.load(f)
  assert saved["from_step"] == 10 and len(saved["history"]) == cfg.steps
  assert saved["metrics"]["grpo_reason_accuracy"] == row["grpo_reason_accuracy"]
  # Re-running reuses grpo.json; the summary pairs accuracy before and after.
  mtime = os.path.getmtime(path)
  df = study.grpo_sweep(smoke_run, cfg, progress=False)
  assert os.path.getmtime(path) == mtime
  summary = study.grpo_summary(df)
  assert set(summary["smoke-run"]) >= {"reason_accuracy", "grpo_reason_accuracy"}


def pd_isna(value):
  return value is None or (isinstance(value, float) and math.isnan(value))
