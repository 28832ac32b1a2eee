"""pass@k, majority vote, self-consistency scoring and knowledge bits on hand-made inputs."""

import math

import numpy as np
import pytest

from moejax.data import records
from moejax.data import suites
from moejax.evaluation import batching
from moejax.evaluation import metrics
from moejax.evaluation import suite_metrics
from moejax.evaluation import tasks


def _problem(uid, answer, difficulty):
  return records.Example(uid=uid, kind="problem", prompt="Problem (mod 11): ... Solution:",
                         target=f" ... Answer: {answer}", answer=answer, difficulty=difficulty)


def _qa(uid, answer, attribute):
  return records.Example(uid=uid, kind="qa", prompt="Question: ...? Answer:", target=f" {answer}",
                         answer=answer, attribute=attribute)


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 1, 0.4), (5, 2, 2, 0.7), (5, 0, 3, 0.0), (5, 3, 3, 1.0), (5, 5, 1, 1.0),
    (1, 1, 1, 1.0), (10, 1, 10, 1.0)])
def test_pass_at_k_known_values(n, c, k, expected):
  assert metrics.pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_is_the_combinatorial_formula():
  for n in range(1, 12):
    for c in range(n + 1):
      for k in range(1, n + 1):
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert metrics.pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
  with pytest.raises(ValueError):
    metrics.pass_at_k(3, 1, 4)


def test_majority_vote():
  assert metrics.majority_vote(["3", "4", "3", None]) == "3"
  assert metrics.majority_vote(["4", "3", "3", "4"]) == "4"  # a tie goes to the earliest
  assert metrics.majority_vote([None, "7", None, None]) == "7"  # no answer does not vote
  assert metrics.majority_vote([None, None]) is None


def test_vote_and_score_on_known_answers():
  items = [_problem("p1", "3", 1), _problem("p2", "5", 2), _qa("q1", "Tavira", "birth_city")]
  samples = [
      ["x = 1 + 2 = 3. Answer: 3", "Answer: 4", "y = 3. Answer: 3"],  # voted 3: right, c=2
      ["Answer: 4", "5", "Answer: 4"],         # voted 4: wrong; "5" has no tag, c=0
      [" Tavira", " Lisbon", " Tavira."],      # voted Tavira ("." is forgiven): right, c=2
  ]
  result = tasks.vote_and_score(items, samples, ks=(1, 2, 5))
  assert result["accuracy"] == pytest.approx(2 / 3) and result["correct"] == 2
  assert result["by_difficulty"][1]["accuracy"] == 1.0
  assert result["by_difficulty"][2]["accuracy"] == 0.0
  assert result["by_attribute"]["birth_city"]["accuracy"] == 1.0
  assert sorted(result["pass_at_k"]) == [1, 2, 3]  # k > n dropped, k = n added
  assert result["pass_at_k"][1] == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
  assert result["pass_at_k"][2] == pytest.approx((1 + 0 + 1) / 3)
  assert result["pass_at_k"][3] == pytest.approx(2 / 3)
  assert result["pass_at_k_by_difficulty"] == {1: {1: pytest.approx(2 / 3), 2: 1.0, 3: 1.0},
                                               2: {1: 0.0, 2: 0.0, 3: 0.0}}
  assert result["item_correct"] == [True, False, True]
  assert result["sample_correct"][0] == [True, False, True]
  with pytest.raises(ValueError):
    tasks.vote_and_score(items, [["Answer: 3"], ["Answer: 5", "Answer: 5"], [" Tavira"]])


def test_self_consistency_by_n_votes_over_the_first_n_samples():
  items = [_problem("p1", "3", 1), _problem("p2", "5", 2)]
  samples = [["Answer: 4", "Answer: 3", "Answer: 3", "Answer: 3"],
             ["Answer: 5", "Answer: 6", "Answer: 6", "Answer: 6"]]
  by_n = tasks.self_consistency_by_n(items, samples, (4, 1, 2))
  assert list(by_n) == [1, 2, 4]
  assert [by_n[n]["item_correct"] for n in (1, 2, 4)] == [
      [False, True], [False, True], [True, False]]  # n=2 ties go to the earliest answer
  assert by_n[4]["accuracy"] == tasks.vote_and_score(items, samples)["accuracy"]
  with pytest.raises(ValueError):
    tasks.self_consistency_by_n(items, samples, (8,))


def test_reference_continuations_score_perfectly():
  items = suites.eval_items("reasoning", records.TEST, preset="smoke")
  result = tasks.vote_and_score(items, [[item.target] * 2 for item in items], ks=(1,))
  assert result["accuracy"] == 1.0 and result["pass_at_k"] == {1: 1.0, 2: 1.0}


def test_knowledge_bits_on_known_probabilities():
  cardinality = {"city": 8, "major": 4}
  p = np.array([1.0, 0.5, 1 / 8, 1.0, 1 / 64])
  attributes = ["city", "city", "major", "major", "major"]
  result = metrics.knowledge_bits(-np.log(p), attributes, cardinality)
  # city: mean loss 0.5 bit -> 2 * (3 - 0.5); major: mean loss (3 + 0 + 6) / 3 = 3 > 2 bits -> 0.
  assert result["by_attribute"]["city"]["bits"] == pytest.approx(5.0)
  assert result["by_attribute"]["major"]["bits"] == 0.0
  assert result["by_attribute"]["major"]["loss_bits"] == pytest.approx(3.0)
  assert result["bits"] == pytest.approx(5.0)
  assert result["capacity_bits"] == pytest.approx(2 * 3 + 3 * 2)
  per_fact = metrics.knowledge_bits(-np.log(p), attributes, cardinality, per_fact=True)
  # Per fact: city 3 + 2; major 0 + 2 + 0.
  assert per_fact["bits"] == pytest.approx(7.0)
  # A perfect model stores everything; a uniform one nothing.
  assert metrics.knowledge_bits([0.0] * 5, attributes, cardinality)["bits"] == pytest.approx(12)
  uniform = np.log([8, 8, 4, 4, 4])
  assert metrics.knowledge_bits(uniform, attributes, cardinality)["bits"] == pytest.approx(0.0)


def test_bucketing_and_padding():
  assert [batching.bucket_length(n) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
  assert batching.bucket_length(5, minimum=1) == 8
  ids_BP, start_B = batching.left_pad([[0, 5, 6], [0, 7]], rows=3, length=4)
  assert ids_BP.tolist() == [[0, 0, 5, 6], [0, 0, 0, 7], [0, 0, 0, 0]]
  assert start_B.tolist() == [1, 2, 3]
  batches = list(batching.length_batches([3, 9, 1, 9, 4], batch_size=2))
  assert [b.tolist() for b in batches] == [[1, 3], [4, 0], [2]]


def test_subset_is_fixed_and_keeps_order():
  items = suites.eval_items("memorization", records.TEST, preset="smoke")
  first = suite_metrics.subset(items, 10)
  assert first == suite_metrics.subset(items, 10) and len(first) == 10
  assert [items.index(i) for i in first] == sorted(items.index(i) for i in first)
  assert len({i.attribute for i in first}) > 1
  assert suite_metrics.subset(items, None) == items
