"""Image loaders: scikit-learn's digits (always there) and Debian's Fashion-MNIST (if installed)."""

import numpy as np
import pytest

from moejax.data import images


def test_digits():
  train, test = images.load_digits("train"), images.load_digits("test")
  assert train.images_NHWC.shape == (1500, 8, 8, 1) and test.images_NHWC.shape == (297, 8, 8, 1)
  assert train.images_NHWC.dtype == np.float32 and train.labels_N.dtype == np.int32
  assert 0.0 <= train.images_NHWC.min() and train.images_NHWC.max() == 1.0
  assert set(np.unique(train.labels_N)) == set(range(10)) and train.num_classes == 10
  with pytest.raises(ValueError):
    images.load_digits("validation")


def test_fashion_mnist_missing_gives_the_install_command(tmp_path):
  with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
    images.load_fashion_mnist(path=str(tmp_path))


def test_idx_reader_on_a_hand_made_file(tmp_path):
  pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  header = np.array([2051, 2, 3, 4], ">u4").tobytes()
  (tmp_path / "train-images-idx3-ubyte").write_bytes(header + pixels.tobytes())
  labels = np.array([7, 1], np.uint8)
  (tmp_path / "train-labels-idx1-ubyte").write_bytes(
      np.array([2049, 2], ">u4").tobytes() + labels.tobytes())
  data = images.load_fashion_mnist("train", path=str(tmp_path))
  np.testing.assert_allclose(data.images_NHWC[..., 0], pixels / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(data.labels_N, [7, 1])


@pytest.mark.skipif(not images.fashion_mnist_available(),
                    reason="dataset-fashion-mnist not installed (apt-get install -y "
                           "dataset-fashion-mnist)")
def test_fashion_mnist_from_the_debian_package():
  test = images.load_fashion_mnist("test")
  assert test.images_NHWC.shape == (10000, 28, 28, 1)
  assert np.bincount(test.labels_N).tolist() == [1000] * 10
  assert test.labels_N[:5].tolist() == [9, 2, 1, 1, 6]  # the published test order
  assert test.class_names[9] == "Ankle boot"
