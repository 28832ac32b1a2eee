"""What a model family gives the one training stack: the ``Task`` interface and its registry.

The training stack (state.py, step.py, compile.py, trainer.py, restore.py), validation and the
sweeps are written once; everything that differs between the language model, ViT-MoE and
DiT-MoE sits behind a task, named by the run config (``config.task = "lm"``):

  check(config)            family-specific config checks (ConfigError naming the field)
  build_model(model, rngs) the nnx model of a ``config.model`` section
  loss(model, batch)       (scalar loss, aux): aux holds the model's auxiliary losses, which the
                           train step weighs by name (``config.aux_loss_weights``), and metrics
  aux_loss_defaults(model) the auxiliary losses the model returns, with default weights
  batch_spec(config)       name -> ``BatchField`` (global shape, dtype, logical axes)
  make_source(config, split)
                           a batch source addressed by step (moejax/data/sources.py)
  evaluate(config, graphdef, state, eval_loss, items_dir)
                           metrics after training (eval.json), beyond the held-out loss
  counts(config)           name, total/active parameters, training FLOPs (moejax/counting.py)
  tokens_per_batch(config) tokens in one training batch (the logged throughput)

A new family is a model file (embeddings + ``models.trunk.Trunk`` + head), a task class and one
``TASKS`` entry (a "module:Class" path, imported on first use).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from typing import Any

import ml_collections
from flax import nnx

from moejax.errors import require

TASKS = {"lm": "moejax.tasks.lm:LMTask", "vit": "moejax.tasks.vit:ViTTask",
         "dit": "moejax.tasks.dit:DiTTask"}


@dataclasses.dataclass(frozen=True)
class BatchField:
  """One array of a global batch."""
  shape: tuple[int, ...]
  dtype: Any
  axes: tuple[str | None, ...]  # logical axis names (moejax/sharding.py)


class Task(abc.ABC):
  """See the module docstring."""
  name: str = ""

  @abc.abstractmethod
  def check(self, config: ml_collections.ConfigDict) -> None:
    ...

  @abc.abstractmethod
  def build_model(self, model: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    ...

  @abc.abstractmethod
  def loss(self, model: nnx.Module, batch: dict) -> tuple[Any, dict]:
    ...

  @abc.abstractmethod
  def aux_loss_defaults(self, model: ml_collections.ConfigDict) -> dict[str, float]:
    ...

  @abc.abstractmethod
  def batch_spec(self, config: ml_collections.ConfigDict) -> dict[str, BatchField]:
    ...

  @abc.abstractmethod
  def make_source(self, config: ml_collections.ConfigDict, split: str):
    ...

  def evaluate(self, config: ml_collections.ConfigDict, graphdef: nnx.GraphDef, state, *,
               eval_loss: float, items_dir: str | None) -> dict:
    del config, graphdef, state, eval_loss, items_dir
    return {}

  @abc.abstractmethod
  def counts(self, config: ml_collections.ConfigDict) -> dict:
    ...

  def tokens_per_batch(self, config: ml_collections.ConfigDict) -> int:
    return config.data.batch_size * config.data.seq_len


def get(config: ml_collections.ConfigDict) -> Task:
  """The task a run config names (``config.task``, default "lm")."""
  name = config.get("task", "lm")
  require(name in TASKS, f"config.task={name!r} is not one of {sorted(TASKS)}")
  module, _, cls = TASKS[name].partition(":")
  return getattr(importlib.import_module(module), cls)()


def aux_loss_weights(config: ml_collections.ConfigDict, task: Task | None = None
                     ) -> dict[str, float]:
  """The weight of every auxiliary loss the model returns: ``config.aux_loss_weights[name]``,
  or the default of the component that defines the loss where that is None or absent.

  A non-zero weight given for a loss the model does not return is a ConfigError naming it
  (a zero weight is allowed: a family's config can switch a loss off for its MoE variants and
  still train its dense baseline).
  """
  task = task or get(config)
  produced = task.aux_loss_defaults(config.model)
  given = dict(config.get("aux_loss_weights") or {})
  for name, weight in given.items():
    require(not weight or name in produced,
            f"config.aux_loss_weights.{name}={weight}: this model returns no aux loss named "
            f"{name!r}; it returns {sorted(produced) or 'none'} (set it to None)")
  return {name: default if given.get(name) is None else float(given[name])
          for name, default in produced.items()}
