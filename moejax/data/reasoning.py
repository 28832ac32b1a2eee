"""Reasoning suite: multi-step modular arithmetic problems with worked solutions.

A problem is a random expression tree with ``d`` operations (+, -, * modulo a prime p) whose
leaves are a few named quantities; each operation defines a new named quantity, and the
statements come in a random order that respects the dependencies. The difficulty is ``d``, the
number of operations the solution must carry out. Example (p = 23, d = 2)::

  prompt  Problem (mod 23): pens = 12. cats = 7. (1) cups = cats + pens. (2) jars = cups * cats.
          Find jars. Solution:
  target   (1) cups = cats + pens = 7 + 12 = 19. cups = 19. (2) jars = cups * cats = 19 * 7 = 18.
          jars = 18. Answer: 18

Splits: ``train`` holds worked problems (the solution is part of the text), ``train_eval`` is the
first ``eval_per_difficulty`` training problems of each difficulty (train side of the gap),
``test`` holds new problems. Novelty is checked by a canonical form that ignores quantity names
and statement order (commutative operands sorted): no test problem has the canonical form of a
training problem, and no canonical form repeats inside a split. Evaluation generates the
solution and compares the number after the last ``Answer:`` (scoring.py), by difficulty.
"""

from __future__ import annotations

import dataclasses
import functools

from moejax.data import presets
from moejax.data import reasoning_chain
from moejax.data import records
from moejax.data import words

_OPS = ("+", "-", "*")
_COMMUTATIVE = ("+", "*")
FORMATS = ("graph", "chain")


@dataclasses.dataclass(frozen=True)
class Problem(reasoning_chain.HashedForm):
  """One problem: given quantities, operation statements in order, and the asked quantity.

  Attributes:
    modulus: the prime p.
    inputs: (name, value) of the given quantities, in statement order.
    steps: (name, op, left name, right name), in statement (and solution) order; the last step
      defines the asked quantity.
  """
  modulus: int
  inputs: tuple[tuple[str, int], ...]
  steps: tuple[tuple[str, str, str, str], ...]

  @property
  def difficulty(self) -> int:
    return len(self.steps)

  def values(self) -> dict[str, int]:
    """Value of every quantity."""
    vals = dict(self.inputs)
    for name, op, left, right in self.steps:
      vals[name] = reasoning_chain.apply(op, vals[left], vals[right], self.modulus)
    return vals

  @property
  def answer(self) -> int:
    return self.values()[self.steps[-1][0]]

  @property
  def canonical(self) -> str:
    """The asked quantity as an expression of values: names and statement order removed,
    operands of + and * sorted. Equal canonical forms mean the same computation."""
    given = dict(self.inputs)
    defined = {name: (op, left, right) for name, op, left, right in self.steps}

    def expand(name: str) -> str:
      if name in given:
        return str(given[name])
      op, left, right = defined[name]
      parts = [expand(left), expand(right)]
      if op in _COMMUTATIVE:
        parts.sort()
      return f"({op} {parts[0]} {parts[1]})"

    return f"mod {self.modulus}: {expand(self.steps[-1][0])}"

  def example(self, uid: str) -> records.Example:
    statements = [f"{n} = {v}." for n, v in self.inputs]
    statements += [f"({i}) {n} = {a} {op} {b}." for i, (n, op, a, b) in enumerate(self.steps, 1)]
    prompt = (f"Problem (mod {self.modulus}): {' '.join(statements)} "
              f"Find {self.steps[-1][0]}. Solution:")
    vals = self.values()
    # A scratchpad at the granularity of a two-layer model (docs/calibration.md): step (i)
    # copies operation (i), its operands' values, the result, and restates the result as
    # "name = value." as the inputs are given, so every solution token is a copy found by
    # one lookup in the context, or one operation-table entry.
    work = [f"({i}) {n} = {a} {op} {b} = {vals[a]} {op} {vals[b]} = {vals[n]}. {n} = {vals[n]}."
            for i, (n, op, a, b) in enumerate(self.steps, 1)]
    return records.Example(
        uid=uid, kind="problem", prompt=prompt,
        target=f" {' '.join(work)} Answer: {self.answer}", answer=str(self.answer),
        difficulty=self.difficulty)


