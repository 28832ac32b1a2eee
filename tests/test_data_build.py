"""Building the smoke preset (tokenizer, tfds, seqio, cache) and the training sources over it."""

import dataclasses
import json
import os

import ml_collections
import numpy as np
import pytest

from moejax.data import build
from moejax.data import layout
from moejax.data import presets
from moejax.data import records
from moejax.data import sources
from moejax.data import suites
from moejax.data import tokenizer
from tests.conftest import run_module


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("data"))
  return data_dir, build.build(data_dir, "smoke")


def _config(data_dir, **overrides):
  fields = dict(source="suites", data_dir=data_dir, preset="smoke", seed=0, batch_size=4,
                seq_len=64, mixture="")
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def test_manifest_and_rebuild_is_a_no_op(built):
  data_dir, manifest = built
  assert manifest["tokenizer"]["vocab_size"] == tokenizer.tokenizer_vocab_size(data_dir, "smoke")
  assert build.build(data_dir, "smoke") == manifest  # reused, not rebuilt
  description = build.describe(manifest)
  assert [t["name"] for t in description["tasks"]] == [
      "moejax_memorization_smoke", "moejax_reasoning_smoke", "moejax_filler_smoke"]
  mem = description["tasks"][0]["splits"]
  assert mem["test"]["examples"] == 100 and mem["train"]["tokens"] > 0


def test_seqio_cache_matches_the_examples_and_the_tokenizer(built):
  # seqio (tfds order, TF SentencePiece ops) and the Python tokenizer agree token for token.
  data_dir, _ = built
  tok = tokenizer.load_tokenizer(data_dir, "smoke")
  for suite, splits in suites.SPLITS.items():
    for split in splits:
      with np.load(layout.cache_path(data_dir, "smoke", suite, split)) as cache:
        tokens, offsets = cache["tokens"], cache["offsets"]
      examples = suites.examples("smoke", suite, split)
      assert len(offsets) == len(examples) + 1
      for i, ex in enumerate(examples):
        assert tokens[offsets[i]:offsets[i + 1]].tolist() == tok.encode(ex.text) + [
            tokenizer.EOS_ID]


def test_eval_items_checked_against_the_build(built):
  data_dir, _ = built
  items = suites.eval_items("reasoning", records.TEST, preset="smoke", data_dir=data_dir)
  assert len(items) == 15


def test_eval_items_refuse_a_different_build(built, tmp_path):
  _, manifest = built
  altered = json.loads(json.dumps(manifest))
  altered["tasks"]["reasoning"]["splits"]["test"]["text_sha256"] = "0" * 64
  layout.write_json_atomic(layout.manifest_path(str(tmp_path), "smoke"), altered)
  with pytest.raises(ValueError, match="differ"):
    suites.eval_items("reasoning", records.TEST, preset="smoke", data_dir=str(tmp_path))


def test_build_if_missing(built, tmp_path):
  del built  # TensorFlow is already imported: this build takes a few seconds
  config = _config(str(tmp_path), build_if_missing=True, seq_len=128)
  batch = sources.make_source(config, vocab_size=256).batch(0)
  assert batch["targets"].shape == (4, 128)
  assert os.path.exists(layout.manifest_path(str(tmp_path), "smoke"))


def test_suites_source_through_the_registry(built):
  data_dir, _ = built
  source = sources.make_source(_config(data_dir), vocab_size=256)
  batch = source.batch(3)
  assert {k: v.shape for k, v in batch.items()} == {k: (4, 64) for k in sources.BATCH_KEYS}
  again = sources.make_source(_config(data_dir), vocab_size=300).batch(3)
  assert all(np.array_equal(batch[k], again[k]) for k in batch)
  assert batch["targets"].max() < 256 and (batch["targets"] == tokenizer.EOS_ID).any()
  with pytest.raises(ValueError, match="vocab_size"):
    sources.make_source(_config(data_dir), vocab_size=100)


def test_suites_source_on_a_held_out_split(built):
  data_dir, _ = built
  tok = tokenizer.load_tokenizer(data_dir, "smoke")
  batch = sources.make_source(_config(data_dir, split="test", seq_len=128),
                              vocab_size=256).batch(0)
  targets, segments = batch["targets"], batch["segment_ids"]
  texts = {tok.decode(targets[r][segments[r] == s])
           for r in range(len(targets)) for s in np.unique(segments[r][segments[r] > 0])}
  held_out = {ex.text for suite in ("memorization", "reasoning")
              for ex in suites.examples("smoke", suite, records.TEST)}
  assert texts and texts <= held_out
  with pytest.raises(ValueError, match="split"):
    sources.make_source(_config(data_dir, split="test", mixture="filler"), vocab_size=256)


def test_missing_data_names_the_build_command(tmp_path):
  with pytest.raises(layout.DataNotBuiltError, match="experiments.build_data --preset=smoke"):
    sources.make_source(_config(str(tmp_path)), vocab_size=256)


def test_seqio_source_over_the_pretraining_mixture(built):
  data_dir, _ = built
  config = _config(data_dir, source="seqio", task="moejax_pretrain_smoke", batch_size=2,
                   seq_len=32)
  source = sources.make_source(config, vocab_size=256)
  straight = [source.batch(s) for s in range(3)]
  assert {k: v.shape for k, v in straight[0].items()} == {k: (2, 32) for k in sources.BATCH_KEYS}
  assert straight[0]["loss_mask"].dtype == np.float32
  resumed = sources.make_source(config, vocab_size=256).batch(2)  # jumps to step 2
  assert all(np.array_equal(resumed[k], straight[2][k]) for k in resumed)
  # Inputs are the targets shifted right inside each packed segment.
  b = straight[1]
  inside = b["positions"][:, 1:] > 0
  np.testing.assert_array_equal(b["inputs"][:, 1:][inside], b["targets"][:, :-1][inside])


@pytest.mark.slow
def test_cli_build_gives_the_same_hashes(built, tmp_path):
  _, manifest = built
  result = run_module("experiments.build_data", "--preset=smoke", f"--data_dir={tmp_path}",
                      "--describe")
  [line] = result.stdout.splitlines()
  assert json.loads(line) == json.loads(json.dumps(build.describe(manifest)))


def test_a_changed_preset_definition_is_rebuilt_not_reused(built, tmp_path, monkeypatch):
  del built  # TensorFlow is already imported
  data_dir = str(tmp_path)
  old = build.build(data_dir, "smoke")
  smoke = presets.PRESETS["smoke"]
  changed = dataclasses.replace(smoke, memorization=dataclasses.replace(
      smoke.memorization, num_people=smoke.memorization.num_people // 2))
  monkeypatch.setitem(presets.PRESETS, "smoke", changed)
  new = build.build(data_dir, "smoke")
  assert new["preset"] == changed.to_json() != old["preset"]
  mem = build.describe(new)["tasks"][0]["splits"]
  assert mem["test"]["examples"] == len(suites.eval_items(
      "memorization", records.TEST, preset="smoke", data_dir=data_dir)) < 100
