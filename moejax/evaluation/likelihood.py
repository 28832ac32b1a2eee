"""Teacher-forced log-likelihood of the reference answers: task loss and knowledge bits read it.

One forward pass of ``MoELM.__call__`` (the training path) over ``[PAD] + prompt + answer``,
right-padded (padding is segment 0, so it is masked out), scores every answer token, EOS
included, given the prompt and the preceding answer tokens.

Task loss (Nakamura et al. 2025) is the mean cross-entropy over all answer tokens of the items,
in nats per token: ``sum_i nll_i / sum_i tokens_i``.

Axes: B batch, T padded sequence length, V vocabulary.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from moejax.evaluation import batching
from moejax.evaluation import model_io


@functools.partial(jax.jit, static_argnames=("graphdef",))
def answer_nll_batch(graphdef: nnx.GraphDef, states, inputs_BT, targets_BT, real_BT, answer_BT):
  """Summed cross-entropy (nats) of the targets where ``answer_BT`` is 1, per row: [B]."""
  model = nnx.merge(graphdef, *states)
  logits_BTV, _ = model(inputs_BT, None, real_BT)
  nll_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)
  return jnp.sum(nll_BT * answer_BT, axis=1)


def answer_nll(model: model_io.Model, items: Sequence[batching.ItemTokens], *,
               graphdef: nnx.GraphDef | None = None, batch_size: int = 64,
               min_bucket: int = 16, progress: Callable[[int], None] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """Per item: the answer's negative log-likelihood in nats, and its number of tokens.

  ``nll_i = -log p(answer_i + EOS | prompt_i)``, summed over the answer's tokens. Sequences are
  padded to power-of-two lengths of at least ``min_bucket``.
  """
  graphdef, states = model_io.split(model, graphdef)
  nll_N = np.zeros(len(items), np.float64)
  tokens_N = np.array([len(item.answer) for item in items], np.int64)
  rows = batch_size
  sequences = [item.prompt + item.answer for item in items]
  for index_B in batching.length_batches([len(s) for s in sequences], rows):
    length = batching.bucket_length(max(len(sequences[i]) for i in index_B) - 1, min_bucket)
    inputs_BT, real_BT = batching.right_pad([sequences[i][:-1] for i in index_B], rows, length)
    targets_BT, _ = batching.right_pad([sequences[i][1:] for i in index_B], rows, length)
    answer_BT = np.zeros_like(real_BT)
    for b, i in enumerate(index_B):
      first = len(items[i].prompt) - 1  # the position that predicts the first answer token
      answer_BT[b, first:first + len(items[i].answer)] = 1
    nll_B = answer_nll_batch(graphdef, states, jnp.asarray(inputs_BT), jnp.asarray(targets_BT),
                             jnp.asarray(real_BT), jnp.asarray(answer_BT, jnp.float32))
    nll_N[index_B] = np.asarray(nll_B)[:len(index_B)]
    if progress is not None:
      progress(len(index_B))
  return nll_N, tokens_N


def task_loss(nll_N: np.ndarray, tokens_N: np.ndarray) -> float:
  """Mean cross-entropy per answer token (nats) over all items."""
  return float(np.sum(nll_N) / max(int(np.sum(tokens_N)), 1))
