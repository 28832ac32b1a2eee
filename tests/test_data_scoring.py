"""The exact-match scorer on hand-made items with known answers."""

import pytest

from moejax.data import records
from moejax.data import scoring


def _qa(answer, attribute):
  return records.Example(uid=f"q/{attribute}", kind="qa", prompt="Question: ... Answer:",
                         target=f" {answer}", answer=answer, attribute=attribute)


def _problem(answer, difficulty):
  return records.Example(uid=f"p/{difficulty}/{answer}", kind="problem",
                         prompt="Problem (mod 23): ... Solution:",
                         target=f" x = 1 + 1 = 2. Answer: {answer}", answer=str(answer),
                         difficulty=difficulty)


@pytest.mark.parametrize("continuation, expected", [
    (" a = 3 + 4 = 7. Answer: 7", "7"),
    (" Answer: 3. b = 2 * 2 = 4. Answer: 4.", "4"),   # the last tag counts; one period dropped
    ("   Tavira  ", "Tavira"),
    (" March  3, 1952", "March 3, 1952"),
])
def test_extract_answer(continuation, expected):
  assert scoring.extract_answer(continuation) == expected


def test_reasoning_needs_an_answer_tag():
  assert scoring.extract_answer(" 7", require_tag=True) is None
  assert not scoring.is_correct(_problem(7, 1), " 7")
  assert scoring.is_correct(_problem(7, 1), " y = 3 + 4 = 7. Answer: 7")


def test_score_on_known_answers():
  items = [_problem(7, 1), _problem(12, 1), _problem(5, 2), _problem(0, 3),
           _qa("Tavira", "birth_city"), _qa("Tavira", "birth_city"), _qa("Physics", "major"),
           _qa("March 3, 1952", "birth_date")]
  continuations = [
      " x = 3 + 4 = 7. Answer: 7",          # right
      " x = 3 + 4 = 7. Answer: 13",         # wrong value
      " x = 1 + 4 = 5. Answer: 5",          # right
      " x = 1 + 4 = 5.",                    # no answer given
      " Tavira",                            # right
      " tavira",                            # case matters
      " Physics.",                          # right (trailing period)
      " March 3, 1953",                     # wrong year
  ]
  result = scoring.score(items, continuations)
  assert (result["correct"], result["count"]) == (4, 8)
  assert result["accuracy"] == 0.5
  assert {d: (v["correct"], v["count"]) for d, v in result["by_difficulty"].items()} == {
      1: (1, 2), 2: (1, 1), 3: (0, 1)}
  assert {a: (v["correct"], v["count"]) for a, v in result["by_attribute"].items()} == {
      "birth_city": (1, 2), "major": (1, 1), "birth_date": (0, 1)}
  assert result["by_difficulty"][1]["accuracy"] == 0.5


def test_reference_targets_score_perfectly():
  from moejax.data import suites  # pylint: disable=import-outside-toplevel
  for suite in ("memorization", "reasoning"):
    items = suites.eval_items(suite, records.TEST, preset="smoke")
    assert scoring.score(items, [it.target for it in items])["accuracy"] == 1.0
    shifted = [it.target for it in items[1:] + items[:1]]
    assert scoring.score(items, shifted)["accuracy"] < 0.5


def test_length_mismatch_is_an_error():
  with pytest.raises(ValueError):
    scoring.score([_qa("a", "major")], [])
