"""The suites' SentencePiece tokenizer: determinism, reserved ids, digits, round trip, prefixes."""

import pytest

from moejax.data import records
from moejax.data import suites
from moejax.data import tokenizer


@pytest.fixture(scope="module")
def model():
  return tokenizer.train_model(suites.training_texts("smoke"), 256)


def test_training_is_deterministic(model):
  assert tokenizer.train_model(suites.training_texts("smoke"), 256) == model


def test_reserved_ids_and_vocab_size(model):
  tok = tokenizer.Tokenizer(model)
  assert tok.vocab_size == 256
  assert tok.pieces("Answer: 1952") == ["▁Answer", ":", "▁", "1", "9", "5", "2"]  # digits split
  ids = tok.encode("Answer: 7")
  assert tokenizer.PAD_ID not in ids and tokenizer.EOS_ID not in ids
  assert tok.decode(ids + [tokenizer.EOS_ID] + ids) == "Answer: 7"  # stops at EOS
  assert tok.decode([tokenizer.PAD_ID] + ids) == "Answer: 7"


@pytest.mark.parametrize("suite", sorted(suites.SPLITS))
def test_round_trip_without_unknowns(model, suite):
  tok = tokenizer.Tokenizer(model)
  for split in suites.SPLITS[suite]:
    for ex in suites.examples("smoke", suite, split):
      ids = tok.encode(ex.text)
      assert tokenizer.UNK_ID not in ids
      assert tok.decode(ids) == ex.text


def test_prompt_tokens_prefix_the_full_text(model):
  # Evaluation feeds encode(prompt) and expects the model to continue it as in training.
  tok = tokenizer.Tokenizer(model)
  for suite in ("memorization", "reasoning"):
    for split in records.EVAL_SPLITS:
      for ex in suites.examples("smoke", suite, split):
        prompt, full = tok.encode(ex.prompt), tok.encode(ex.text)
        assert full[:len(prompt)] == prompt
        assert tok.decode(full[len(prompt):]).strip() == ex.target.strip()
