"""The generated suites: determinism, exact bits, split semantics, no train/test leakage."""

import dataclasses
import math
import re

import pytest

from moejax.data import filler
from moejax.data import memorization
from moejax.data import presets
from moejax.data import reasoning
from moejax.data import reasoning_chain
from moejax.data import records
from moejax.data import suites

SMOKE = presets.get_preset("smoke")
TINY = presets.get_preset("tiny")


def _reseeded(preset, seed):
  return dataclasses.replace(preset, seed=seed)


@pytest.mark.parametrize("suite", sorted(suites.SPLITS))
def test_same_seed_same_bytes_other_seed_other_bytes(suite):
  for split in suites.SPLITS[suite]:
    # Generated twice from scratch (bypassing the caches): identical.
    gen = {"memorization": memorization.examples, "reasoning": reasoning.examples,
           "filler": filler.examples}[suite]
    memorization.population.cache_clear()
    reasoning.problems.cache_clear()
    first = records.text_sha256(gen(getattr(SMOKE, suite), SMOKE.seed, split))
    memorization.population.cache_clear()
    reasoning.problems.cache_clear()
    again = records.text_sha256(gen(getattr(SMOKE, suite), SMOKE.seed, split))
    other = records.text_sha256(suites.examples(_reseeded(SMOKE, 1), suite, split))
    assert first == again
    assert first != other


def test_smoke_hashes_are_pinned():
  # A change here means the generated data changed: bump presets.DATA_VERSION.
  got = {f"{s}/{sp}": records.text_sha256(suites.examples("smoke", s, sp))[:16]
         for s in suites.SPLITS for sp in suites.SPLITS[s]}
  assert len(set(got.values())) == len(got)
  assert got == _PINNED_SMOKE


def test_memorization_bits_are_exact():
  cfg = SMOKE.memorization
  # birth_date: 12 months x 4 days x 2 years = 96 values; the others 8 values (3 bits) each.
  assert cfg.cardinality("birth_date") == 96
  info = memorization.information(cfg)
  assert info["bits_per_person"] == pytest.approx(math.log2(96) + 4 * 3)
  assert info["fact_bits"] == pytest.approx(40 * (math.log2(96) + 12))
  assert info["fact_bits_seen"] + info["fact_bits_unseen"] == pytest.approx(info["fact_bits"])
  tiny = memorization.information(TINY.memorization)
  assert tiny["fact_bits"] == pytest.approx(512 * (math.log2(12 * 28 * 10) + 6 + 6 + 5 + 6))


def test_population_values_cover_declared_cardinalities():
  cfg = TINY.memorization
  people = memorization.population(cfg, TINY.seed)
  assert len({p.name for p in people}) == cfg.num_people
  for j, attribute in enumerate(cfg.attribute_names):
    seen = {p.facts[j][1] for p in people}
    assert len(seen) <= cfg.cardinality(attribute)
    if attribute != "birth_date":
      assert len(seen) > cfg.cardinality(attribute) // 2  # uniform draws spread out


def test_memorization_splits_measure_what_they_say():
  cfg = SMOKE.memorization
  people = memorization.population(cfg, SMOKE.seed)
  train = suites.examples(SMOKE, "memorization", records.TRAIN)
  train_texts = {ex.text for ex in train}
  seen_qa = suites.examples(SMOKE, "memorization", records.TRAIN_EVAL)
  unseen_qa = suites.examples(SMOKE, "memorization", records.TEST)
  # train_eval: facts seen in QA form in training (exact copies).
  assert all(ex.text in train_texts for ex in seen_qa)
  # test: facts never asked in training, but every one is stated in a biography.
  assert not any(ex.text in train_texts for ex in unseen_qa)
  train_questions = {ex.prompt for ex in train if ex.kind == "qa"}
  assert not any(ex.prompt in train_questions for ex in unseen_qa)
  for person in people[cfg.num_seen:]:
    own = [ex.text for ex in train if ex.uid.startswith(f"mem/p{person.index:05d}/bio")]
    assert len(own) == cfg.bios_per_person
    for _, value in person.facts:
      assert all(f"{person.name} " in b and f" {value}" in b for b in own)
  assert len(seen_qa) == cfg.num_seen * len(cfg.attributes)
  assert len(unseen_qa) == (cfg.num_people - cfg.num_seen) * len(cfg.attributes)


def test_qa_answers_are_the_population_facts():
  people = memorization.population(SMOKE.memorization, SMOKE.seed)
  for ex in suites.examples(SMOKE, "memorization", records.TEST):
    person = people[int(ex.uid.split("/")[1][1:])]
    assert f" {person.name} " in ex.prompt or f" {person.name}?" in ex.prompt
    assert ex.answer == dict(person.facts)[ex.attribute]
    assert ex.prompt.endswith("Answer:") and ex.target == " " + ex.answer


