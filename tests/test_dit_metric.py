"""The offline image metric: the Frechet distance against closed forms, the cached feature
classifier (trained once, reloaded identically), and the scores of real images vs noise."""

import numpy as np
import pytest

from configs import dit_moe
from moejax.diffusion import metric


def test_frechet_distance_closed_forms():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(4000, 3))
  assert metric.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
  # Same covariance, mean shifted by d: the distance is ||d||^2.
  np.testing.assert_allclose(metric.frechet_distance(a, a + [1.0, 2.0, 0.0]), 5.0, rtol=1e-6)
  # Isotropic scales s and 1 (same mean): 3 (s - 1)^2.
  np.testing.assert_allclose(metric.frechet_distance(2.0 * a, a), 3.0, rtol=0.05)


@pytest.fixture
def quick_classifier(monkeypatch, tmp_path):
  monkeypatch.setenv("MOEJAX_CACHE_DIR", str(tmp_path))
  monkeypatch.setitem(metric.TRAIN, "steps", 200)
  for fn in (metric.feature_classifier, metric._real_features):
    fn.cache_clear()
  yield tmp_path
  for fn in (metric.feature_classifier, metric._real_features):
    fn.cache_clear()


def test_classifier_is_cached_and_real_images_score_near_the_floor(quick_classifier):
  model, info = metric.feature_classifier("digits", 8, 1)
  assert info["test_accuracy"] > 0.8  # chance 0.1
  assert len(list(quick_classifier.glob("feature_classifier/*.npz"))) == 1
  metric.feature_classifier.cache_clear()
  reloaded, info2 = metric.feature_classifier("digits", 8, 1)  # from the cache
  images = np.random.default_rng(0).uniform(size=(5, 8, 8, 1)).astype(np.float32)
  np.testing.assert_array_equal(metric._apply(model, images, "features"),
                                metric._apply(reloaded, images, "features"))
  assert info2 == info
  config = dit_moe.get_config("smoke")
  test = metric.image_data.load_images("digits", "test", image_size=8, channels=1)
  real = metric.score_samples(config, 2 * test.images_NHWC - 1, test.labels_N)
  noise = metric.score_samples(config, np.random.default_rng(1).uniform(
      -1, 1, test.images_NHWC.shape), test.labels_N)
  assert real["conditional_accuracy"] == pytest.approx(info["test_accuracy"])
  assert real["fd_cnn"] < 1e-6  # the same images as the reference set
  assert noise["fd_cnn"] > 10 * real["fd_cnn_floor"] > 0
  assert noise["conditional_accuracy"] < 0.3
