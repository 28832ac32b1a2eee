"""Run outputs: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard events, and
small JSON files (``config.json``, ``eval.json``), written atomically by the lead process."""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import jax
import numpy as np


def write_json(path: str, payload: Mapping) -> None:
  """Writes JSON via a temporary file and rename, so a kill never leaves half a file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=_to_python)
    f.write("\n")
  os.replace(tmp, path)


def _to_python(value):
  if isinstance(value, (np.generic, np.ndarray, jax.Array)):
    return np.asarray(value).tolist()
  raise TypeError(f"not JSON serialisable: {type(value)}")


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:
  """Appends metrics to ``workdir/metrics.jsonl`` and to TensorBoard event files.

  On resume from step S, rows logged after S by the interrupted run are dropped (they will be
  recomputed identically), so the file always equals that of an uninterrupted run.
  """

  def __init__(self, workdir: str, *, resume_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    kept = [row for row in read_jsonl(self.path) if row["step"] <= resume_step]
    tmp = f"{self.path}.tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(row) + "\n" for row in kept)
    os.replace(tmp, self.path)
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)

  def write(self, step: int, metrics: Mapping[str, float]) -> dict:
    row = {"step": int(step)}
    row.update({k: float(v) for k, v in metrics.items()})
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(row, allow_nan=True) + "\n")
      for name, value in row.items():
        if name != "step" and math.isfinite(value):
          self._tb.add_scalar(name, value, step)
    return row

  def close(self):
    if self._tb is not None:
      self._tb.close()
