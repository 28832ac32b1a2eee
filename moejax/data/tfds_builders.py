"""tfds builders of the suites: offline, versioned, deterministic (imports TensorFlow Datasets).

One GeneratorBasedBuilder per suite (``moejax_memorization``, ``moejax_reasoning``,
``moejax_filler``), one BuilderConfig per preset, version ``presets.DATA_VERSION``. Examples are
written in generation order (shuffling disabled), so a split reads back in the order of
``suites.examples``. Nothing is downloaded: the generators are pure Python.

  builder = builder_for("reasoning", "tiny", data_dir)
  builder.download_and_prepare(download_config=DOWNLOAD_CONFIG)
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from moejax.data import presets
from moejax.data import suites

_TEXT_FIELDS = ("uid", "kind", "prompt", "target", "answer", "attribute", "text")


def _features() -> tfds.features.FeaturesDict:
  fields = {name: tfds.features.Text() for name in _TEXT_FIELDS}
  fields["difficulty"] = tfds.features.Scalar(dtype=np.int32)
  return tfds.features.FeaturesDict(fields)


class _SuiteBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared builder of one suite; subclasses set ``SUITE``."""

  SUITE = ""
  VERSION = tfds.core.Version(presets.DATA_VERSION)
  RELEASE_NOTES = {presets.DATA_VERSION: "Procedurally generated suites of moejax."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=f"moejax preset {name!r}")
                     for name in presets.PRESETS]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=f"moejax {self.SUITE} suite (see moejax/data/{self.SUITE}.py).",
        features=_features(), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in suites.SPLITS[self.SUITE]}

  def _generate_examples(self, split):
    for ex in suites.examples(self.builder_config.name, self.SUITE, split):
      yield ex.uid, ex.to_features()


class MoejaxMemorization(_SuiteBuilder):
  """Synthetic population: biographies (train) and QA (train, train_eval, test)."""
  SUITE = "memorization"


class MoejaxReasoning(_SuiteBuilder):
  """Modular arithmetic problems with worked solutions, stratified by difficulty."""
  SUITE = "reasoning"


class MoejaxFiller(_SuiteBuilder):
  """Generic grammar text (train only)."""
  SUITE = "filler"


_BUILDERS = {"memorization": MoejaxMemorization, "reasoning": MoejaxReasoning,
             "filler": MoejaxFiller}

DOWNLOAD_CONFIG = tfds.download.DownloadConfig(
    compute_stats=tfds.download.ComputeStatsMode.SKIP)


def tfds_name(suite: str, preset: str) -> str:
  """The registered tfds name of a suite and preset, with its version."""
  return f"{_BUILDERS[suite].name}/{preset}:{presets.DATA_VERSION}"


def builder_for(suite: str, preset: str, data_dir: str) -> tfds.core.DatasetBuilder:
  return _BUILDERS[suite](config=preset, data_dir=data_dir)
