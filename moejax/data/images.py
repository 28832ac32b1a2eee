"""Image data sets that ship in packages (no downloads): scikit-learn's digits, Fashion-MNIST.

Axis letters: N images, H height, W width, C channels (1).

  load_digits(split)               1,797 8x8 digits from scikit-learn (tests): 1,500 train, 297 test
  load_fashion_mnist(split, path)  70,000 28x28 clothing images, 10 classes: 60,000 train, 10,000
                                   test, from Debian's package ``dataset-fashion-mnist``:

    sudo apt-get install -y dataset-fashion-mnist   # files in /usr/share/datasets/fashion-mnist

Both return an ``ImageSet`` with float32 images in [0, 1] shaped [N, H, W, 1] and int32 labels.
"""

from __future__ import annotations

import dataclasses
import gzip
import os

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
_DIGITS_TRAIN = 1500
_FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclasses.dataclass(frozen=True)
class ImageSet:
  images_NHWC: np.ndarray  # float32 in [0, 1]
  labels_N: np.ndarray     # int32
  num_classes: int
  class_names: tuple[str, ...]


def _check_split(split: str) -> None:
  if split not in ("train", "test", "all"):
    raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")


def load_digits(split: str = "all") -> ImageSet:
  """scikit-learn's bundled 8x8 digits; ``train`` is the first 1,500, ``test`` the other 297."""
  from sklearn import datasets  # pylint: disable=import-outside-toplevel
  _check_split(split)
  bunch = datasets.load_digits()
  images = (bunch.images / 16.0).astype(np.float32)[..., None]
  labels = bunch.target.astype(np.int32)
  part = {"train": slice(0, _DIGITS_TRAIN), "test": slice(_DIGITS_TRAIN, None),
          "all": slice(None)}[split]
  return ImageSet(images[part], labels[part], 10, tuple(str(d) for d in range(10)))


def _read_idx(path: str, magic: int) -> np.ndarray:
  """Reads an IDX file (gzipped or not): uint8 data after a big-endian header."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  header = np.frombuffer(data, ">u4", count=1)[0]
  if header != magic:
    raise ValueError(f"{path} is not an IDX file with magic {magic} (got {header})")
  ndim = magic & 0xFF
  shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(path: str, name: str) -> str:
  for candidate in (os.path.join(path, name + ".gz"), os.path.join(path, name)):
    if os.path.exists(candidate):
      return candidate
  raise FileNotFoundError(
      f"Fashion-MNIST file {name}(.gz) not found in {path!r}. Install Debian's package with\n"
      "  sudo apt-get install -y dataset-fashion-mnist\n"
      f"(it puts the files in {FASHION_MNIST_DIR}), or pass path= to a folder holding "
      "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
      "t10k-labels-idx1-ubyte.gz.")


def fashion_mnist_available(path: str = FASHION_MNIST_DIR) -> bool:
  return all(os.path.exists(os.path.join(path, f + ".gz")) or os.path.exists(os.path.join(path, f))
             for files in _FASHION_FILES.values() for f in files)


def load_fashion_mnist(split: str = "train", path: str = FASHION_MNIST_DIR) -> ImageSet:
  """Fashion-MNIST ``train`` (60,000), ``test`` (10,000) or ``all`` from the IDX files."""
  _check_split(split)
  parts = ("train", "test") if split == "all" else (split,)
  images, labels = [], []
  for part in parts:
    image_file, label_file = _FASHION_FILES[part]
    images.append(_read_idx(_find(path, image_file), 2051))
    labels.append(_read_idx(_find(path, label_file), 2049))
  images_NHW = np.concatenate(images)
  labels_N = np.concatenate(labels).astype(np.int32)
  if len(images_NHW) != len(labels_N):
    raise ValueError(f"{path}: {len(images_NHW)} images but {len(labels_N)} labels")
  return ImageSet((images_NHW.astype(np.float32) / 255.0)[..., None], labels_N, 10,
                  FASHION_MNIST_CLASSES)
