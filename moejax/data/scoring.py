"""Exact-match scoring of generated continuations against the suites' answers.

The model continues an item's ``prompt``; ``extract_answer`` reads the answer from that
continuation (decoded text up to EOS):

  * reasoning (``kind == "problem"``): the text after the *last* ``Answer:``; no tag, no answer.
  * memorization QA: the prompt already ends with ``Answer:``, so the whole continuation (or the
    text after an ``Answer:`` it repeats).

Answers are compared after ``normalize``: whitespace collapsed and stripped, one trailing period
dropped. Nothing else is forgiven (case, extra words): the ground truth is exact.

  score(items, continuations) -> {"accuracy", "correct", "count", "item_correct": [bool],
                                  "by_difficulty": {d: {...}}, "by_attribute": {a: {...}}}
"""

from __future__ import annotations

from typing import Any, Sequence

from moejax.data import records

ANSWER_TAG = "Answer:"


def normalize(text: str) -> str:
  text = " ".join(text.split())
  return text[:-1].rstrip() if text.endswith(".") else text


def extract_answer(continuation: str, require_tag: bool = False) -> str | None:
  """The answer in ``continuation``, or None when ``require_tag`` and no ``Answer:`` is there."""
  _, tag, tail = continuation.rpartition(ANSWER_TAG)
  if tag:
    return normalize(tail)
  return None if require_tag else normalize(continuation)


def is_correct(item: records.Example, continuation: str) -> bool:
  """Whether ``continuation`` of ``item.prompt`` states exactly ``item.answer``."""
  answer = extract_answer(continuation, require_tag=item.kind == "problem")
  return answer is not None and answer == normalize(item.answer)


def _summary(flags: list[bool]) -> dict[str, Any]:
  return {"accuracy": sum(flags) / len(flags) if flags else 0.0, "correct": sum(flags),
          "count": len(flags)}


def score(items: Sequence[records.Example], continuations: Sequence[str]) -> dict[str, Any]:
  """Accuracy overall, by difficulty (reasoning) and by attribute (memorization), and each
  item's correctness (``item_correct``, in the items' order)."""
  if len(items) != len(continuations):
    raise ValueError(f"{len(items)} items but {len(continuations)} continuations")
  flags = [is_correct(item, c) for item, c in zip(items, continuations)]
  result = {**_summary(flags), "item_correct": flags}
  for key, field in (("by_difficulty", "difficulty"), ("by_attribute", "attribute")):
    groups: dict[Any, list[bool]] = {}
    for item, flag in zip(items, flags):
      value = getattr(item, field)
      if value:
        groups.setdefault(value, []).append(flag)
    result[key] = {k: _summary(v) for k, v in sorted(groups.items())}
  return result
