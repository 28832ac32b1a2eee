"""The one record type of the suites, split names, and seeded random generators.

Every suite produces ``Example`` records. Training text is ``prompt + target``; evaluation feeds
``prompt`` and compares the model's continuation with ``target`` (task loss) and ``answer``
(exact match, see scoring.py). Prompts end without a trailing space and targets start with one,
so the tokens of ``prompt`` are a prefix of the tokens of ``prompt + target`` (SentencePiece pieces
never cross a space).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Iterable

import numpy as np

# Split names shared by all suites (the filler suite only has TRAIN).
TRAIN = "train"            # pretraining text
TRAIN_EVAL = "train_eval"  # training items again, in evaluation format (train side of the gap)
TEST = "test"              # held-out items (test side of the gap)
EVAL_SPLITS = (TRAIN_EVAL, TEST)


@dataclasses.dataclass(frozen=True)
class Example:
  """One document or evaluation item.

  Attributes:
    uid: unique, stable id, e.g. ``mem/p00012/birth_city/qa`` or ``rea/train/d3/00017``.
    kind: ``bio``, ``qa``, ``problem`` or ``filler``.
    prompt: evaluation prompt ("" for documents without one, e.g. biographies).
    target: reference continuation of the prompt.
    answer: final answer compared by exact match ("" when there is none).
    attribute: memorization attribute asked about ("" otherwise).
    difficulty: number of operations of a reasoning problem (0 otherwise).
  """
  uid: str
  kind: str
  prompt: str
  target: str
  answer: str = ""
  attribute: str = ""
  difficulty: int = 0

  @property
  def text(self) -> str:
    """The training text of this example."""
    return self.prompt + self.target

  @property
  def meta(self) -> dict[str, Any]:
    """Metadata for stratified metrics."""
    return {"uid": self.uid, "kind": self.kind, "attribute": self.attribute,
            "difficulty": self.difficulty}

  def to_features(self) -> dict[str, Any]:
    """The tfds feature dict of this example."""
    features = dataclasses.asdict(self)
    features["text"] = self.text
    return features


# The name used by evaluation code; it is the same record.
EvalItem = Example


def rng(seed: int, purpose: str) -> np.random.Generator:
  """A generator determined by ``seed`` and a purpose string (independent streams per purpose)."""
  tag = int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:8], "little")
  return np.random.default_rng([seed, tag])


def text_sha256(examples: Iterable[Example]) -> str:
  """SHA-256 over the uids and texts of ``examples`` in order."""
  digest = hashlib.sha256()
  for ex in examples:
    for part in (ex.uid, ex.text):
      data = part.encode()
      digest.update(len(data).to_bytes(8, "little"))
      digest.update(data)
  return digest.hexdigest()
