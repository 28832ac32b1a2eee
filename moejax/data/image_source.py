"""Image batch source addressed by (seed, step), with optional task-conditioned labels.

``ImageSource(image_set, batch_size, seed, tasks=("class",), shuffle=True, normalize=None)``;
``batch(step)`` returns the *global* batch for that step, a pure function of (seed, step):

  images    float32 [B, H, W, C]   (normalized with the given train statistics if ``normalize``)
  labels    int32   [B]            the label of the row's task for the row's image
  task_ids  int32   [B]            index into ``tasks``
  weights   float32 [B]            1 for real rows, 0 for eval padding (all ones in training)

Training (``shuffle=True``): the stream is the concatenation of epochs, each a fresh permutation
``np.random.default_rng([seed, epoch]).permutation(N)``; global position p = step * B + i holds
image perm_{p // N}[p % N] and task p % num_tasks, so a batch may cross an epoch boundary and
resuming at any step reproduces the stream. ``num_batches`` = ceil(N / B), the steps of one epoch.

Evaluation (``shuffle=False``): the sequence of (task, image) pairs, task-major (all images for
task 0, then task 1, ...), cut into consecutive batches; ``num_batches`` = ceil(num_tasks * N / B)
and the last batch is padded by wrapping around to the start, with weight 0 on the padding.

``normalize`` = (mean_C, std_C) from ``channel_stats(train_set)``, computed once and passed to both
the train and the test source. Batches index the arrays (B rows copied), never the whole set.
"""

from __future__ import annotations

import math

import numpy as np

from moejax.data.images import ImageSet, task_labels

IMAGE_BATCH_KEYS = ("images", "labels", "task_ids", "weights")


def channel_stats(image_set: ImageSet) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean_C and std_C (float32) of ``image_set``'s images, for ``normalize``."""
  images_NHWC = image_set.images_NHWC
  mean_C = images_NHWC.mean(axis=(0, 1, 2), dtype=np.float64)
  var_C = np.square(images_NHWC, dtype=np.float64).mean(axis=(0, 1, 2)) - np.square(mean_C)
  return mean_C.astype(np.float32), np.sqrt(np.maximum(var_C, 0.0)).astype(np.float32)


class ImageSource:
  """Batches of an ``ImageSet`` by (seed, step); the contract is in the module docstring."""

  def __init__(self, image_set: ImageSet, batch_size: int, seed: int,
               tasks: tuple[str, ...] = ("class",), shuffle: bool = True,
               normalize: tuple[np.ndarray, np.ndarray] | None = None):
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(tasks, str) or not tasks:
      raise ValueError(f"tasks must be a non-empty tuple of task names, got {tasks!r}")
    if len(image_set.labels_N) != len(image_set.images_NHWC) or not len(image_set.labels_N):
      raise ValueError(f"image_set must hold as many labels as images, at least one; got "
                       f"{len(image_set.images_NHWC)} images, {len(image_set.labels_N)} labels")
    self.image_set = image_set
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.tasks = tuple(tasks)
    self.shuffle = shuffle
    per_task = [task_labels(image_set, task) for task in self.tasks]
    self._labels_TN = np.stack([labels_N for labels_N, _, _ in per_task]).astype(np.int32)
    self.num_classes_per_task = tuple(n for _, n, _ in per_task)
    self.class_names_per_task = tuple(names for _, _, names in per_task)
    self._scale_C = self._shift_C = None
    if normalize is not None:
      mean_C, std_C = (np.asarray(a, np.float32).reshape(-1) for a in normalize)
      channels = image_set.images_NHWC.shape[-1]
      if mean_C.shape != (channels,) or std_C.shape != (channels,) or np.any(std_C <= 0):
        raise ValueError(f"normalize must be (mean_C, std_C) with {channels} entries each and "
                         f"std > 0, got {normalize!r}")
      self._scale_C, self._shift_C = 1.0 / std_C, -mean_C / std_C
    self._perms: dict[int, np.ndarray] = {}

  @property
  def num_images(self) -> int:
    return len(self.image_set.labels_N)

  @property
  def num_tasks(self) -> int:
    return len(self.tasks)

  @property
  def num_batches(self) -> int:
    """Steps in one epoch (training) or in the whole (task, image) sequence (evaluation)."""
    per_pass = self.num_images * (1 if self.shuffle else self.num_tasks)
    return math.ceil(per_pass / self.batch_size)

  def _permutation(self, epoch: int) -> np.ndarray:
    perm_N = self._perms.get(epoch)
    if perm_N is None:
      perm_N = np.random.default_rng([self.seed, epoch]).permutation(self.num_images)
      # Bounded cache (a batch spans neighbouring epochs), in whatever order steps come.
      kept = {e: p for e, p in self._perms.items() if abs(e - epoch) == 1}
      self._perms = {**kept, epoch: perm_N}
    return perm_N

  def _rows(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image indices, task ids and weights of the rows of batch ``step``."""
    n, b = self.num_images, self.batch_size
    positions_B = step * b + np.arange(b, dtype=np.int64)
    if self.shuffle:
      epochs_B, image_ids_B = np.divmod(positions_B, n)
      for epoch in np.unique(epochs_B):
        rows = epochs_B == epoch
        image_ids_B[rows] = self._permutation(int(epoch))[image_ids_B[rows]]
      return image_ids_B, positions_B % self.num_tasks, np.ones(b, np.float32)
    total = n * self.num_tasks
    task_ids_B, image_ids_B = np.divmod(positions_B % total, n)
    return image_ids_B, task_ids_B, (positions_B < total).astype(np.float32)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    if not isinstance(step, (int, np.integer)) or step < 0:
      raise ValueError(f"step must be a non-negative int, got {step!r}")
    if not self.shuffle and step >= self.num_batches:
      raise ValueError(f"step={step} is past the evaluation set's {self.num_batches} batches")
    image_ids_B, task_ids_B, weights_B = self._rows(int(step))
    images_BHWC = self.image_set.images_NHWC[image_ids_B]
    if self._scale_C is not None:
      images_BHWC = images_BHWC * self._scale_C + self._shift_C
    return {"images": images_BHWC.astype(np.float32, copy=False),
            "labels": self._labels_TN[task_ids_B, image_ids_B],
            "task_ids": task_ids_B.astype(np.int32),
            "weights": weights_B}
