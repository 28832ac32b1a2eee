"""Sizes of the procedurally generated suites: one frozen dataclass per suite, grouped in presets.

A preset fixes *what* the data is (population, problems, filler text, tokenizer size, default
mixture proportions, generation seed). It does not fix how training reads it: the stream's order
seed, batch size and sequence length come from the training config (``config.data``).

Presets:
  smoke  builds in seconds; for tests.
  tiny   single tiny runs on a CPU (configs/lm_moe.py:tiny): 512 people, modulus-23 problems.
  study  the data of the tiny sparsity study (configs/sweeps/optimal_sparsity.py:tiny): 160
         people x 5 attributes, so that in 800 steps of 16 x 128 tokens at half the mixture each
         fact is seen ~29 times as QA and ~29 times in a biography (the 28k-token memorization
         text is read ~29 times), short of saturation even for the largest model; modulus-7
         chain problems of 1-6 operations, tested on chains no training problem has.
         docs/calibration.md records how it was chosen.
  small  4x the population of tiny and longer problems; for a laptop-sized GPU or a TPU host.

To add a preset, add an entry to ``PRESETS`` here: the tfds builders create one BuilderConfig per
preset when they are first imported, and the data version (``DATA_VERSION``) names the generator
code, so change it whenever the generated text of an existing preset changes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

# Version of the generators; the tfds builders carry it, the manifest records it.
DATA_VERSION = "1.3.1"

SUITES = ("memorization", "reasoning", "filler")

# Attribute names that the memorization suite knows how to render; see memorization.py.
KNOWN_ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer", "work_city")


@dataclasses.dataclass(frozen=True)
class MemorizationConfig:
  """A synthetic population; every attribute is drawn uniformly and independently.

  Attributes:
    num_people: N, the population size (names are unique).
    attributes: (name, cardinality) pairs. For ``birth_date`` the cardinality is derived from
      ``date_days`` x 12 months x ``date_years`` and the pair's number is ignored (use 0).
    date_days: days of the month a birth date can take (1..date_days, at most 28).
    date_years: number of consecutive birth years (starting at 1950).
    bios_per_person: biographies rendered per person (each with its own template choice and
      sentence order).
    qa_seen_fraction: fraction of people whose QA pairs are in the training text; the others
      appear in training only through biographies.
  """
  num_people: int
  attributes: tuple[tuple[str, int], ...]
  date_days: int = 28
  date_years: int = 10
  bios_per_person: int = 4
  qa_seen_fraction: float = 0.5

  def cardinality(self, attribute: str) -> int:
    """Number of equally likely values of ``attribute``."""
    if attribute == "birth_date":
      return 12 * self.date_days * self.date_years
    return dict(self.attributes)[attribute]

  @property
  def attribute_names(self) -> tuple[str, ...]:
    return tuple(name for name, _ in self.attributes)

  @property
  def num_seen(self) -> int:
    """People whose QA pairs are in training (the first ``num_seen`` of the population)."""
    return int(round(self.qa_seen_fraction * self.num_people))

  def bits_per_person(self) -> float:
    """Entropy in bits of one person's attributes: sum over attributes of log2(cardinality)."""
    return sum(math.log2(self.cardinality(a)) for a in self.attribute_names)


@dataclasses.dataclass(frozen=True)
class ReasoningConfig:
  """Multi-step modular arithmetic problems over a random dependency graph.

  Attributes:
    modulus: a prime p; all values live in [0, p).
    min_ops, max_ops: difficulty range (number of operations in the solution).
    max_inputs: at most this many given quantities per problem.
    train_per_difficulty: training problems per difficulty.
    eval_per_difficulty: problems per difficulty in ``test`` (new) and ``train_eval`` (a copy of
      training problems).
    novel_from: the smallest difficulty whose test problems must be new computations (a
      canonical form no training problem has) and whose training problems are all distinct.
      Below it problems are drawn freely: with a small modulus a one-operation problem is one
      entry of an operation table (3 p^2 of them), which training covers, so there a test
      problem is new only in its names and statement order.
    operations: the operations problems use, a subset of "+-*".
    format: "graph" (named quantities over a dependency graph, reasoning.py) or "chain" (a
      start value and operations applied in order, one token per step, reasoning_chain.py).
      ``max_inputs`` only applies to graphs.
  """
  modulus: int = 23
  min_ops: int = 1
  max_ops: int = 4
  max_inputs: int = 3
  train_per_difficulty: int = 1000
  eval_per_difficulty: int = 100
  novel_from: int = 1
  operations: str = "+-*"
  format: str = "graph"

  @property
  def difficulties(self) -> tuple[int, ...]:
    return tuple(range(self.min_ops, self.max_ops + 1))


