"""The image-classification task (ViT-MoE, moejax/models/vit.py), with optional task-conditioned
routing: several labelings of the same images (``config.data.tasks``, e.g. the 10 Fashion-MNIST
classes and 3 coarse groups), one head each, experts shared.

Batches (moejax/data/image_source.py) hold images, each row's task id and the label of that
task, and a weight (0 on evaluation padding). The loss is the weighted mean cross-entropy of
each row's own task head. After training, ``evaluate`` scores the whole test split, per task.

Axes: B batch, H/W image size, C channels, K classes of a task.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from moejax import counting
from moejax.data import image_source, images as image_data
from moejax.errors import require
from moejax.models.vit import ViT, ViTConfig, trunk_config
from moejax.moe.layer import EXPERT_CHOICES
from moejax.training.task import BatchField, Task

ITEMS_FILENAME = "eval_items.npz"


def per_example(logits, labels_B, task_B):
  """Cross-entropy and correctness [B] of each row under its own task's head (``logits``: one
  [B, K_t] array per task)."""
  ce_B = jnp.zeros(labels_B.shape, jnp.float32)
  correct_B = jnp.zeros(labels_B.shape, jnp.float32)
  for t, logits_BK in enumerate(logits):
    labels_t = jnp.clip(labels_B, 0, logits_BK.shape[-1] - 1)
    mine_B = task_B == t
    ce_B = jnp.where(mine_B, optax.softmax_cross_entropy_with_integer_labels(logits_BK, labels_t),
                     ce_B)
    hit_B = (jnp.argmax(logits_BK, -1) == labels_B).astype(jnp.float32)
    correct_B = jnp.where(mine_B, hit_B, correct_B)
  return ce_B, correct_B


def _weighted_mean(values_B, weights_B):
  return jnp.sum(values_B * weights_B) / jnp.maximum(jnp.sum(weights_B), 1.0)


@functools.cache
def _image_set(dataset: str, split: str, image_size: int, channels: int):
  return image_data.load_images(dataset, split, image_size=image_size, channels=channels)


@functools.cache
def _channel_stats(dataset: str, image_size: int, channels: int):
  return image_source.channel_stats(_image_set(dataset, "train", image_size, channels))


class ViTTask(Task):
  """Image classification with a ViT-MoE."""
  name = "vit"

  def check(self, config: ml_collections.ConfigDict) -> None:
    model, data = config.model, config.data
    trunk = trunk_config(model)
    vit = ViTConfig.from_config(model)
    tasks = tuple(data.tasks)
    require(tasks, "config.data.tasks must name at least one task")
    unknown = [t for t in tasks if t not in image_data.TASK_LABELS]
    require(not unknown, f"config.data.tasks has unknown tasks {unknown}; known: "
                         f"{sorted(image_data.TASK_LABELS)}")
    require(len(tasks) == len(vit.num_classes),
            f"config.data.tasks={tasks} and config.model.num_classes={vit.num_classes} must "
            "have one entry per task")
    require(data.batch_size > 0, f"config.data.batch_size={data.batch_size} must be > 0")
    group = trunk.moe.group_size
    tokens = data.batch_size * vit.num_tokens
    require(group is None or tokens % group == 0,
            f"config.model.group_images={vit.group_images} (moe.group_size={group} tokens) "
            f"must divide the batch: config.data.batch_size={data.batch_size} images x "
            f"{vit.num_tokens} tokens")

  def build_model(self, model: ml_collections.ConfigDict, rngs: nnx.Rngs) -> ViT:
    return ViT.from_config(model, rngs=rngs)

  def loss(self, model: ViT, batch: dict):
    logits, aux = model(batch["images"], batch["task_ids"])
    ce_B, correct_B = per_example(logits, batch["labels"], batch["task_ids"])
    aux = {**aux, "accuracy": _weighted_mean(correct_B, batch["weights"])}
    return _weighted_mean(ce_B, batch["weights"]), aux

  def aux_loss_defaults(self, model: ml_collections.ConfigDict) -> dict[str, float]:
    return trunk_config(model).aux_loss_defaults()

  def batch_spec(self, config: ml_collections.ConfigDict) -> dict[str, BatchField]:
    model, b = config.model, config.data.batch_size
    image = (b, model.image_size, model.image_size, model.channels)
    return {"images": BatchField(image, jnp.float32, ("batch", None, None, None)),
            "labels": BatchField((b,), jnp.int32, ("batch",)),
            "task_ids": BatchField((b,), jnp.int32, ("batch",)),
            "weights": BatchField((b,), jnp.float32, ("batch",))}

  def tokens_per_batch(self, config: ml_collections.ConfigDict) -> int:
    return config.data.batch_size * ViTConfig.from_config(config.model).num_tokens

  def load_split(self, config: ml_collections.ConfigDict, split: str) -> image_data.ImageSet:
    """The data set's ``split`` at the model's image size and channels; a ConfigError when
    its labels do not fit the model's heads."""
    model, data = config.model, config.data
    image_set = _image_set(data.dataset, split, model.image_size, model.channels)
    num_classes = ViTConfig.from_config(model).num_classes
    for task, classes in zip(data.tasks, num_classes):
      _, found, _ = image_data.task_labels(image_set, task)
      require(found == classes, f"config.model.num_classes={num_classes}: task {task!r} of "
                                f"{data.dataset!r} has {found} classes")
    return image_set

  def make_source(self, config: ml_collections.ConfigDict, split: str):
    """``split`` "train": the shuffled training stream; "eval": the test split in order
    (every image once per task, padding weighted 0)."""
    data = config.data
    if split == "train":
      return image_source.ImageSource(self.load_split(config, "train"), data.batch_size,
                                      data.seed, tasks=tuple(data.tasks),
                                      normalize=self.normalization(config))
    return self.eval_source(config, self.load_split(config, "test"), data.batch_size)

  def normalization(self, config: ml_collections.ConfigDict):
    """The training split's per-channel (mean, std) when ``config.data.normalize``, else None
    (train and test images are normalised by the same statistics)."""
    if not config.data.normalize:
      return None
    return _channel_stats(config.data.dataset, config.model.image_size, config.model.channels)

  def eval_source(self, config: ml_collections.ConfigDict, image_set, batch_size: int):
    """``image_set`` in order, every image once per task, in batches of ``batch_size``."""
    return image_source.ImageSource(image_set, batch_size, config.data.seed,
                                    tasks=tuple(config.data.tasks), shuffle=False,
                                    normalize=self.normalization(config))

  def evaluate(self, config, graphdef, state, *, eval_loss, items_dir=None) -> dict:
    """Test accuracy on the whole test split, overall and per task; with ``items_dir``, the
    per-image results (``ITEMS_FILENAME``: correct, predictions, labels, task_ids, image
    index) for intervals over images."""
    del eval_loss
    source = self.make_source(config, "eval")
    out = predict(graphdef, state, source)
    keep = out["weights"] > 0
    if items_dir:
      num_images = source.num_images
      np.savez(os.path.join(items_dir, ITEMS_FILENAME),
               image=np.arange(len(keep))[keep] % num_images,
               **{k: out[k][keep] for k in ("correct", "predictions", "labels", "task_ids")})
    correct, task = out["correct"][keep], out["task_ids"][keep]
    results = {"test_accuracy": float(np.mean(correct)), "test_images": int(keep.sum())}
    for t, name in enumerate(config.data.tasks):
      results[f"test_accuracy_{name}"] = float(np.mean(correct[task == t]))
    return results

  def counts(self, config: ml_collections.ConfigDict) -> dict:
    return counting.vit_summary(config)


