"""Evaluation of a model on suite items: accuracy, self-consistency, knowledge bits.

Each function takes a model (see ``model_io``: an nnx.Module, a TrainState with its graphdef,
or ``(graphdef, *states)``), the suites' tokenizer and ``suites.eval_items`` items:

  accuracy(model, tok, items)                  greedy generation, ``scoring.score`` (exact match
                                               overall, by difficulty, by attribute)
  self_consistency(model, tok, items, num_samples=8, temperature=0.7)
                                               majority vote of sampled answers, and pass@k
                                               (``vote_and_score`` on given continuations;
                                               ``self_consistency_by_n`` for several n)
  task_loss(model, tok, items)                 cross-entropy on the answer tokens (likelihood.py)
  knowledge(model, tok, items, cardinality)    bits of facts stored (metrics.knowledge_bits)

``evaluate_suites`` (suite_metrics.py) runs them all and returns flat metrics.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from flax import nnx

from moejax.data import records
from moejax.data import scoring
from moejax.data import tokenizer as tokenizer_lib
from moejax.evaluation import batching
from moejax.evaluation import decoding
from moejax.evaluation import likelihood
from moejax.evaluation import metrics
from moejax.evaluation import model_io

Progress = Callable[[int], None]


def default_max_new_tokens(tokens: Sequence[batching.ItemTokens]) -> int:
  """Twice the longest reference answer (EOS included), rounded up to a power of two >= 8."""
  longest = max((len(t.answer) for t in tokens), default=1)
  return batching.bucket_length(2 * longest, minimum=8)


def _continuations(model, tokenizer, tokens, *, max_new_tokens, num_samples=1,
                   **options) -> list[str]:
  """Decoded continuations, ``num_samples`` per item (item-major)."""
  if max_new_tokens is None:
    max_new_tokens = default_max_new_tokens(tokens)
  prompts = [t.prompt for t in tokens for _ in range(num_samples)]
  generated = decoding.generate(model, prompts, max_new_tokens=max_new_tokens,
                                vocab_limit=tokenizer.vocab_size, **options)
  return [tokenizer.decode(ids) for ids in generated]


def accuracy(model: model_io.Model, tokenizer: tokenizer_lib.Tokenizer,
             items: Sequence[records.Example], *, graphdef: nnx.GraphDef | None = None,
             max_new_tokens: int | None = None, batch_size: int = 64, min_bucket: int = 16,
             progress: Progress | None = None) -> dict[str, Any]:
  """Exact-match accuracy of greedy continuations (``scoring.score``), plus "continuations".

  ``max_new_tokens`` defaults to ``default_max_new_tokens`` of the items' reference answers;
  ``batch_size`` and ``min_bucket`` shape the jitted batches (``decoding.generate``).
  """
  tokens = batching.tokenize_items(tokenizer, items)
  continuations = _continuations(model, tokenizer, tokens, max_new_tokens=max_new_tokens,
                                 graphdef=graphdef, batch_size=batch_size,
                                 min_bucket=min_bucket, progress=progress)
  return {**scoring.score(items, continuations), "continuations": continuations}


def _mean_by(items: Sequence[records.Example], field: str, values: Sequence[float]):
  groups: dict[Any, list[float]] = collections.defaultdict(list)
  for item, value in zip(items, values):
    if getattr(item, field):
      groups[getattr(item, field)].append(value)
  return {key: float(np.mean(v)) for key, v in sorted(groups.items())}


def self_consistency(model: model_io.Model, tokenizer: tokenizer_lib.Tokenizer,
                     items: Sequence[records.Example], *, num_samples: int,
                     temperature: float = 0.7, seed: int = 0, ks: Sequence[int] = (1,),
                     graphdef: nnx.GraphDef | None = None, max_new_tokens: int | None = None,
                     batch_size: int = 64, min_bucket: int = 16,
                     progress: Progress | None = None) -> dict[str, Any]:
  """Majority vote over ``num_samples`` sampled continuations per item, and pass@k.

  Sample j of an item is drawn with a key of (seed, item uid, j), so results do not depend on
  batching or on which other items are evaluated. Scored by ``vote_and_score``.
  """
  tokens = batching.tokenize_items(tokenizer, items)
  keys = decoding.item_keys(seed, [item.uid for item in items], num_samples)
  flat = _continuations(model, tokenizer, tokens, max_new_tokens=max_new_tokens,
                        num_samples=num_samples, graphdef=graphdef, temperature=temperature,
                        keys=keys, batch_size=batch_size, min_bucket=min_bucket,
                        progress=progress)
  samples = [flat[i * num_samples:(i + 1) * num_samples] for i in range(len(items))]
  return vote_and_score(items, samples, ks)


def vote_and_score(items: Sequence[records.Example], samples: Sequence[Sequence[str]],
                   ks: Sequence[int] = (1,)) -> dict[str, Any]:
  """Self-consistency and pass@k of n continuations per item (n = ``len(samples[i])``).

  The voted answer is the most frequent extracted answer (``scoring.extract_answer``,
  ``metrics.majority_vote``); the first sample stating it is scored with ``scoring.score``,
  which gives the stratified accuracies. A sample is correct by ``scoring.is_correct``.

  Returns:
    ``scoring.score`` of the voted continuations (``accuracy``, ``by_difficulty``,
    ``item_correct``, ...), plus ``pass_at_k`` {k: mean over items} and
    ``pass_at_k_by_difficulty`` {d: {k: mean}} for each k in ``ks`` up to n and for k = n,
    ``sample_correct`` (per item, the correctness of each sample) and ``samples``.
  """
  num_samples = len(samples[0]) if samples else 1
  ks = sorted({*(k for k in ks if k <= num_samples), num_samples})
  voted, sample_correct, pass_at = [], [], {k: [] for k in ks}
  for item, conts in zip(items, samples, strict=True):
    if len(conts) != num_samples:
      raise ValueError(f"Item {item.uid} has {len(conts)} samples, not {num_samples}")
    answers = [scoring.extract_answer(c, require_tag=item.kind == "problem") for c in conts]
    winner = metrics.majority_vote(answers)
    voted.append(conts[answers.index(winner)] if winner is not None else "")
    sample_correct.append([scoring.is_correct(item, c) for c in conts])
    for k in ks:
      pass_at[k].append(metrics.pass_at_k(num_samples, sum(sample_correct[-1]), k))
  by_difficulty = {k: _mean_by(items, "difficulty", v) for k, v in pass_at.items()}
  return {**scoring.score(items, voted),
          "pass_at_k": {k: float(np.mean(v)) if v else 0.0 for k, v in pass_at.items()},
          "pass_at_k_by_difficulty": {d: {k: by_difficulty[k][d] for k in ks}
                                      for d in by_difficulty[ks[0]]},
          "sample_correct": sample_correct, "samples": [list(c) for c in samples]}


def self_consistency_by_n(items: Sequence[records.Example], samples: Sequence[Sequence[str]],
                          ns: Sequence[int]) -> dict[int, dict[str, Any]]:
  """``vote_and_score`` of the first n samples of every item, for each n in ``ns``.

  One set of samples serves every n: with per-sample keys (``self_consistency``) the first n
  of N samples are exactly the samples a run with n would draw, so the curve over n is
  paired (differences between n are not blurred by fresh sampling noise).
  """
  num_samples = len(samples[0]) if samples else 0
  if any(not 1 <= n <= num_samples for n in ns):
    raise ValueError(f"every n must be in [1, {num_samples}] (the samples drawn); got {ns}")
  return {n: vote_and_score(items, [s[:n] for s in samples]) for n in sorted(set(ns))}


def task_loss(model: model_io.Model, tokenizer: tokenizer_lib.Tokenizer,
              items: Sequence[records.Example], *, graphdef: nnx.GraphDef | None = None,
              batch_size: int = 64, min_bucket: int = 16,
              progress: Progress | None = None) -> float:
  """Mean cross-entropy (nats) per answer token, EOS included, teacher-forced."""
  tokens = batching.tokenize_items(tokenizer, items)
  nll_N, tokens_N = likelihood.answer_nll(model, tokens, graphdef=graphdef,
                                          batch_size=batch_size, min_bucket=min_bucket,
                                          progress=progress)
  return likelihood.task_loss(nll_N, tokens_N)


def knowledge(model: model_io.Model, tokenizer: tokenizer_lib.Tokenizer,
              items: Sequence[records.Example], cardinality: Mapping[str, int], *,
              graphdef: nnx.GraphDef | None = None, batch_size: int = 64,
              min_bucket: int = 16, per_fact: bool = False,
              progress: Progress | None = None) -> dict[str, Any]:
  """``metrics.knowledge_bits`` of memorization QA items (one fact each)."""
  tokens = batching.tokenize_items(tokenizer, items)
  nll_N, _ = likelihood.answer_nll(model, tokens, graphdef=graphdef, batch_size=batch_size,
                                   min_bucket=min_bucket, progress=progress)
  return metrics.knowledge_bits(nll_N, [item.attribute for item in items], cardinality,
                                per_fact=per_fact)
