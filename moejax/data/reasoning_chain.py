"""Chain problems: a start value and d operations applied left to right, modulo a prime p.

The ``chain`` format of the reasoning suite (``ReasoningConfig.format``), the one the tiny study
uses. Example (p = 7, d = 3)::

  prompt  Chain (mod 7): =3 +4 *2 -1. Solution:
  target   =3 +4=0 *2=0 -1=6. Answer: 6

Every operation ``+4`` and every running value ``=0`` is one token (``tokenizer_symbols``), so a
solution step is two tokens: the next operation, copied from the problem right after the
operation the previous step used (the copy an induction head does, Olsson et al. 2022), and the
new value, one operation-table entry of the previous value and that operation. Multi-step
problems compose these steps on chains never seen in training. The graph format
(reasoning.py) asks for the same arithmetic but makes every operand a lookup of a named
quantity, which the tiny study's models did not learn in their budget (docs/calibration.md).

The canonical form of a chain is its text (start value and operations in order): two chains
are the same computation only if they are the same chain.
"""

from __future__ import annotations

import dataclasses
import hashlib

from moejax.data import records


def apply(op: str, a: int, b: int, p: int) -> int:
  """``a op b`` modulo ``p``."""
  if op == "+":
    return (a + b) % p
  if op == "-":
    return (a - b) % p
  return (a * b) % p


def tokenizer_symbols(modulus: int, operations: str) -> tuple[str, ...]:
  """The pieces chain problems need as single tokens: ``▁+4`` (an operation with its
  operand, after a space) and ``=0`` (a running value), for every operand and value."""
  ops = tuple(f"\u2581{op}{v}" for op in operations for v in range(modulus))
  return ops + tuple(f"={v}" for v in range(modulus))


class HashedForm:
  """``canonical_hash`` of a problem class that defines ``canonical`` (equal computations have
  equal canonical forms)."""

  @property
  def canonical_hash(self) -> str:
    return hashlib.sha256(self.canonical.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class ChainProblem(HashedForm):
  """A start value and the operations applied to it, in order.

  Attributes:
    modulus: the prime p.
    start: the start value in [0, p).
    steps: (op, operand) pairs, applied left to right.
  """
  modulus: int
  start: int
  steps: tuple[tuple[str, int], ...]

  @property
  def difficulty(self) -> int:
    return len(self.steps)

  def values(self) -> list[int]:
    """The running value after each step."""
    out, value = [], self.start
    for op, operand in self.steps:
      value = apply(op, value, operand, self.modulus)
      out.append(value)
    return out

  @property
  def answer(self) -> int:
    return self.values()[-1]

  @property
  def canonical(self) -> str:
    ops = " ".join(f"{op}{v}" for op, v in self.steps)
    return f"chain mod {self.modulus}: {self.start} {ops}"

  def example(self, uid: str) -> records.Example:
    ops = [f"{op}{v}" for op, v in self.steps]
    prompt = f"Chain (mod {self.modulus}): ={self.start} {' '.join(ops)}. Solution:"
    work = " ".join(f"{o}={v}" for o, v in zip(ops, self.values()))
    return records.Example(
        uid=uid, kind="problem", prompt=prompt,
        target=f" ={self.start} {work}. Answer: {self.answer}", answer=str(self.answer),
        difficulty=self.difficulty)


def random_chain(num_ops: int, modulus: int, operations: str, gen) -> ChainProblem:
  """A chain of ``num_ops`` uniformly drawn operations and operands."""
  start = int(gen.integers(modulus))
  steps = tuple((operations[int(gen.integers(len(operations)))], int(gen.integers(modulus)))
                for _ in range(num_ops))
  return ChainProblem(modulus, start, steps)