@functools.partial(jax.jit, static_argnums=0)
def _predict_step(graphdef: nnx.GraphDef, params, rest, batch):
  """One batch in eval mode; compiled once per model graph (not per ``predict`` call)."""
  model = nnx.merge(graphdef, params, rest, copy=True)
  model.eval()
  logits, aux = model(batch["images"], batch["task_ids"])
  _, correct_B = per_example(logits, batch["labels"], batch["task_ids"])
  preds_B = jnp.zeros_like(batch["labels"])
  for t, logits_BK in enumerate(logits):
    preds_B = jnp.where(batch["task_ids"] == t, jnp.argmax(logits_BK, -1), preds_B)
  extra = {k: v for k, v in aux.items() if k == EXPERT_CHOICES}
  if "dropped_fraction" in aux:
    extra["dropped_fraction"] = aux["dropped_fraction"].reshape(1)
  return {"correct": correct_B, "predictions": preds_B, **extra}


def predict(graphdef: nnx.GraphDef, state, source, *, model_state=None) -> dict[str, np.ndarray]:
  """Every batch of ``source`` through the model in eval mode: per row ``correct``,
  ``predictions`` (own task's argmax), ``labels``, ``task_ids``, ``weights``; per batch the
  MoE layers' mean ``dropped_fraction``; and ``expert_choices`` [M, rows x tokens, K] when the
  MoE config asks for them (``return_choices``).
  ``model_state`` replaces the state's non-parameter variables (e.g. an expert mask).
  Batches are dispatched without waiting; the results come to the host once, at the end."""
  rest = state.model_state if model_state is None else model_state
  outs, batches = [], [source.batch(i) for i in range(source.num_batches)]
  for batch in batches:
    outs.append(_predict_step(graphdef, state.params, rest,
                              {k: jnp.asarray(v) for k, v in batch.items()}))
  outs = jax.device_get(outs)
  for out, batch in zip(outs, batches):
    out.update(labels=batch["labels"], task_ids=batch["task_ids"], weights=batch["weights"])
  return {k: np.concatenate([o[k] for o in outs], axis=1 if k == EXPERT_CHOICES else 0)
          for k in outs[0]}