@dataclasses.dataclass(frozen=True)
class FillerConfig:
  """Generic synthetic text from a small grammar (no facts, no arithmetic)."""
  num_docs: int = 1000
  sentences_per_doc: int = 4


@dataclasses.dataclass(frozen=True)
class Preset:
  """Everything that determines the built data of one preset.

  Attributes:
    name: preset name; also the tfds BuilderConfig name.
    seed: generation seed of the suites (the population, the problems, the filler).
    memorization, reasoning, filler: per-suite sizes.
    vocab_size: SentencePiece pieces requested (the trainer may return fewer on small corpora;
      read the real size with ``tokenizer.tokenizer_vocab_size``).
    mixture: default pretraining proportions (suite -> weight, normalised); suites with weight 0
      are left out of the mixture.
  """
  name: str
  seed: int
  memorization: MemorizationConfig
  reasoning: ReasoningConfig
  filler: FillerConfig
  vocab_size: int
  mixture: tuple[tuple[str, float], ...]

  def to_json(self) -> dict[str, Any]:
    """The preset as plain JSON types (tuples become lists), as stored in the manifest."""
    return json.loads(json.dumps(dataclasses.asdict(self)))


_TINY_ATTRIBUTES = (
    ("birth_date", 0), ("birth_city", 64), ("university", 64), ("major", 32), ("employer", 64))

PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke",
        seed=0,
        memorization=MemorizationConfig(
            num_people=40,
            attributes=(("birth_date", 0), ("birth_city", 8), ("university", 8), ("major", 8),
                        ("employer", 8)),
            date_days=4, date_years=2, bios_per_person=2),
        reasoning=ReasoningConfig(
            modulus=11, min_ops=1, max_ops=3, train_per_difficulty=20, eval_per_difficulty=5),
        filler=FillerConfig(num_docs=20),
        vocab_size=256,
        mixture=(("memorization", 0.5), ("reasoning", 0.4), ("filler", 0.1)),
    ),
    "tiny": Preset(
        name="tiny",
        seed=0,
        memorization=MemorizationConfig(num_people=512, attributes=_TINY_ATTRIBUTES),
        reasoning=ReasoningConfig(modulus=23, min_ops=1, max_ops=4, train_per_difficulty=500,
                                  eval_per_difficulty=100),
        filler=FillerConfig(num_docs=500),
        vocab_size=512,
        mixture=(("memorization", 0.5), ("reasoning", 0.5), ("filler", 0.0)),
    ),
    "study": Preset(
        name="study",
        seed=0,
        memorization=MemorizationConfig(
            num_people=160,
            attributes=(("birth_date", 0), ("birth_city", 32), ("university", 32), ("major", 16),
                        ("employer", 32)),
            date_days=8, date_years=4, bios_per_person=1),
        # Chains (one token per solution step): the graph format's named-quantity lookups were
        # not learned in this budget, chains are (docs/calibration.md). A pool of 12,000 worked
        # problems (354k tokens), read ~2.3 times in 800 steps at this mixture; test chains are
        # new from two operations on (one-operation problems are the 147 table entries).
        reasoning=ReasoningConfig(modulus=7, min_ops=1, max_ops=6, train_per_difficulty=2000,
                                  eval_per_difficulty=16, novel_from=2, format="chain"),
        filler=FillerConfig(num_docs=100),
        vocab_size=384,
        mixture=(("memorization", 0.5), ("reasoning", 0.5), ("filler", 0.0)),
    ),
    "small": Preset(
        name="small",
        seed=0,
        memorization=MemorizationConfig(
            num_people=2048,
            attributes=(("birth_date", 0), ("birth_city", 128), ("university", 128),
                        ("major", 64), ("employer", 256), ("work_city", 128)),
            date_days=28, date_years=40, bios_per_person=6),
        reasoning=ReasoningConfig(modulus=97, min_ops=1, max_ops=6, max_inputs=4,
                                  train_per_difficulty=5000, eval_per_difficulty=200),
        filler=FillerConfig(num_docs=5000),
        vocab_size=1024,
        mixture=(("memorization", 0.45), ("reasoning", 0.45), ("filler", 0.1)),
    ),
}


def get_preset(name: str) -> Preset:
  """Returns the preset called ``name``, with a clear error for unknown names."""
  if name not in PRESETS:
    raise ValueError(f"Unknown data preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name]
