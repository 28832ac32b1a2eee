"""Where the built data of a preset lives under ``data_dir``, and its manifest.

  DATA_DIR/moejax_<suite>/<preset>/<version>/   tfds builds (text), one builder per suite
  DATA_DIR/moejax_suites/<preset>/spm.model      the SentencePiece tokenizer of the preset
  DATA_DIR/moejax_suites/<preset>/cache/         seqio tasks' token ids (numpy, for the stream)
  DATA_DIR/moejax_suites/<preset>/manifest.json  sizes, hashes, bits; written last by the build

This module is light (no TensorFlow): training and evaluation import it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from moejax.data import presets


class DataNotBuiltError(FileNotFoundError):
  """The data of a preset is missing under a data_dir."""


def default_data_dir() -> str:
  """Where builds go when ``config.data.data_dir`` is empty: $MOEJAX_DATA_DIR, else a cache."""
  return os.environ.get("MOEJAX_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "moejax", "data")


def preset_dir(data_dir: str, preset: str) -> str:
  return os.path.join(data_dir, "moejax_suites", preset)


def tokenizer_path(data_dir: str, preset: str) -> str:
  return os.path.join(preset_dir(data_dir, preset), "spm.model")


def manifest_path(data_dir: str, preset: str) -> str:
  return os.path.join(preset_dir(data_dir, preset), "manifest.json")


def cache_path(data_dir: str, preset: str, suite: str, split: str) -> str:
  return os.path.join(preset_dir(data_dir, preset), "cache", f"{suite}_{split}.npz")


def build_command(data_dir: str, preset: str) -> str:
  return f"python -m experiments.build_data --preset={preset} --data_dir={data_dir}"


def load_manifest(data_dir: str, preset: str) -> dict[str, Any]:
  """The manifest of a built preset; raises ``DataNotBuiltError`` naming the build command."""
  path = manifest_path(data_dir, preset)
  if not os.path.exists(path):
    raise DataNotBuiltError(
        f"No built data for preset {preset!r} under {data_dir!r} ({path} is missing). "
        f"Build it with:\n  {build_command(data_dir, preset)}")
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get("version") != presets.DATA_VERSION or manifest.get("preset") != (
      presets.get_preset(preset).to_json()):
    raise DataNotBuiltError(
        f"The data under {data_dir!r} was built by another version or definition of preset "
        f"{preset!r}. Rebuild it with:\n  {build_command(data_dir, preset)} --force")
  return manifest


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes ``obj`` as JSON to ``path`` through a temporary file and a rename."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