def test_biographies_use_five_templates_and_shuffled_orders():
  templates = memorization._SENTENCES  # pylint: disable=protected-access
  assert all(len(t) >= 5 for t in templates.values())
  people = memorization.population(TINY.memorization, TINY.seed)
  bios = [ex for ex in suites.examples(TINY, "memorization", records.TRAIN) if ex.kind == "bio"]
  used, orders = set(), set()
  for ex in bios[:300]:
    person = people[int(ex.uid.split("/")[1][1:])]
    for sentence in ex.text.split(". "):
      for t in templates["birth_city"]:
        pattern = re.escape(t.rstrip(".")).replace(r"\{name\}", ".+").replace(r"\{value\}", ".+")
        if re.fullmatch(pattern, sentence.rstrip(".")):
          used.add(t)
    orders.add(tuple(sorted(range(len(person.facts)),
                            key=lambda j, p=person, t=ex.text: t.index(" " + p.facts[j][1]))))
  assert len(used) == 5
  assert len(orders) > 30  # sentence order is shuffled


def _solve(prompt):
  """Independent solver: parses the problem statement and evaluates it."""
  modulus = int(re.match(r"Problem \(mod (\d+)\):", prompt).group(1))
  values = {}
  for name, expr in re.findall(r"(\w+) = ([^.]+)\.", prompt):
    tokens = expr.split()
    if len(tokens) == 1:
      values[name] = int(tokens[0])
    else:
      a, op, b = values[tokens[0]], tokens[1], values[tokens[2]]
      values[name] = {"+": a + b, "-": a - b, "*": a * b}[op] % modulus
  asked = re.search(r"Find (\w+)\. Solution:$", prompt).group(1)
  return values[asked]


@pytest.mark.parametrize("split", [records.TRAIN, records.TEST])
def test_reasoning_answers_and_worked_solutions_are_right(split):
  items = suites.examples(TINY, "reasoning", split)
  for ex in items:
    assert int(ex.answer) == _solve(ex.prompt)
    steps = re.findall(r"\w+ = \w+ [-+*] \w+ = \d+ [-+*] \d+ = \d+\.", ex.target)
    assert len(steps) == ex.difficulty
    assert ex.target.endswith(f"Answer: {ex.answer}")
    for step in steps:
      a, op, b, c = re.match(r"\w+ = \w+ [-+*] \w+ = (\d+) ([-+*]) (\d+) = (\d+)",
                             step).groups()
      assert int(c) == {"+": int(a) + int(b), "-": int(a) - int(b),
                        "*": int(a) * int(b)}[op] % TINY.reasoning.modulus


def test_reasoning_test_is_disjoint_from_train_by_canonical_hash():
  probs = reasoning.problems(TINY.reasoning, TINY.seed)
  train = [p.canonical_hash for ps in probs[records.TRAIN].values() for p in ps]
  test = [p.canonical_hash for ps in probs[records.TEST].values() for p in ps]
  assert len(set(train)) == len(train) and len(set(test)) == len(test)
  assert not set(train) & set(test)
  train_eval = {p.canonical_hash for ps in probs[records.TRAIN_EVAL].values() for p in ps}
  assert train_eval <= set(train)
  for split, per in ((records.TRAIN, 500), (records.TEST, 100), (records.TRAIN_EVAL, 100)):
    assert {d: len(ps) for d, ps in probs[split].items()} == {d: per for d in (1, 2, 3, 4)}
  test_texts = {ex.prompt for ex in suites.examples(TINY, "reasoning", records.TEST)}
  assert not test_texts & {ex.prompt for ex in suites.examples(TINY, "reasoning", records.TRAIN)}


def test_novelty_starts_at_novel_from():
  # Modulus 5: one-operation problems are entries of three 5 x 5 tables (55 canonical forms up
  # to commutation), fewer than the 200 asked for; drawn freely they may repeat and reach test.
  cfg = presets.ReasoningConfig(modulus=5, min_ops=1, max_ops=3, train_per_difficulty=200,
                                eval_per_difficulty=50, novel_from=2)
  probs = reasoning.problems(cfg, 0)
  forms = {s: {d: [p.canonical_hash for p in ps] for d, ps in probs[s].items()}
           for s in (records.TRAIN, records.TEST)}
  assert len(forms[records.TRAIN][1]) == 200  # drawn freely below novel_from: no error
  assert len(set(forms[records.TRAIN][1])) < 200  # ... and they repeat
  for d in (2, 3):
    train, test = forms[records.TRAIN][d], forms[records.TEST][d]
    assert len(set(train)) == len(train) == 200 and len(set(test)) == len(test) == 50
    assert not set(train) & set(test)
  with pytest.raises(ValueError, match="distinct problems with 1 operations"):
    reasoning.problems(dataclasses.replace(cfg, novel_from=1), 0)


def test_canonical_form_ignores_names_and_order():
  a = reasoning.Problem(7, (("x", 3), ("y", 5)), (("z", "+", "x", "y"), ("w", "*", "z", "x")))
  b = reasoning.Problem(7, (("q", 5), ("p", 3)), (("r", "+", "q", "p"), ("s", "*", "p", "r")))
  c = reasoning.Problem(7, (("x", 3), ("y", 5)), (("z", "-", "x", "y"), ("w", "*", "z", "x")))
  d = reasoning.Problem(7, (("x", 3), ("y", 5)), (("z", "-", "y", "x"), ("w", "*", "z", "x")))
  assert a.canonical_hash == b.canonical_hash
  assert len({a.canonical_hash, c.canonical_hash, d.canonical_hash}) == 3
  assert a.answer == (3 + 5) * 3 % 7


