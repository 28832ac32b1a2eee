"""Filler suite: generic text from a small grammar, with no facts and no arithmetic.

It dilutes the pretraining mixture the way generic web text dilutes a real corpus; it has only a
``train`` split.
"""

from __future__ import annotations

from moejax.data import presets
from moejax.data import records

_DETERMINERS = ("The", "A", "Every", "One", "That")
_ADJECTIVES = ("small", "old", "quiet", "bright", "green", "heavy", "gentle", "busy", "cold",
               "tall", "strange", "happy")
_SUBJECTS = ("river", "child", "farmer", "bird", "train", "teacher", "storm", "garden", "cat",
             "sailor", "window", "village")
_VERBS = ("moves", "waits", "sings", "turns", "rests", "grows", "shines", "wanders", "falls",
          "listens")
_ADVERBS = ("slowly", "quietly", "often", "again", "gladly", "early", "late", "softly")
_PLACES = ("near the hill", "by the road", "under the bridge", "in the morning", "at the market",
           "across the field", "behind the wall", "after the rain")


def _sentence(gen) -> str:
  def pick(options):
    return options[int(gen.integers(len(options)))]
  return (f"{pick(_DETERMINERS)} {pick(_ADJECTIVES)} {pick(_SUBJECTS)} {pick(_VERBS)} "
          f"{pick(_ADVERBS)} {pick(_PLACES)}.")


def examples(cfg: presets.FillerConfig, seed: int, split: str) -> list[records.Example]:
  """``cfg.num_docs`` documents of ``cfg.sentences_per_doc`` sentences (train split only)."""
  if split != records.TRAIN:
    raise ValueError(f"The filler suite has only a {records.TRAIN!r} split, not {split!r}")
  gen = records.rng(seed, "filler/train")
  return [records.Example(uid=f"fil/{i:05d}", kind="filler", prompt="",
                          target=" ".join(_sentence(gen) for _ in range(cfg.sentences_per_doc)))
          for i in range(cfg.num_docs)]
