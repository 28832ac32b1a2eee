"""Memorization suite: a synthetic population, its biographies, and question answering.

Each of N people has a unique name and one value per attribute, every value drawn uniformly and
independently, so the information content is exact: ``N * sum_a log2(|A_a|)`` bits of facts
(plus ``log2 C(P, N)`` bits for which N of the P possible names exist).

The population is split in two groups (the first ``num_seen`` people, then the rest):

  split        content                                   measures
  train        biographies of *everyone* (several         (pretraining text)
               templates, shuffled sentence order) and
               QA pairs of the *seen* group
  train_eval   QA of the seen group (copies of training   memorization: recall of facts seen
               text)                                     in QA form in training
  test         QA of the unseen group                    knowledge extraction: facts seen only
                                                         in biographies, asked in QA form

A QA item: prompt ``Question: What is the birth city of Ana Kolm? Answer:``, target
`` Tavira``, answer ``Tavira``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from moejax.data import presets
from moejax.data import records
from moejax.data import words

_VALUE_KIND = {"birth_city": "city", "work_city": "city", "university": "university",
               "major": "major", "employer": "employer"}

_SENTENCES = {
    "birth_date": ("{name} was born on {value}.", "{name} came into the world on {value}.",
                   "The birthday of {name} is {value}.", "{name} arrived on {value}.",
                   "On {value}, {name} was born."),
    "birth_city": ("{name} was born in {value}.", "{name} spent early years in {value}.",
                   "{name} is a native of {value}.", "The birthplace of {name} is {value}.",
                   "{name} grew up in {value}."),
    "university": ("{name} studied at {value}.", "{name} graduated from {value}.",
                   "{name} attended {value}.", "{name} earned a degree at {value}.",
                   "{name} was a student at {value}."),
    "major": ("{name} majored in {value}.", "{name} specialized in {value}.",
              "The field of study of {name} was {value}.", "{name} focused on {value} in college.",
              "{name} completed a degree in {value}."),
    "employer": ("{name} works for {value}.", "{name} is employed by {value}.",
                 "{name} has a job at {value}.", "The employer of {name} is {value}.",
                 "{name} earns a living at {value}."),
    "work_city": ("{name} works in {value}.", "{name} commutes to an office in {value}.",
                  "The workplace of {name} is in {value}.", "{name} has an office in {value}.",
                  "{name} now lives and works in {value}."),
}

_QUESTIONS = {
    "birth_date": "What is the birth date of {name}?",
    "birth_city": "What is the birth city of {name}?",
    "university": "Which university did {name} attend?",
    "major": "What did {name} major in?",
    "employer": "Which company employs {name}?",
    "work_city": "In which city does {name} work?",
}


@dataclasses.dataclass(frozen=True)
class Person:
  index: int
  name: str
  facts: tuple[tuple[str, str], ...]  # (attribute, rendered value), in config order


def _birth_date(index: int, cfg: presets.MemorizationConfig) -> str:
  month, rest = index % 12, index // 12
  day, year = rest % cfg.date_days + 1, 1950 + rest // cfg.date_days
  return f"{words.MONTHS[month]} {day}, {year}"


def _check(cfg: presets.MemorizationConfig) -> None:
  for name in cfg.attribute_names:
    if name not in presets.KNOWN_ATTRIBUTES:
      raise ValueError(f"Unknown attribute {name!r}; known: {presets.KNOWN_ATTRIBUTES}")
  if not 1 <= cfg.date_days <= 28:
    raise ValueError(f"date_days must be in [1, 28], got {cfg.date_days}")


@functools.lru_cache(maxsize=4)
def population(cfg: presets.MemorizationConfig, seed: int) -> tuple[Person, ...]:
  """The N people of the suite, a pure function of (cfg, seed)."""
  _check(cfg)
  gen = records.rng(seed, "memorization/population")
  first, last = words.pool("first_name"), words.pool("last_name")
  name_ids = gen.choice(len(first) * len(last), size=cfg.num_people, replace=False)
  names = [f"{first[i // len(last)]} {last[i % len(last)]}" for i in name_ids]
  columns = []
  for attribute in cfg.attribute_names:
    draws = gen.integers(cfg.cardinality(attribute), size=cfg.num_people)
    if attribute == "birth_date":
      columns.append([_birth_date(int(i), cfg) for i in draws])
    else:
      table = words.values(_VALUE_KIND[attribute], cfg.cardinality(attribute))
      columns.append([table[i] for i in draws])
  return tuple(Person(i, names[i], tuple(zip(cfg.attribute_names, (c[i] for c in columns))))
               for i in range(cfg.num_people))


def qa_example(person: Person, attribute: str, value: str) -> records.Example:
  question = _QUESTIONS[attribute].format(name=person.name)
  return records.Example(
      uid=f"mem/p{person.index:05d}/{attribute}", kind="qa",
      prompt=f"Question: {question} Answer:", target=f" {value}", answer=value,
      attribute=attribute)


def biography(person: Person, k: int, gen) -> records.Example:
  """Biography ``k`` of ``person``: a random template per fact, facts in random order."""
  sentences = [_SENTENCES[a][gen.integers(len(_SENTENCES[a]))].format(name=person.name, value=v)
               for a, v in person.facts]
  order = gen.permutation(len(sentences))
  return records.Example(uid=f"mem/p{person.index:05d}/bio{k}", kind="bio", prompt="",
                         target=" ".join(sentences[i] for i in order))


def examples(cfg: presets.MemorizationConfig, seed: int, split: str) -> list[records.Example]:
  """The examples of ``split`` (train, train_eval or test); see the module docstring."""
  people = population(cfg, seed)
  seen, unseen = people[:cfg.num_seen], people[cfg.num_seen:]
  if split == records.TRAIN_EVAL:
    return [qa_example(p, a, v) for p in seen for a, v in p.facts]
  if split == records.TEST:
    return [qa_example(p, a, v) for p in unseen for a, v in p.facts]
  if split != records.TRAIN:
    raise ValueError(f"Unknown memorization split {split!r}")
  gen = records.rng(seed, "memorization/biographies")
  docs = [biography(p, k, gen) for p in people for k in range(cfg.bios_per_person)]
  docs += examples(cfg, seed, records.TRAIN_EVAL)
  order = records.rng(seed, "memorization/train_order").permutation(len(docs))
  return [docs[i] for i in order]


def information(cfg: presets.MemorizationConfig) -> dict:
  """Exact information content in bits, per attribute and per group."""
  per_attribute = {a: {"cardinality": cfg.cardinality(a), "bits": math.log2(cfg.cardinality(a))}
                   for a in cfg.attribute_names}
  name_space = len(words.pool("first_name")) * len(words.pool("last_name"))
  return {
      "num_people": cfg.num_people,
      "num_seen": cfg.num_seen,
      "attributes": per_attribute,
      "bits_per_person": cfg.bits_per_person(),
      "fact_bits": cfg.num_people * cfg.bits_per_person(),
      "fact_bits_seen": cfg.num_seen * cfg.bits_per_person(),
      "fact_bits_unseen": (cfg.num_people - cfg.num_seen) * cfg.bits_per_person(),
      "name_bits": math.log2(math.comb(name_space, cfg.num_people)),
  }