def test_too_small_problem_space_fails_clearly():
  cfg = presets.ReasoningConfig(modulus=2, min_ops=1, max_ops=1, train_per_difficulty=50)
  with pytest.raises(ValueError, match="distinct problems"):
    reasoning.problems(cfg, 0)


def test_eval_items_and_metadata():
  items = suites.eval_items("reasoning", records.TEST, preset="smoke")
  assert {it.meta["difficulty"] for it in items} == {1, 2, 3}
  items = suites.eval_items("memorization", records.TRAIN_EVAL, preset="smoke")
  assert {it.meta["attribute"] for it in items} == set(SMOKE.memorization.attribute_names)
  info = suites.metadata("memorization", "smoke")
  assert info["information"]["attributes"]["birth_city"]["cardinality"] == 8
  with pytest.raises(ValueError):
    suites.eval_items("filler", records.TEST, preset="smoke")


def test_prompts_end_at_a_word_boundary():
  for suite in ("memorization", "reasoning"):
    for split in records.EVAL_SPLITS:
      for ex in suites.examples(SMOKE, suite, split):
        assert ex.prompt and not ex.prompt.endswith(" ") and ex.target.startswith(" ")
        assert "\n" not in ex.text and "  " not in ex.text


_PINNED_SMOKE = {
    "memorization/train": "823836856dbe767f",
    "memorization/train_eval": "c4615cd6cc0b1f51",
    "memorization/test": "fa2c56a9abf4cec1",
    "reasoning/train": "1f3ec0c47cb48bd3",
    "reasoning/train_eval": "7871078e079613bf",
    "reasoning/test": "d0968a582f12dc40",
    "filler/train": "c41fa31803cade70",
}


CHAIN = presets.ReasoningConfig(modulus=7, min_ops=1, max_ops=4, train_per_difficulty=300,
                                eval_per_difficulty=20, novel_from=2, format="chain")


def test_chain_solutions_are_correct_and_steps_follow_the_problem():
  for ex in reasoning.examples(CHAIN, 0, records.TRAIN)[:200]:
    start, ops = re.match(r"Chain \(mod 7\): =(\d) ((?:[-+*]\d ?)+)\. Solution:$",
                          ex.prompt).groups()
    value, expect = int(start), [f"={start}"]
    for op, operand in re.findall(r"([-+*])(\d)", ops):
      value = {"+": value + int(operand), "-": value - int(operand),
               "*": value * int(operand)}[op] % 7
      expect.append(f"{op}{operand}={value}")
    assert ex.target == f" {' '.join(expect)}. Answer: {value}"
    assert ex.answer == str(value) and ex.difficulty == len(expect) - 1


def test_chain_novelty_and_canonical_form():
  probs = reasoning.problems(CHAIN, 0)
  for d in (2, 3, 4):
    train = [p.canonical_hash for p in probs[records.TRAIN][d]]
    test = [p.canonical_hash for p in probs[records.TEST][d]]
    assert len(set(train)) == 300 and len(set(test)) == 20 and not set(train) & set(test)
  # One operation: 3 ops x 7 x 7 = 147 chains, fewer than the 300 asked; drawn freely below
  # novel_from (no "distinct problems" error), so they repeat.
  assert len(probs[records.TRAIN][1]) == 300
  assert len({p.canonical_hash for p in probs[records.TRAIN][1]}) < 300
  a = reasoning_chain.ChainProblem(7, 3, (("+", 4), ("*", 2)))
  b = reasoning_chain.ChainProblem(7, 3, (("*", 2), ("+", 4)))
  assert a.canonical_hash != b.canonical_hash and (a.answer, b.answer) == (0, 3)
  with pytest.raises(ValueError, match="format"):
    reasoning.problems(dataclasses.replace(CHAIN, format="tree"), 0)


def test_chain_steps_are_single_tokens():
  from moejax.data import tokenizer  # pylint: disable=import-outside-toplevel
  symbols = reasoning_chain.tokenizer_symbols(7, "+-*")
  texts = [ex.text for ex in reasoning.examples(CHAIN, 0, records.TRAIN)]
  tok = tokenizer.Tokenizer(tokenizer.train_model(texts, 96, symbols))
  pieces = tok.pieces("Chain (mod 7): =3 +4 *2. Solution: =3 +4=0 *2=0. Answer: 0")
  start = pieces.index("\u2581Solution")
  assert pieces[start + 3:start + 8] == ["=3", "\u2581+4", "=0", "\u2581*2", "=0"]
  assert pieces[pieces.index("):") + 2:pieces.index("):") + 5] == ["=3", "\u2581+4", "\u2581*2"]
