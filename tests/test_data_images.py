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


# ----------------------------------------------------------------------------- load_images


def _write_png(path, pixels):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path)


def _gray(value, size=(4, 6)):  # (height, width) -> uint8 [H, W]
  return np.full(size, value, np.uint8)


def test_load_images_digits_and_fashion_convert_and_resize():
  digits = images.load_images("digits", "test", image_size=12, channels=3)
  assert digits.images_NHWC.shape == (297, 12, 12, 3) and digits.images_NHWC.dtype == np.float32
  np.testing.assert_array_equal(digits.images_NHWC[..., 0], digits.images_NHWC[..., 2])
  np.testing.assert_array_equal(digits.labels_N, images.load_digits("test").labels_N)
  assert 0.0 <= digits.images_NHWC.min() and digits.images_NHWC.max() <= 1.0
  with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
    images.load_images("fashion_mnist:/nonexistent/dir", "train")


def test_resize_is_bilinear_and_keeps_a_constant_image():
  image_HWC = np.zeros((2, 2, 1), np.float32)
  image_HWC[:, 1] = 1.0  # left column 0, right column 1
  up = images.resize_image(image_HWC, 4)[..., 0]
  assert up.shape == (4, 4)
  np.testing.assert_allclose(up[0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)  # half-pixel centres
  np.testing.assert_allclose(images.resize_image(np.full((5, 3, 3), 0.4, np.float32), 7), 0.4,
                             atol=1e-6)


def test_set_channels_luma():
  rgb = np.array([[[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]], np.float32)
  np.testing.assert_allclose(images.set_channels(rgb, 1)[0, 0, :, 0], [0.299, 0.587, 0.114],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="channels"):
    images.set_channels(rgb, 2)


def test_unknown_dataset_lists_the_accepted_forms():
  for bad in ("mnist", "folder:", "digits:x", "tfds:"):
    with pytest.raises(ValueError, match="folder:/path.*tfds:NAME"):
      images.load_images(bad, "train")
  with pytest.raises(ValueError, match="split"):
    images.load_images("digits", "validation")


def _mixed_folder(root):
  """Class a: 10 gray 4x6 images; class b: 10 RGB 8x8 images (value encodes class and index)."""
  for i in range(10):
    _write_png(root / "a" / f"{i:02d}.png", _gray(10 * i))
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 100 + i
    _write_png(root / "b" / f"{i:02d}.png", rgb)


def test_folder_mixed_gray_and_rgb_resized(tmp_path):
  _mixed_folder(tmp_path)
  (tmp_path / "a" / "notes.txt").write_text("not an image")
  train = images.load_images(f"folder:{tmp_path}", "train", image_size=5)
  test = images.load_images(f"folder:{tmp_path}", "test", image_size=5)
  assert train.class_names == ("a", "b") and train.num_classes == 2
  assert train.images_NHWC.shape == (18, 5, 5, 3) and train.images_NHWC.dtype == np.float32
  # sorted paths a/00..a/09, b/00..b/09: every 10th (a/09, b/09) is test
  assert test.labels_N.tolist() == [0, 1] and train.labels_N.tolist() == [0] * 9 + [1] * 9
  np.testing.assert_allclose(test.images_NHWC[0], 90 / 255, atol=1e-6)  # gray -> RGB, constant
  np.testing.assert_allclose(test.images_NHWC[1, ..., 0], 109 / 255, atol=1e-6)
  np.testing.assert_allclose(test.images_NHWC[1, ..., 1:], 0.0, atol=1e-6)
  gray = images.load_images(f"folder:{tmp_path}", "all", image_size=5, channels=1)
  assert gray.images_NHWC.shape == (20, 5, 5, 1)
  np.testing.assert_allclose(gray.images_NHWC[19], round(0.299 * 109) / 255, atol=1 / 255)


def test_folder_sizes_must_match_without_image_size(tmp_path):
  _mixed_folder(tmp_path)
  with pytest.raises(ValueError, match=r"b/00\.png is \(8, 8\).*image_size"):
    images.load_images(f"folder:{tmp_path}", "train")


def test_folder_gray_only_defaults_to_one_channel(tmp_path):
  for i in range(3):
    _write_png(tmp_path / "x" / f"{i}.png", _gray(i))
  data = images.load_images(f"folder:{tmp_path}", "all")
  assert data.images_NHWC.shape == (3, 4, 6, 1) and data.labels_N.tolist() == [0, 0, 0]
  np.testing.assert_allclose(data.images_NHWC[:, 0, 0, 0], np.arange(3) / 255, atol=1e-7)


def test_folder_with_train_and_test_subfolders(tmp_path):
  _write_png(tmp_path / "train" / "cat" / "0.png", _gray(1))
  _write_png(tmp_path / "train" / "dog" / "0.png", _gray(2))
  _write_png(tmp_path / "train" / "dog" / "1.png", _gray(3))
  _write_png(tmp_path / "test" / "dog" / "0.png", _gray(4))
  train = images.load_images(f"folder:{tmp_path}", "train")
  test = images.load_images(f"folder:{tmp_path}", "test")
  assert train.class_names == test.class_names == ("cat", "dog")
  assert train.labels_N.tolist() == [0, 1, 1] and test.labels_N.tolist() == [1]
  np.testing.assert_allclose(test.images_NHWC.reshape(-1), 4 / 255, atol=1e-7)


def test_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    images.load_images(f"folder:{tmp_path / 'missing'}", "train")
  with pytest.raises(ValueError, match="no class subfolders"):
    images.load_images(f"folder:{tmp_path}", "train")
  (tmp_path / "empty_class").mkdir()
  with pytest.raises(ValueError, match="no image files"):
    images.load_images(f"folder:{tmp_path}", "train")
  _write_png(tmp_path / "empty_class" / "0.png", _gray(0))
  with pytest.raises(ValueError, match="no 'test' images"):  # 1 image: the 10th-image test split
    images.load_images(f"folder:{tmp_path}", "test")


def test_tfds_mnist_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    data = images.load_images("tfds:mnist", "train", image_size=7, channels=3)
    reference = [(x, int(y)) for x, y in tfds.as_numpy(
        tfds.load("mnist", split="train", as_supervised=True, download=False))]
  assert data.images_NHWC.shape == (6, 7, 7, 3) and data.images_NHWC.dtype == np.float32
  assert data.labels_N.dtype == np.int32 and data.labels_N.tolist() == [y for _, y in reference]
  assert data.class_names == tuple(str(d) for d in range(10)) and data.num_classes == 10
  expected = images.resize_image(reference[0][0].astype(np.float32) / 255.0, 7)
  np.testing.assert_allclose(data.images_NHWC[0, ..., 1], expected[..., 0], atol=1e-6)


def test_tfds_not_prepared_names_the_set_and_data_dir(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(FileNotFoundError,
                     match=f"tfds:mnist is not prepared in data_dir='{tmp_path}"):
    images.load_images(f"tfds:mnist@{tmp_path}", "test")
  with pytest.raises(ValueError, match="no data set named 'no_such_set'"):
    images.load_images(f"tfds:no_such_set@{tmp_path}", "test")


# ----------------------------------------------------------------------------- task labels


def test_task_labels_golden_values():
  labels_N = np.arange(10, dtype=np.int32)
  fashion = images.ImageSet(np.zeros((10, 1, 1, 1), np.float32), labels_N, 10,
                            images.FASHION_MNIST_CLASSES)
  coarse_N, n, names = images.task_labels(fashion, "fashion_coarse3")
  assert names == ("tops", "footwear", "other") and n == 3
  # T-shirt, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot
  assert coarse_N.tolist() == [0, 2, 0, 0, 0, 1, 0, 1, 2, 1] and coarse_N.dtype == np.int32
  digits = images.load_digits("test")
  parity_N, n, names = images.task_labels(digits, "parity")
  assert n == 2 and names == ("even", "odd") and parity_N.dtype == np.int32
  np.testing.assert_array_equal(parity_N, digits.labels_N % 2)
  assert parity_N[digits.labels_N == 7].min() == 1 and parity_N[digits.labels_N == 4].max() == 0
  same_N, n, names = images.task_labels(digits, "class")
  np.testing.assert_array_equal(same_N, digits.labels_N)
  assert (n, names) == (10, digits.class_names)


def test_task_labels_errors():
  digits = images.load_digits("test")
  with pytest.raises(ValueError, match="known tasks.*fashion_coarse3"):
    images.task_labels(digits, "colour")
  with pytest.raises(ValueError, match="fashion_coarse3.*needs the classes"):
    images.task_labels(digits, "fashion_coarse3")


def test_tfds_conversion_of_mixed_sizes_and_split_fallback():
  tf = pytest.importorskip("tensorflow")
  from moejax.data import image_readers  # pylint: disable=import-outside-toplevel
  pictures = [np.full((4, 6, 3), 51, np.uint8), np.full((9, 5, 3), 255, np.uint8)]
  dataset = tf.data.Dataset.from_generator(
      lambda: iter(zip(pictures, [2, 0])),
      output_signature=(tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((), tf.int64)))
  with pytest.raises(ValueError, match=r"toy\[1\] is \(9, 5\)"):
    image_readers.dataset_to_image_set(dataset, ["a", "b", "c"], name="toy")
  data = image_readers.dataset_to_image_set(dataset, ["a", "b", "c"], image_size=3, channels=1)
  assert data.images_NHWC.shape == (2, 3, 3, 1) and data.labels_N.tolist() == [2, 0]
  np.testing.assert_allclose(data.images_NHWC[0], 0.2, atol=1e-6)
  assert data.class_names == ("a", "b", "c") and data.num_classes == 3

  class Builder:  # what _tfds_split reads of a tfds builder
    def __init__(self, splits):
      self.info = type("Info", (), {"splits": dict.fromkeys(splits)})()

  split_of = image_readers._tfds_split  # pylint: disable=protected-access
  assert split_of(Builder(["train", "validation"]), "test") == "validation"
  assert split_of(Builder(["train", "test", "validation"]), "all") == "train+test"
  assert split_of(Builder([]), "test") == "test"  # splits unknown (not prepared, or mocked)