def _random_problem(num_ops: int, cfg: presets.ReasoningConfig, gen) -> Problem:
  """A random expression tree with ``num_ops`` operations, rendered as a problem."""
  p = cfg.modulus
  num_inputs = int(gen.integers(2, max(2, min(num_ops + 1, cfg.max_inputs)) + 1))
  slots = list(range(num_inputs)) + list(gen.integers(num_inputs, size=num_ops + 1 - num_inputs))
  slots = [int(s) for s in gen.permutation(slots)]
  input_values = [int(v) for v in gen.integers(p, size=num_inputs)]
  # Build the tree: a node is ("in", j) or ("op", k); ops[k] = (op, left node, right node).
  ops: list[tuple[str, tuple, tuple]] = []

  def build(size: int) -> tuple:
    if size == 0:
      return ("in", slots.pop())
    left = int(gen.integers(size))
    left_node, right_node = build(left), build(size - 1 - left)
    ops.append((cfg.operations[gen.integers(len(cfg.operations))], left_node, right_node))
    return ("op", len(ops) - 1)

  build(num_ops)
  # A random topological order of the operations (the root always comes last).
  done: set[int] = set()
  order: list[int] = []
  while len(order) < len(ops):
    ready = [k for k in range(len(ops)) if k not in done and all(
        n[0] == "in" or n[1] in done for n in ops[k][1:])]
    pick = ready[int(gen.integers(len(ready)))]
    done.add(pick)
    order.append(pick)
  names = [words.NOUNS[i] for i in gen.choice(len(words.NOUNS), num_inputs + num_ops,
                                              replace=False)]

  def name(node: tuple) -> str:
    return names[node[1]] if node[0] == "in" else names[num_inputs + node[1]]

  input_order = gen.permutation(num_inputs)
  return Problem(
      modulus=p,
      inputs=tuple((names[j], input_values[j]) for j in input_order),
      steps=tuple((name(("op", k)), ops[k][0], name(ops[k][1]), name(ops[k][2])) for k in order))


def _draw(num_ops: int, cfg: presets.ReasoningConfig, gen):
  """One random problem of ``num_ops`` operations in the configured format."""
  if cfg.format == "chain":
    return reasoning_chain.random_chain(num_ops, cfg.modulus, cfg.operations, gen)
  return _random_problem(num_ops, cfg, gen)


def _sample_distinct(num_ops: int, count: int, cfg: presets.ReasoningConfig, gen,
                     exclude: set[str]) -> list[Problem]:
  """``count`` problems of ``num_ops`` operations whose canonical hashes are new to ``exclude``."""
  found: list[Problem] = []
  if num_ops < cfg.novel_from:  # operation-table level: drawn freely (presets.ReasoningConfig)
    return [_draw(num_ops, cfg, gen) for _ in range(count)]
  attempts = 0
  while len(found) < count:
    attempts += 1
    if attempts > 50 * count + 1000:
      raise ValueError(
          f"Could not find {count} distinct problems with {num_ops} operations mod "
          f"{cfg.modulus} (found {len(found)}); lower the counts or raise the modulus.")
    problem = _draw(num_ops, cfg, gen)
    if problem.canonical_hash not in exclude:
      exclude.add(problem.canonical_hash)
      found.append(problem)
  return found


@functools.lru_cache(maxsize=4)
def problems(cfg: presets.ReasoningConfig, seed: int) -> dict[str, dict[int, list[Problem]]]:
  """Problems by split and difficulty: {train, train_eval, test} -> difficulty -> problems.

  Cached: treat the result as read-only.
  """
  if cfg.min_ops < 1 or cfg.max_ops < cfg.min_ops or cfg.max_inputs < 2:
    raise ValueError(f"Invalid reasoning difficulty range or inputs: {cfg}")
  if not cfg.operations or set(cfg.operations) - set(_OPS):
    raise ValueError(f"Reasoning operations {cfg.operations!r} must be a non-empty subset of "
                     f"{''.join(_OPS)!r}")
  if cfg.format not in FORMATS:
    raise ValueError(f"Reasoning format {cfg.format!r} must be one of {FORMATS}")
  if cfg.max_ops + cfg.max_inputs > len(words.NOUNS):
    raise ValueError(f"Problems need at most {len(words.NOUNS)} quantities")
  seen: set[str] = set()
  out: dict[str, dict[int, list[Problem]]] = {records.TRAIN: {}, records.TRAIN_EVAL: {},
                                              records.TEST: {}}
  for d in cfg.difficulties:
    gen = records.rng(seed, f"reasoning/train/d{d}")
    out[records.TRAIN][d] = _sample_distinct(d, cfg.train_per_difficulty, cfg, gen, seen)
    out[records.TRAIN_EVAL][d] = out[records.TRAIN][d][:cfg.eval_per_difficulty]
  for d in cfg.difficulties:  # after every training problem is known
    gen = records.rng(seed, f"reasoning/test/d{d}")
    out[records.TEST][d] = _sample_distinct(d, cfg.eval_per_difficulty, cfg, gen, seen)
  return out


def examples(cfg: presets.ReasoningConfig, seed: int, split: str) -> list[records.Example]:
  """The examples of ``split``; train is shuffled, evaluation splits are ordered by difficulty."""
  if split not in (records.TRAIN, records.TRAIN_EVAL, records.TEST):
    raise ValueError(f"Unknown reasoning split {split!r}")
  by_difficulty = problems(cfg, seed)[split]
  tag = records.TEST if split == records.TEST else records.TRAIN
  docs = [prob.example(f"rea/{tag}/d{d}/{i:05d}")
          for d, probs in by_difficulty.items() for i, prob in enumerate(probs)]
  if split == records.TRAIN:
    order = records.rng(seed, "reasoning/train_order").permutation(len(docs))
    docs = [docs[i] for i in order]
  return docs
