"""Batches for diffusion training, addressed by (seed, step): images and labels from an
``ImageSource`` plus the noise, the time and the classifier-free-guidance label dropout, all
drawn on the host from ``np.random.default_rng([seed, step, 1])``. A batch is a pure function of
(seed, step), so a resumed run sees the same noise as the uninterrupted one.

  images  float32 [B, H, W, C]  the data x: pixels mapped from [0, 1] to [-1, 1], or latents
                                times ``latent_scale`` (``data_transform``)
  labels  int32   [B]           the class, or ``null_class`` with probability ``class_dropout``
  noise   float32 [B, H, W, C]  eps ~ N(0, 1)
  t       float32 [B]           DDPM step index in [0, N) (uniform), or a rectified-flow time
                                sigmoid(N(0, 1)) (logit-normal)
"""

from __future__ import annotations

import numpy as np

from moejax.data.image_source import ImageSource
from moejax.data.images import ImageSet

_STREAM = 1  # the third seed word: this source's draws, apart from the image order's


def data_transform(latents: bool, channels: int, latent_scale: float = 1.0):
  """(mean_C, std_C) for ``ImageSource(normalize=...)``: pixels in [0, 1] -> [-1, 1]
  ((p - 0.5) / 0.5), or latents -> latents * latent_scale."""
  if latents:
    return np.zeros(channels, np.float32), np.full(channels, 1.0 / latent_scale, np.float32)
  return np.full(channels, 0.5, np.float32), np.full(channels, 0.5, np.float32)


class DiffusionSource:
  """See the module docstring. ``shuffle=False`` walks the set in order (evaluation)."""

  def __init__(self, image_set: ImageSet, batch_size: int, seed: int, *, objective: str,
               num_timesteps: int, class_dropout: float, null_class: int, latents: bool = False,
               latent_scale: float = 1.0, shuffle: bool = True):
    if not 0.0 <= class_dropout < 1.0:
      raise ValueError(f"class_dropout={class_dropout} must be in [0, 1)")
    channels = image_set.images_NHWC.shape[-1]
    self.images = ImageSource(image_set, batch_size, seed, shuffle=shuffle,
                              normalize=data_transform(latents, channels, latent_scale))
    self.objective, self.num_timesteps = objective, num_timesteps
    self.class_dropout, self.null_class = class_dropout, null_class

  @property
  def num_batches(self) -> int:
    return self.images.num_batches

  def batch(self, step: int) -> dict[str, np.ndarray]:
    base = self.images.batch(step)
    rng = np.random.default_rng([self.images.seed, int(step), _STREAM])
    b = len(base["labels"])
    noise_BHWC = rng.standard_normal(base["images"].shape, dtype=np.float32)
    if self.objective == "ddpm":
      t_B = rng.integers(0, self.num_timesteps, b).astype(np.float32)
    else:
      t_B = (1.0 / (1.0 + np.exp(-rng.standard_normal(b)))).astype(np.float32)
    dropped_B = rng.uniform(size=b) < self.class_dropout
    labels_B = np.where(dropped_B, self.null_class, base["labels"]).astype(np.int32)
    return {"images": base["images"], "labels": labels_B, "noise": noise_BHWC, "t": t_B}
