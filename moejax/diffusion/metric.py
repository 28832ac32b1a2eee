"""An offline image metric: the Frechet distance in the feature space of a classifier that
moejax trains itself, its real-vs-real floor, and the conditional accuracy of samples.

No Inception weights can be fetched here, so this is *not* FID and its values are never
comparable with Inception-FID numbers: it is "FD-CNN", the Frechet distance (Heusel et al. 2017)
between Gaussians fitted to the 128-d penultimate features of a small CNN trained on the same
data set (one per data set, image size and channels, trained once and cached; its test accuracy
is recorded with it). The floor is the distance between as many training as test images
(real vs real); conditional accuracy is the share of samples the classifier assigns to the
class they were asked for.

  score_samples(config, samples_NHWC, labels_N) -> {"fd_cnn", "fd_cnn_floor",
      "conditional_accuracy", "classifier_test_accuracy", "metric_samples"}

Samples are in the diffusion data space [-1, 1]; the classifier reads [0, 1] pixels.
Cache: ``$MOEJAX_CACHE_DIR`` (default ~/.cache/moejax)/feature_classifier/.
Axes: N images, H/W, C channels, F features, K classes.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import scipy.linalg
from flax import nnx

from moejax.data import images as image_data

VERSION = 1  # bump when the classifier or its training changes (invalidates the cache)
FEATURES = 128
TRAIN = dict(steps=1500, batch_size=128, lr=2e-3, seed=0)


class FeatureCNN(nnx.Module):
  """conv3x3(32) - relu - avgpool2 - conv3x3(64) - relu - avgpool2 - dense(128) - relu
  (the features) - dense(K)."""

  def __init__(self, image_size: int, channels: int, num_classes: int, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(channels, 32, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
    side = image_size // 4
    self.dense = nnx.Linear(side * side * 64, FEATURES, rngs=rngs)
    self.head = nnx.Linear(FEATURES, num_classes, rngs=rngs)

  def features(self, images_NHWC):
    x = nnx.avg_pool(jax.nn.relu(self.conv1(images_NHWC)), (2, 2), (2, 2))
    x = nnx.avg_pool(jax.nn.relu(self.conv2(x)), (2, 2), (2, 2))
    return jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))

  def __call__(self, images_NHWC):
    return self.head(self.features(images_NHWC))


def cache_dir() -> str:
  root = os.environ.get("MOEJAX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache",
                                                         "moejax"))
  return os.path.join(root, "feature_classifier")


def _key(dataset: str, image_size: int, channels: int) -> str:
  safe = "".join(c if c.isalnum() else "_" for c in dataset)
  return f"v{VERSION}-{safe}-{image_size}px-{channels}ch"


def _train(image_set: image_data.ImageSet, test_set: image_data.ImageSet):
  """Adam on cross-entropy for ``TRAIN["steps"]`` batches; returns (model, test accuracy)."""
  n, (_, h, _, c) = len(image_set.labels_N), image_set.images_NHWC.shape
  model = FeatureCNN(h, c, image_set.num_classes, rngs=nnx.Rngs(TRAIN["seed"]))
  graphdef, params = nnx.split(model)
  tx = optax.adam(TRAIN["lr"])
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, images, labels):
    def loss_fn(p):
      logits = nnx.merge(graphdef, p)(images)
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(TRAIN["seed"])
  for _ in range(TRAIN["steps"]):
    rows = rng.integers(0, n, TRAIN["batch_size"])
    params, opt_state = step(params, opt_state, image_set.images_NHWC[rows],
                             image_set.labels_N[rows])
  model = nnx.merge(graphdef, params)
  predictions = np.argmax(_apply(model, test_set.images_NHWC, "logits"), -1)
  return model, float(np.mean(predictions == test_set.labels_N))


def _apply(model: FeatureCNN, images_NHWC, what: str, batch: int = 1000) -> np.ndarray:
  graphdef, params = nnx.split(model)
  fn = _compiled(graphdef, what)
  return np.concatenate([np.asarray(fn(params, images_NHWC[i:i + batch]))
                         for i in range(0, len(images_NHWC), batch)])


@functools.cache
def _compiled(graphdef, what: str):
  def run(params, images):
    model = nnx.merge(graphdef, params)
    return model(images) if what == "logits" else model.features(images)
  return jax.jit(run)


@functools.cache
def feature_classifier(dataset: str, image_size: int, channels: int):
  """(model, info) for a data set at a size: loaded from the cache, or trained and cached
  (written atomically, so concurrent runs never read half a file)."""
  train = image_data.load_images(dataset, "train", image_size=image_size, channels=channels)
  test = image_data.load_images(dataset, "test", image_size=image_size, channels=channels)
  path = os.path.join(cache_dir(), _key(dataset, image_size, channels))
  model = FeatureCNN(image_size, channels, train.num_classes, rngs=nnx.Rngs(TRAIN["seed"]))
  if os.path.exists(path + ".npz") and os.path.exists(path + ".json"):
    with np.load(path + ".npz") as arrays:
      flat = dict(arrays)
    state = nnx.state(model)
    nnx.update(model, jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.asarray(flat[jax.tree_util.keystr(p)]), state))
    with open(path + ".json") as f:
      return model, json.load(f)
  model, accuracy = _train(train, test)
  info = {"test_accuracy": accuracy, "train": TRAIN, "dataset": dataset,
          "image_size": image_size, "channels": channels, "version": VERSION}
  os.makedirs(cache_dir(), exist_ok=True)
  flat = {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(model))}
  for suffix, write in ((".npz", lambda f: np.savez(f, **flat)),
                        (".json", lambda f: f.write(json.dumps(info).encode()))):
    fd, tmp = tempfile.mkstemp(dir=cache_dir())
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(tmp, path + suffix)
  return model, info


def frechet_distance(feats_a_NF, feats_b_NF) -> float:
  """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of Gaussians fitted to features."""
  a, b = np.asarray(feats_a_NF, np.float64), np.asarray(feats_b_NF, np.float64)
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  root = scipy.linalg.sqrtm(cov_a @ cov_b)
  if np.iscomplexobj(root):
    root = root.real  # numerical noise of a near-singular product
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * root))


@functools.cache
def _real_features(dataset: str, image_size: int, channels: int, split: str, count: int):
  model, _ = feature_classifier(dataset, image_size, channels)
  images = image_data.load_images(dataset, split, image_size=image_size, channels=channels)
  rows = np.random.default_rng(0).permutation(len(images.labels_N))[:count]
  return _apply(model, images.images_NHWC[rows], "features")


def score_samples(config: ml_collections.ConfigDict, samples_NHWC, labels_N) -> dict:
  """The metric of samples (data space [-1, 1]) asked for classes ``labels_N``; see the module
  docstring. The real features are the test split's (at most as many images as samples; the
  floor uses as many training images)."""
  dataset, size, channels = config.data.dataset, config.model.image_size, config.model.channels
  model, info = feature_classifier(dataset, size, channels)
  pixels = np.clip((np.asarray(samples_NHWC, np.float32) + 1.0) / 2.0, 0.0, 1.0)
  count = len(pixels)
  test = _real_features(dataset, size, channels, "test", count)
  train = _real_features(dataset, size, channels, "train", len(test))
  predictions = np.argmax(_apply(model, pixels, "logits"), -1)
  return {"fd_cnn": frechet_distance(_apply(model, pixels, "features"), test),
          "fd_cnn_floor": frechet_distance(train, test),
          "conditional_accuracy": float(np.mean(predictions == np.asarray(labels_N))),
          "classifier_test_accuracy": info["test_accuracy"], "metric_samples": count}
