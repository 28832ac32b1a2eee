"""evaluate_suites end to end on the smoke data build, with a tiny random model."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import lm_moe
from moejax import counting
from moejax.data import build
from moejax.data import records
from moejax.data import suites
from moejax.data import tokenizer as tokenizer_lib
from moejax.evaluation import batching
from moejax.evaluation import evaluate_suites
from moejax.evaluation import suite_metrics
from moejax.evaluation import tasks
from moejax.models.lm import MoELM
from moejax.training.state import TrainState, split_model

# The shapes of test_eval_decoding.py: programs compiled there are reused here.
OPTIONS = {"batch_size": 4, "min_bucket": 128}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("data"))
  build.build(data_dir, "smoke")
  return data_dir, tokenizer_lib.load_tokenizer(data_dir, "smoke")


@pytest.fixture(scope="module")
def model_and_config(data):
  cfg = lm_moe.get_config("smoke").model.copy_and_resolve_references()
  cfg.vocab_size = tokenizer_lib.tokenizer_vocab_size(data[0], "smoke")
  return MoELM.from_config(cfg, rngs=nnx.Rngs(0)), cfg


def test_item_tokens_follow_the_training_format(data):
  _, tok = data
  for suite in ("memorization", "reasoning"):
    items = suites.eval_items(suite, records.TEST, preset="smoke")
    for item, ids in zip(items, batching.tokenize_items(tok, items)):
      # The training segment is encode(text) + [EOS], read after a leading PAD.
      assert list(ids.prompt + ids.answer) == [0] + tok.encode(item.text) + [1]
      assert tok.decode(ids.answer) == item.target.strip()  # decode drops the leading space


def test_evaluate_suites(data, model_and_config, tmp_path):
  data_dir, tok = data
  model, cfg = model_and_config
  per_item = {}
  metrics = evaluate_suites(model, tok, "smoke", data_dir, max_items=4, max_new_tokens=8,
                            sc_samples=2, sc_ns=(1, 4), progress=False, per_item=per_item,
                            **OPTIONS)
  for name in ("mem_task_loss", "mem_accuracy", "mem_train_accuracy", "reason_task_loss",
               "reason_accuracy", "reason_train_accuracy", "mem_train_task_loss",
               "reason_sc1_accuracy", "reason_sc2_accuracy", "reason_pass_at_1",
               "reason_pass_at_2", "knowledge_bits", "knowledge_bits_seen",
               "knowledge_bits_unseen", "bits_per_param"):
    assert name in metrics, name
  assert "reason_sc4_accuracy" not in metrics  # n above sc_samples is dropped
  # Per-item results reproduce the aggregate metrics.
  for name in ("mem", "mem_train", "reason", "reason_train"):
    assert per_item[f"{name}_uid"].shape == per_item[f"{name}_correct"].shape == (4,)
    assert per_item[f"{name}_correct"].mean() == metrics[f"{name}_accuracy"]
    assert per_item[f"{name}_nll"].sum() / per_item[f"{name}_answer_tokens"].sum() == (
        pytest.approx(metrics[f"{name}_task_loss"]))
  assert per_item["reason_sample_correct"].shape == (4, 2)
  for n in (1, 2):
    assert per_item[f"reason_sc{n}_correct"].mean() == metrics[f"reason_sc{n}_accuracy"]
  path = tmp_path / suite_metrics.ITEMS_FILENAME
  suite_metrics.save_items(str(path), per_item)
  loaded = suite_metrics.load_items(str(path))
  assert set(loaded) == set(per_item)
  np.testing.assert_array_equal(loaded["reason_uid"], per_item["reason_uid"])
  assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
  assert metrics["mem_count"] == metrics["reason_train_count"] == 4
  difficulties = {i.difficulty for i in suite_metrics.subset(
      suites.eval_items("reasoning", records.TEST, preset="smoke"), 4)}
  assert {f"reason_accuracy_d{d}" for d in difficulties} <= set(metrics)
  assert any(name.startswith("mem_accuracy_birth") for name in metrics)
  for name, value in metrics.items():
    if "accuracy" in name or "pass_at" in name:
      assert 0.0 <= value <= 1.0, name
  # A random model: about ln(vocab) nats per answer token, nothing stored.
  assert 2.0 < metrics["mem_task_loss"] < 3 * np.log(cfg.vocab_size)
  assert 0.0 <= metrics["knowledge_bits"] <= metrics["knowledge_capacity_bits"]
  assert metrics["knowledge_bits"] == pytest.approx(
      metrics["knowledge_bits_seen"] + metrics["knowledge_bits_unseen"])
  assert metrics["num_params"] == counting.count_params(cfg)[0]
  # The same numbers from the per-task functions, and from a TrainState.
  items = suite_metrics.subset(suites.eval_items("memorization", records.TEST, "smoke"), 4)
  assert tasks.task_loss(model, tok, items, **OPTIONS) == pytest.approx(
      metrics["mem_task_loss"], rel=1e-6)
  graphdef, params, rest = split_model(model)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=None,
                     model_state=rest)
  assert tasks.task_loss(state, tok, items, graphdef=graphdef, **OPTIONS) == pytest.approx(
      metrics["mem_task_loss"], rel=1e-6)
  greedy = tasks.accuracy(model, tok, items, max_new_tokens=8, **OPTIONS)
  assert greedy["accuracy"] == metrics["mem_accuracy"]
  assert len(greedy["continuations"]) == 4
