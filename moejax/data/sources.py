"""Training batch sources addressed by (seed, step), and the registry that builds them.

Contract: a source is an object with ``batch_size``, ``seq_len`` and ``batch(step)``, which returns
the *global* batch for that step as numpy arrays, a pure function of (its seed, step):

  inputs      int32   [B, T]  token ids fed to the model
  targets     int32   [B, T]  next-token ids
  loss_mask   float32 [B, T]  1 where the target counts in the loss
  segment_ids int32   [B, T]  packed-sequence ids (attention stays inside a segment; 0 = padding)
  positions   int32   [B, T]  position of each token inside its segment (for RoPE)

Because batch s depends only on (seed, s), resuming a run at step s reproduces the stream exactly.
"""

from __future__ import annotations

from typing import Callable, Protocol

import ml_collections
import numpy as np

BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")


class BatchSource(Protocol):
  batch_size: int
  seq_len: int

  def batch(self, step: int) -> dict[str, np.ndarray]:
    ...


_FACTORIES: dict[str, Callable[[ml_collections.ConfigDict, int], BatchSource]] = {}


def register(name: str):
  """Registers ``factory(data_config, vocab_size) -> BatchSource`` under ``name``."""

  def wrap(factory):
    _FACTORIES[name] = factory
    return factory

  return wrap


def make_source(data_config: ml_collections.ConfigDict, vocab_size: int) -> BatchSource:
  """Builds the source named by ``data_config.source``."""
  _import_builtin_sources()
  name = data_config.source
  if name not in _FACTORIES:
    raise ValueError(
        f"config.data.source={name!r} is not a known source; known: {sorted(_FACTORIES)}")
  return _FACTORIES[name](data_config, vocab_size)


def _import_builtin_sources():
  # Imported lazily so that importing this module stays cheap and cycle-free.
  from moejax.data import synthetic  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
  from moejax.data import stream  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
