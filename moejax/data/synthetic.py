"""A learnable synthetic token stream addressed by (seed, step), for tests and smoke runs.

Sequences follow a fixed random Markov chain: every token has ``branching`` possible successors
with Dirichlet-distributed probabilities, all drawn once from ``seed``. Batch ``s`` is drawn
from ``numpy.random.default_rng([seed, s])``, so it is a pure function of (seed, s) and resumed
runs see exactly the same data. The chain's entropy rate is the loss floor a perfect model
reaches (``entropy_floor``), which makes "the loss falls" checkable against a known target.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from moejax.data import sources


class MarkovSource:
  """Global batches of ``batch_size`` sequences of ``seq_len`` tokens from a random chain."""

  def __init__(self, vocab_size: int, batch_size: int, seq_len: int, *, seed: int = 0,
               chain_seed: int = 0, branching: int = 4):
    if vocab_size < 3:
      raise ValueError(f"vocab_size={vocab_size} too small for the synthetic source")
    self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
    rng = np.random.default_rng([chain_seed, 7919])
    num_tokens = vocab_size - 1  # id 0 is padding and never generated
    self.successors_VB = 1 + rng.integers(0, num_tokens, size=(vocab_size, branching))
    probs_VB = rng.dirichlet(np.full(branching, 0.5), size=vocab_size)
    self.cum_probs_VB = np.cumsum(probs_VB, axis=1)
    self.cum_probs_VB[:, -1] = 1.0
    self._probs_VB = probs_VB

  def batch(self, step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, step])
    tokens_BT = np.empty((self.batch_size, self.seq_len + 1), np.int32)
    tokens_BT[:, 0] = 1 + rng.integers(0, len(self.successors_VB) - 1, size=self.batch_size)
    uniforms_BT = rng.random((self.batch_size, self.seq_len))
    for t in range(self.seq_len):
      current_B = tokens_BT[:, t]
      choice_B = (uniforms_BT[:, t, None] > self.cum_probs_VB[current_B]).sum(axis=1)
      tokens_BT[:, t + 1] = self.successors_VB[current_B, choice_B]
    shape = (self.batch_size, self.seq_len)
    return {
        "inputs": tokens_BT[:, :-1],
        "targets": tokens_BT[:, 1:],
        "loss_mask": np.ones(shape, np.float32),
        "segment_ids": np.ones(shape, np.int32),
        "positions": np.broadcast_to(np.arange(self.seq_len, dtype=np.int32), shape).copy(),
    }

  def entropy_floor(self) -> float:
    """Per-token conditional entropy (nats) averaged over successor positions: the best loss.

    Duplicate successors merge their probabilities, so this is computed on merged outcomes;
    it is averaged uniformly over states (an approximation of the stationary average).
    """
    entropies = []
    for succ_B, probs_B in zip(self.successors_VB[1:], self._probs_VB[1:]):
      merged = np.bincount(succ_B, weights=probs_B)
      merged = merged[merged > 0]
      entropies.append(-np.sum(merged * np.log(merged)))
    return float(np.mean(entropies))


@sources.register("synthetic")
def make_markov_source(data: ml_collections.ConfigDict, vocab_size: int) -> MarkovSource:
  """Reads data.{seed, batch_size, seq_len, branching}; the chain itself depends on
  ``data.get('chain_seed', 0)`` only, so train and eval streams (different seeds) share it."""
  return MarkovSource(vocab_size, data.batch_size, data.seq_len, seed=data.seed,
                      chain_seed=data.get("chain_seed", 0), branching=data.branching)
