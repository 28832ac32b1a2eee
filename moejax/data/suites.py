"""The suites' examples by (preset, suite, split), evaluation items and metadata (no TensorFlow).

Everything here is a pure function of the preset: the tfds builders, the tokenizer trainer and
evaluation all read the same examples through ``examples``.

Evaluation API::

  items = eval_items("reasoning", "test", preset="tiny")            # list[Example]
  items = eval_items("memorization", "test", preset="tiny", data_dir=DIR)   # checks DIR's build
  info = metadata("memorization", preset="tiny")                    # bits, cardinalities, sizes

Each item has ``prompt``, ``target`` (reference continuation), ``answer`` and ``meta``
(``attribute`` for memorization, ``difficulty`` for reasoning). What each split measures is in
the docstrings of memorization.py and reasoning.py; in short, ``train_eval`` is the train side of
the generalization gap (items seen in training) and ``test`` the held-out side.
"""

from __future__ import annotations

import functools
from typing import Any

from moejax.data import filler
from moejax.data import layout
from moejax.data import memorization
from moejax.data import presets
from moejax.data import reasoning
from moejax.data import reasoning_chain
from moejax.data import records

SPLITS = {
    "memorization": (records.TRAIN, records.TRAIN_EVAL, records.TEST),
    "reasoning": (records.TRAIN, records.TRAIN_EVAL, records.TEST),
    "filler": (records.TRAIN,),
}


def _resolve(preset: str | presets.Preset) -> presets.Preset:
  return presets.get_preset(preset) if isinstance(preset, str) else preset


@functools.lru_cache(maxsize=32)
def _examples(preset: presets.Preset, suite: str, split: str) -> tuple[records.Example, ...]:
  if suite not in SPLITS:
    raise ValueError(f"Unknown suite {suite!r}; known: {sorted(SPLITS)}")
  if split not in SPLITS[suite]:
    raise ValueError(f"Suite {suite!r} has splits {SPLITS[suite]}, not {split!r}")
  generate = {"memorization": memorization.examples, "reasoning": reasoning.examples,
              "filler": filler.examples}[suite]
  return tuple(generate(getattr(preset, suite), preset.seed, split))


def examples(preset: str | presets.Preset, suite: str, split: str) -> tuple[records.Example, ...]:
  """All examples of a suite split, in their fixed order."""
  return _examples(_resolve(preset), suite, split)


def eval_items(suite: str, split: str, preset: str | presets.Preset = "tiny",
               data_dir: str | None = None) -> list[records.Example]:
  """Evaluation items of ``suite`` (memorization or reasoning), ``split`` (train_eval or test).

  Args:
    suite: ``memorization`` or ``reasoning``.
    split: ``train_eval`` (items seen in training) or ``test`` (held out).
    preset: preset name or object.
    data_dir: if given, the items are checked against the manifest of the data built there, so
      that an evaluation never scores against data other than what the model was trained on.

  Returns:
    The items, each with ``prompt``, ``target``, ``answer`` and ``meta``.
  """
  if split not in records.EVAL_SPLITS or suite not in ("memorization", "reasoning"):
    raise ValueError(f"No evaluation items for suite {suite!r}, split {split!r}")
  preset = _resolve(preset)
  items = list(examples(preset, suite, split))
  if data_dir is not None:
    built = layout.load_manifest(data_dir, preset.name)["tasks"][suite]["splits"][split]
    if built["text_sha256"] != records.text_sha256(items):
      raise ValueError(f"Items of {suite}/{split} differ from the build in {data_dir!r}")
  return items


def metadata(suite: str, preset: str | presets.Preset = "tiny") -> dict[str, Any]:
  """Ground-truth facts about a suite: sizes, and for memorization the exact bits."""
  preset = _resolve(preset)
  info: dict[str, Any] = {
      "suite": suite, "preset": preset.name,
      "num_examples": {s: len(examples(preset, suite, s)) for s in SPLITS[suite]}}
  if suite == "memorization":
    info["information"] = memorization.information(preset.memorization)
  elif suite == "reasoning":
    info["modulus"] = preset.reasoning.modulus
    info["difficulties"] = list(preset.reasoning.difficulties)
  return info


def tokenizer_symbols(preset: presets.Preset) -> tuple[str, ...]:
  """Pieces the preset's text needs as single tokens (the chain format's steps)."""
  cfg = preset.reasoning
  if cfg.format != "chain":
    return ()
  return reasoning_chain.tokenizer_symbols(cfg.modulus, cfg.operations)


def training_texts(preset: str | presets.Preset) -> list[str]:
  """The training text of every suite of the preset (the tokenizer's corpus)."""
  return [ex.text for suite in SPLITS for ex in examples(preset, suite, records.TRAIN)]
