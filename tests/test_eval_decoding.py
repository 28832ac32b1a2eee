"""KV-cache decoding, batched generation and teacher-forced answer likelihood, on a random model.

Shapes are shared across tests (and with test_eval_suites.py) so that few programs compile:
4 rows, prompts bucketed to 128 tokens, 8 new tokens, sequences of 136.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import lm_moe
from moejax.data import tokenizer as tokenizer_lib
from moejax.evaluation import batching
from moejax.evaluation import decoding
from moejax.evaluation import likelihood
from moejax.evaluation import model_io
from moejax.models.lm import MoELM
from moejax.tasks.lm import masked_cross_entropy

VOCAB = 256  # the smoke tokenizer's vocabulary, so programs are shared with test_eval_suites
ROWS, BUCKET, NEW, LENGTH = 4, 128, 8, 136


@pytest.fixture(scope="module")
def model():
  cfg = lm_moe.get_config("smoke").model.copy_and_resolve_references()
  cfg.vocab_size = VOCAB
  return MoELM.from_config(cfg, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def forward(model):
  graphdef, states = model_io.split(model)
  jitted = jax.jit(lambda states, ids_BT: nnx.merge(graphdef, *states)(ids_BT)[0])
  return lambda ids_BT: np.asarray(jitted(states, jnp.asarray(ids_BT, jnp.int32)))


def _prompts(lengths, seed=0):
  """Prompts like the suites': PAD first, then ids that are neither PAD nor EOS."""
  rng = np.random.default_rng(seed)
  return [[tokenizer_lib.PAD_ID, *rng.integers(3, VOCAB, n - 1).tolist()] for n in lengths]


def test_cached_decoding_matches_the_full_forward(model, forward):
  # Row b is left-padded by pads[b]: a prefill of half the slots, then one token per step.
  graphdef, states = model_io.split(model)
  decode = jax.jit(lambda states, ids_BT, cache: nnx.merge(graphdef, *states).decode(ids_BT,
                                                                                     cache))
  ids_BT = np.random.default_rng(1).integers(3, VOCAB, (ROWS, LENGTH))
  pads_B = np.array([0, 1, 5, 30])
  padded_BT = np.zeros_like(ids_BT)
  for b, pad in enumerate(pads_B):
    padded_BT[b, pad:] = ids_BT[b, :LENGTH - pad]
  cache = model.init_cache(ROWS, LENGTH, jnp.asarray(pads_B))
  half = LENGTH // 2
  logits, cache = decode(states, jnp.asarray(padded_BT[:, :half]), cache)
  chunks = [np.asarray(logits)]
  for t in range(half, LENGTH):
    logits, cache = decode(states, jnp.asarray(padded_BT[:, t:t + 1]), cache)
    chunks.append(np.asarray(logits))
  cached_BTV = np.concatenate(chunks, axis=1)
  assert int(cache.end) == LENGTH
  full_BTV = forward(ids_BT)
  for b, pad in enumerate(pads_B):
    np.testing.assert_allclose(cached_BTV[b, pad:], full_BTV[b, :LENGTH - pad], atol=2e-4,
                               rtol=2e-4)


def test_greedy_generation_is_the_teacher_forced_argmax(model, forward):
  prompts = _prompts([3, 9, 17, 40])
  generated = decoding.generate(model, prompts, max_new_tokens=NEW, batch_size=ROWS,
                                min_bucket=BUCKET)
  assert all(1 <= len(g) <= NEW for g in generated)
  assert all(tokenizer_lib.EOS_ID not in g[:-1] for g in generated)
  sequences = [p + g for p, g in zip(prompts, generated)]
  ids_BT, _ = batching.right_pad(sequences, ROWS, LENGTH)
  argmax_BT = forward(ids_BT).argmax(-1)
  for b, (prompt, gen) in enumerate(zip(prompts, generated)):
    positions = np.arange(len(prompt) - 1, len(prompt) - 1 + len(gen))
    assert argmax_BT[b, positions].tolist() == gen


def test_batched_generation_equals_one_at_a_time(model):
  prompts = _prompts([40, 3, 17, 9, 25], seed=2)  # two batches, sorted by length inside
  options = {"max_new_tokens": NEW, "batch_size": ROWS, "min_bucket": BUCKET}
  batched = decoding.generate(model, prompts, **options)
  alone = [decoding.generate(model, [p], **options)[0] for p in prompts]
  assert batched == alone
  # Sampling: one key per prompt, so each sample is the same in any batch.
  keys = decoding.item_keys(0, [f"item{i}" for i in range(len(prompts))])
  sampled = decoding.generate(model, prompts, temperature=1.0, keys=keys, **options)
  sampled_alone = [decoding.generate(model, [p], temperature=1.0, keys=keys[i:i + 1],
                                     **options)[0] for i, p in enumerate(prompts)]
  assert sampled == sampled_alone
  assert sampled != batched  # a random model's samples differ from its argmax


def test_answer_likelihood_and_task_loss_by_hand(model, forward):
  prompts = _prompts([5, 12, 30], seed=3)
  answers = [(7, 8, tokenizer_lib.EOS_ID), (tokenizer_lib.EOS_ID,), (40, 41, 42, 43, 1)]
  items = [batching.ItemTokens(tuple(p), a) for p, a in zip(prompts, answers)]
  nll_N, tokens_N = likelihood.answer_nll(model, items, batch_size=ROWS, min_bucket=BUCKET)
  assert tokens_N.tolist() == [3, 1, 5]
  sequences = [list(item.prompt + item.answer) for item in items]
  ids_BT, _ = batching.right_pad(sequences, ROWS, LENGTH)
  logits_BTV = forward(ids_BT)
  log_probs_BTV = np.asarray(jax.nn.log_softmax(logits_BTV))
  expected = [-sum(log_probs_BTV[b, t - 1, seq[t]] for t in range(len(item.prompt), len(seq)))
              for b, (item, seq) in enumerate(zip(items, sequences))]
  np.testing.assert_allclose(nll_N, expected, rtol=1e-4)
  loss = likelihood.task_loss(nll_N, tokens_N)
  assert loss == pytest.approx(sum(expected) / 9, rel=1e-4)
  # It is the training loss restricted to the answer tokens.
  mask_BT = np.zeros((ROWS, LENGTH - 1))
  for b, item in enumerate(items):
    mask_BT[b, len(item.prompt) - 1:len(sequences[b]) - 1] = 1
  train_loss = masked_cross_entropy(logits_BTV[:, :-1], ids_BT[:, 1:], mask_BT)
  assert loss == pytest.approx(float(train_loss), rel=1e-4)
