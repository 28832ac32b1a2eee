"""Builds a preset into a data_dir: tokenizer, tfds builds, seqio token cache, manifest.

  manifest = build(data_dir, "tiny")        # idempotent; ``force=True`` rebuilds
  print(json.dumps(describe(manifest)))     # per task: name, split sizes, tokens, SHA-256

Steps (imports TensorFlow, so training only reaches this module through ``build_if_missing``):
  1. train the SentencePiece tokenizer on the preset's training text (tokenizer.py);
  2. build the tfds datasets of every suite (tfds_builders.py);
  3. read every split back through its seqio Task (seqio_tasks.py), and store the token ids in
     numpy files for the training stream (stream.py), hashing them on the way;
  4. write the manifest last (layout.py), so a present manifest means a complete build.

The SHA-256 of a task covers the token ids of all its splits in order; the same preset gives the
same hashes on any machine (with the pinned numpy, sentencepiece and TensorFlow).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Iterator

import numpy as np

from moejax.data import layout
from moejax.data import memorization
from moejax.data import presets
from moejax.data import records
from moejax.data import suites
from moejax.data import tokenizer


def _write_tokenizer(data_dir: str, preset: presets.Preset) -> dict[str, Any]:
  model = tokenizer.train_model(suites.training_texts(preset), preset.vocab_size,
                                suites.tokenizer_symbols(preset))
  path = layout.tokenizer_path(data_dir, preset.name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(f"{path}.tmp{os.getpid()}", "wb") as f:
    f.write(model)
  os.replace(f"{path}.tmp{os.getpid()}", path)
  return {"vocab_size": tokenizer.Tokenizer(model).vocab_size,
          "sha256": hashlib.sha256(model).hexdigest(), "pad_id": tokenizer.PAD_ID,
          "eos_id": tokenizer.EOS_ID, "unk_id": tokenizer.UNK_ID}


def _build_tfds(data_dir: str, preset: str, force: bool) -> None:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from moejax.data import tfds_builders  # pylint: disable=import-outside-toplevel
  tfds.disable_progress_bar()
  for suite in suites.SPLITS:
    builder = tfds_builders.builder_for(suite, preset, data_dir)
    if force and os.path.isdir(builder.data_dir):
      shutil.rmtree(builder.data_dir)
      builder = tfds_builders.builder_for(suite, preset, data_dir)
    builder.download_and_prepare(download_config=tfds_builders.DOWNLOAD_CONFIG)


def _token_digest(split: str, sequences: list[np.ndarray], digest) -> None:
  digest.update(split.encode() + b"\0")
  for seq in sequences:
    digest.update(len(seq).to_bytes(8, "little"))
    digest.update(seq.astype("<i4").tobytes())


# TensorFlow Text's SentencePiece kernel logs this line from C++ each time seqio loads the
# tokenizer (identity normalization is deliberate, tokenizer.py); Python cannot silence it.
_KNOWN_NOISE = b"precompiled_charsmap is empty"


@contextlib.contextmanager
def _stderr_without(noise: bytes) -> Iterator[None]:
  """Runs the block with file descriptor 2 captured, then writes back every captured line
  that does not contain ``noise`` (C++ libraries write to the descriptor, not sys.stderr)."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [line for line in captured.read().splitlines(keepends=True) if noise not in line]
      if kept:
        sys.stderr.buffer.write(b"".join(kept))
        sys.stderr.flush()


def _cache_tasks(data_dir: str, preset: str) -> dict[str, Any]:
  """Reads every split through seqio, writes the token cache, returns per-task statistics."""
  with _stderr_without(_KNOWN_NOISE):
    return _read_back_tasks(data_dir, preset)


def _read_back_tasks(data_dir: str, preset: str) -> dict[str, Any]:
  import seqio  # pylint: disable=import-outside-toplevel
  from moejax.data import seqio_tasks  # pylint: disable=import-outside-toplevel
  seqio_tasks.register(data_dir, preset)
  tasks = {}
  for suite, splits in suites.SPLITS.items():
    task = seqio.get_mixture_or_task(seqio_tasks.task_name(suite, preset))
    digest = hashlib.sha256()
    split_stats = {}
    for split in splits:
      dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
      sequences = [np.asarray(ex["targets"], np.int32) for ex in dataset.as_numpy_iterator()]
      _token_digest(split, sequences, digest)
      lengths = np.array([len(s) for s in sequences], np.int64)
      path = layout.cache_path(data_dir, preset, suite, split)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = f"{path}.tmp{os.getpid()}.npz"
      np.savez(tmp, tokens=np.concatenate(sequences),
               offsets=np.concatenate([[0], np.cumsum(lengths)]))
      os.replace(tmp, path)
      split_digest = hashlib.sha256()
      _token_digest(split, sequences, split_digest)
      split_stats[split] = {
          "examples": len(sequences), "tokens": int(lengths.sum()),
          "max_tokens": int(lengths.max()), "sha256": split_digest.hexdigest(),
          "text_sha256": records.text_sha256(suites.examples(preset, suite, split))}
    tasks[suite] = {"name": task.name, "splits": split_stats, "sha256": digest.hexdigest()}
  return tasks


def build(data_dir: str, preset: str, force: bool = False) -> dict[str, Any]:
  """Builds ``preset`` under ``data_dir`` unless a valid build is there; returns its manifest."""
  if not force:
    try:
      return layout.load_manifest(data_dir, preset)
    except layout.DataNotBuiltError:
      # A manifest of another data version or preset definition: the tfds files under the
      # same version directory are stale too, so they are rebuilt rather than reused.
      force = os.path.exists(layout.manifest_path(data_dir, preset))
  spec = presets.get_preset(preset)
  start = time.time()
  tokenizer_info = _write_tokenizer(data_dir, spec)
  _build_tfds(data_dir, preset, force)
  tasks = _cache_tasks(data_dir, preset)
  manifest = {
      "version": presets.DATA_VERSION,
      "preset": spec.to_json(),
      "tokenizer": tokenizer_info,
      "tasks": tasks,
      "mixture": {s: w for s, w in spec.mixture if w > 0},
      "information": memorization.information(spec.memorization),
      "build_seconds": round(time.time() - start, 2),
  }
  layout.write_json_atomic(layout.manifest_path(data_dir, preset), manifest)
  return manifest


def describe(manifest: dict[str, Any]) -> dict[str, Any]:
  """The machine-independent summary of a build (what ``build_data --describe`` prints)."""
  return {
      "preset": manifest["preset"]["name"],
      "version": manifest["version"],
      "tokenizer": {k: manifest["tokenizer"][k] for k in ("vocab_size", "sha256")},
      "tasks": [{"name": t["name"],
                 "splits": {s: {k: v[k] for k in ("examples", "tokens")}
                            for s, v in t["splits"].items()},
                 "sha256": t["sha256"]} for t in manifest["tasks"].values()],
      "mixture": manifest["mixture"],
      "fact_bits": manifest["information"]["fact_bits"],
  }
