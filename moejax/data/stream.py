"""Training streams addressed by (seed, step): the packed suites mixture, and any seqio task.

Sources registered here (see sources.py for the batch contract):

``suites``: the preset's training splits, read from the token cache of a build (numpy only, no
  TensorFlow). Each suite is packed once into rows of ``seq_len`` (best-fit, packing.py); row r
  of the global stream comes from suite ``pattern[r mod P]`` (a seeded pattern of period
  P = 4096 with the mixture's proportions, counted in rows, i.e. in tokens up to padding), and
  takes that suite's next row in a fresh seeded permutation per epoch of that suite. Every index
  is a closed-form function of (seed, step): resuming at step s reproduces the stream exactly and
  costs nothing. ``data.seed`` orders the stream only; the data itself is fixed by the preset.

``seqio``: any registered seqio Task or Mixture (say C4 on a TPU pod, registered by your module),
  packed by ``seqio.DecoderFeatureConverter(pack=True)``, shuffled with ``data.seed``, repeated.
  Batches are read sequentially; a jump to another step (a resume) rebuilds the pipeline and
  skips to it, so batch s is still a function of (seed, s) for a deterministic tf.data pipeline.
"""

from __future__ import annotations

import importlib
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from moejax.data import layout
from moejax.data import packing
from moejax.data import presets
from moejax.data import records
from moejax.data import sources

PATTERN_PERIOD = 4096


def parse_mixture(spec: str, preset: presets.Preset) -> dict[str, float]:
  """Suite weights from ``"memorization=0.5,reasoning=0.5"`` (a bare name weighs 1; "" = preset)."""
  weights = dict(preset.mixture)
  if spec:
    weights = {}
    for part in spec.split(","):
      name, _, weight = part.strip().partition("=")
      weights[name.strip()] = float(weight) if weight else 1.0
  weights = {k: v for k, v in weights.items() if v > 0}
  unknown = set(weights) - set(presets.SUITES)
  if unknown or not weights:
    raise ValueError(f"config.data.mixture={spec!r}: need positive weights over {presets.SUITES}")
  return weights


def _pattern(weights: list[float], gen: np.random.Generator) -> np.ndarray:
  """A seeded sequence of PATTERN_PERIOD task ids with counts proportional to ``weights``."""
  share = np.asarray(weights) / np.sum(weights) * PATTERN_PERIOD
  counts = np.floor(share).astype(np.int64)
  for i in np.argsort(counts - share)[:PATTERN_PERIOD - counts.sum()]:  # largest remainders
    counts[i] += 1
  for i in np.flatnonzero(counts == 0):  # every named task appears
    counts[np.argmax(counts)] -= 1
    counts[i] = 1
  return gen.permutation(np.repeat(np.arange(len(weights)), counts))


