"""Workdir bookkeeping: a run's workdir is tied to one config; re-running resumes it.

A different config pointed at an existing workdir is refused (naming the differing fields)
before anything is compiled or written, so existing results are never overwritten.
"""

from __future__ import annotations

import json
import os

import ml_collections

from moejax.training.logging import write_json
from moejax.validation import ConfigError

# Fields that may change between invocations without changing the run's results: the progress
# bar, and the parallel layout (a run resumes on another mesh: the checkpoint is restored with
# the new mesh's shardings, docs/parallelism.md). A name covers the fields under it.
VOLATILE_FIELDS = ("train.progress_bar", "mesh", "sharding_rules", "model.moe.ep_exchange")


def _volatile(key: str) -> bool:
  return any(key == name or key.startswith(name + ".") for name in VOLATILE_FIELDS)


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, path + "."))
    else:
      out[path] = value
  return out


def config_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json())


def check_compatible(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """True when ``workdir`` already holds this run (resume); raises if it holds another one."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    old = _flatten(json.load(f))
  new = _flatten(config_dict(config))
  differing = sorted(k for k in set(old) | set(new)
                     if not _volatile(k) and old.get(k) != new.get(k))
  if differing:
    details = ", ".join(f"config.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing[:8])
    raise ConfigError(f"workdir {workdir} holds a run with a different config ({details}); "
                      "use a new --workdir (nothing was changed)")
  return True


def prepare(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Creates the workdir and writes config.json; returns True when resuming."""
  resuming = check_compatible(workdir, config)
  os.makedirs(workdir, exist_ok=True)
  if not resuming:
    write_json(os.path.join(workdir, "config.json"), config_dict(config))
  return resuming
