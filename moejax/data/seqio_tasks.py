"""seqio Tasks of the suites and the pretraining Mixture (imports seqio and TensorFlow).

For a preset P built under DATA_DIR, ``register(DATA_DIR, P)`` adds:

  moejax_memorization_P, moejax_reasoning_P, moejax_filler_P   Tasks over the tfds builders;
      feature ``targets`` = the example text (prompt + target), tokenized, EOS appended.
  moejax_pretrain_P   Mixture of the Tasks with the preset's proportions (positive ones only).

The Tasks read the ``train``, ``train_eval`` and ``test`` splits of the builders. Registration
replaces earlier Tasks of the same name, so pointing at another data_dir is safe.
"""

from __future__ import annotations

import functools

import seqio

from moejax.data import layout
from moejax.data import presets
from moejax.data import suites
from moejax.data import tfds_builders

PREFIX = "moejax_"


class OrderedTfdsSource(seqio.TfdsDataSource):
  """A tfds source read in stored order: the builds are ordered (one shard per split), and tfds
  refuses to shuffle the files of ordered datasets. The Task's shuffle buffer still shuffles."""

  def get_dataset(self, split=None, shuffle=True, seed=None, shard_info=None, **kwargs):
    del shuffle  # file order only; see the class docstring
    return super().get_dataset(split=split, shuffle=False, seed=seed, shard_info=shard_info,
                               **kwargs)


def task_name(suite: str, preset: str) -> str:
  return f"{PREFIX}{suite}_{preset}"


def mixture_name(preset: str) -> str:
  return f"{PREFIX}pretrain_{preset}"


def parse_name(name: str) -> str | None:
  """The preset of a moejax task or mixture name, or None for a foreign name."""
  if not name.startswith(PREFIX):
    return None
  for preset in presets.PRESETS:
    if name == mixture_name(preset) or any(
        name == task_name(suite, preset) for suite in suites.SPLITS):
      return preset
  return None


def register(data_dir: str, preset: str) -> str:
  """Registers the Tasks and the Mixture of ``preset`` over ``data_dir``; returns the mixture."""
  vocabulary = seqio.SentencePieceVocabulary(layout.tokenizer_path(data_dir, preset))
  output_features = {"targets": seqio.Feature(vocabulary=vocabulary, add_eos=True)}
  for suite in suites.SPLITS:
    name = task_name(suite, preset)
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=OrderedTfdsSource(tfds_name=tfds_builders.tfds_name(suite, preset),
                                 tfds_data_dir=data_dir),
        preprocessors=[functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
                       seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features=output_features)
  rates = [(task_name(s, preset), w) for s, w in presets.get_preset(preset).mixture if w > 0]
  name = mixture_name(preset)
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, rates)
  return name