class MixtureStream:
  """Packed rows of several tasks mixed in fixed proportions; ``batch(step)`` is pure."""

  def __init__(self, tasks: dict[str, packing.PackedRows], weights: dict[str, float],
               batch_size: int, seed: int):
    self.names = list(weights)
    self.tasks = [tasks[n] for n in self.names]
    self.batch_size = batch_size
    self.seq_len = self.tasks[0].tokens_RT.shape[1]
    self.seed = seed
    self._pattern = _pattern([weights[n] for n in self.names], records.rng(seed, "stream/pattern"))
    one_hot = np.eye(len(self.names), dtype=np.int64)[self._pattern]
    self._before = np.concatenate([np.zeros((1, len(self.names)), np.int64),
                                   np.cumsum(one_hot, axis=0)])  # [P + 1, tasks]
    self._perms: dict[tuple[int, int], np.ndarray] = {}

  def _permutation(self, task: int, epoch: int) -> np.ndarray:
    key = (task, epoch)
    if key not in self._perms:
      if len(self._perms) > 4 * len(self.names):
        self._perms.clear()
      self._perms[key] = records.rng(self.seed, f"stream/{self.names[task]}/epoch{epoch}"
                                     ).permutation(self.tasks[task].num_rows)
    return self._perms[key]

  def row_sources(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(task index, row index) of every row of batch ``step``."""
    g = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
    period, offset = np.divmod(g, PATTERN_PERIOD)
    task = self._pattern[offset]
    k = period * self._before[-1, task] + self._before[offset, task]  # rows of `task` before g
    rows = np.empty_like(k)
    for t in np.unique(task):
      sel = task == t
      epoch, index = np.divmod(k[sel], self.tasks[t].num_rows)
      rows[sel] = [self._permutation(int(t), int(e))[i] for e, i in zip(epoch, index)]
    return task, rows

  def batch(self, step: int) -> dict[str, np.ndarray]:
    task, rows = self.row_sources(step)

    def pick(field: str) -> np.ndarray:
      return np.stack([getattr(self.tasks[t], field)[r] for t, r in zip(task, rows)])

    return packing.to_batch(pick("tokens_RT"), pick("segment_ids_RT"), pick("positions_RT"))


def require_data(data_config: ml_collections.ConfigDict) -> tuple[str, str, dict[str, Any]]:
  """(data_dir, preset, manifest) of the build named by the config; builds it if asked to."""
  data_dir = data_config.get("data_dir") or layout.default_data_dir()
  preset = data_config.get("preset", "tiny")
  try:
    return data_dir, preset, layout.load_manifest(data_dir, preset)
  except layout.DataNotBuiltError:
    if not data_config.get("build_if_missing", False):
      raise
  from moejax.data import build  # pylint: disable=import-outside-toplevel
  return data_dir, preset, build.build(data_dir, preset)


def _check_vocab(vocab_size: int, needed: int) -> None:
  if vocab_size < needed:
    raise ValueError(f"The model's vocab_size={vocab_size} is smaller than the tokenizer's "
                     f"{needed} ids; set config.model.vocab_size >= {needed}")


@sources.register("suites")
def make_suites_source(data_config: ml_collections.ConfigDict, vocab_size: int) -> MixtureStream:
  """The packed suites mixture of a built preset.

  Reads ``config.data``:
    data_dir: directory of the build ("" = $MOEJAX_DATA_DIR or ~/.cache/moejax/data).
    preset: data preset ("tiny"; "smoke" for tests).
    seed: stream order seed (0).
    batch_size, seq_len: global batch rows and row length (required).
    mixture: "" for the preset's proportions, or e.g. "memorization=0.7,reasoning=0.3", or one
      suite name.
    build_if_missing: build the preset into data_dir when absent (False: raise an error that
      names the build command; a build imports TensorFlow and takes ~15-30 s).
    split: "train" (default); "test" or "train_eval" stream those splits of the mixed suites
      that have them (held-out loss, and the train-test gap in loss), same packing and order.
  """
  data_dir, preset_name, manifest = require_data(data_config)
  _check_vocab(vocab_size, manifest["tokenizer"]["vocab_size"])
  preset = presets.get_preset(preset_name)
  weights = parse_mixture(data_config.get("mixture", "") or "", preset)
  split = data_config.get("split", records.TRAIN) or records.TRAIN
  weights = {s: w for s, w in weights.items() if split in manifest["tasks"][s]["splits"]}
  if not weights:
    raise ValueError(f"config.data.split={split!r}: no suite of the mixture has that split")
  seed, seq_len = int(data_config.get("seed", 0)), int(data_config.seq_len)
  longest = max(manifest["tasks"][s]["splits"][split]["max_tokens"] for s in weights)
  if seq_len < longest:
    logging.warning("data.seq_len=%d is shorter than the longest example (%d tokens): long "
                    "examples are cut into several segments.", seq_len, longest)
  tasks = {}
  for suite in weights:
    with np.load(layout.cache_path(data_dir, preset_name, suite, split)) as cache:
      tasks[suite] = packing.pack(cache["tokens"], cache["offsets"], seq_len,
                                  records.rng(seed, f"stream/pack/{suite}"))
  return MixtureStream(tasks, weights, int(data_config.batch_size), seed)


_SEQIO_KEYS = {"inputs": "decoder_input_tokens", "targets": "decoder_target_tokens",
               "loss_mask": "decoder_loss_weights", "segment_ids": "decoder_segment_ids",
               "positions": "decoder_positions"}


class SeqioStream:
  """Packed batches of a seqio Task or Mixture, read sequentially (see module docstring)."""

  def __init__(self, name: str, batch_size: int, seq_len: int, seed: int, split: str = "train"):
    self.name, self.batch_size, self.seq_len = name, batch_size, seq_len
    self.seed, self.split = seed, split
    self._iterator: Any = None
    self._next_step = -1

  def _start(self, step: int) -> None:
    import seqio  # pylint: disable=import-outside-toplevel
    dataset = seqio.get_dataset(
        self.name, task_feature_lengths={"targets": self.seq_len},
        feature_converter=seqio.DecoderFeatureConverter(pack=True),
        dataset_split=self.split, shuffle=True, num_epochs=None, seed=self.seed,
        batch_size=self.batch_size, verbose=False)
    self._iterator = dataset.skip(step).as_numpy_iterator()
    self._next_step = step

  def batch(self, step: int) -> dict[str, np.ndarray]:
    if step != self._next_step:
      self._start(step)
    features = next(self._iterator)
    self._next_step = step + 1
    out = {key: np.asarray(features[name]) for key, name in _SEQIO_KEYS.items()}
    out["loss_mask"] = out["loss_mask"].astype(np.float32)
    return {k: v if k == "loss_mask" else v.astype(np.int32) for k, v in out.items()}


@sources.register("seqio")
def make_seqio_source(data_config: ml_collections.ConfigDict, vocab_size: int) -> SeqioStream:
  """A registered seqio Task or Mixture as a packed training stream.

  Reads ``config.data``:
    task: the seqio Task or Mixture name, e.g. "c4_v220_lm" or "moejax_pretrain_tiny" (required).
    seqio_module: a module to import first that registers ``task`` ("" for none).
    data_dir, preset, build_if_missing: for moejax's own names, the build to register from.
    split ("train"), seed (0), batch_size, seq_len.
  """
  import seqio  # pylint: disable=import-outside-toplevel
  from moejax.data import seqio_tasks  # pylint: disable=import-outside-toplevel
  name = data_config.get("task") or ""
  if not name:
    raise ValueError("config.data.task must name a seqio Task or Mixture for source='seqio'")
  if data_config.get("seqio_module"):
    importlib.import_module(data_config.seqio_module)
  own_preset = seqio_tasks.parse_name(name)
  if own_preset is not None:
    config = ml_collections.ConfigDict(data_config.to_dict())
    config.preset = own_preset
    data_dir, preset, _ = require_data(config)
    seqio_tasks.register(data_dir, preset)
  vocabulary = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
  _check_vocab(vocab_size, vocabulary.vocab_size)
  return SeqioStream(name, int(data_config.batch_size), int(data_config.seq_len),
                     int(data_config.get("seed", 0)), data_config.get("split", "train"))
