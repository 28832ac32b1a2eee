"""Image data sets as numpy arrays: package-shipped sets, image folders, TFDS; task labels.

Axis letters: N images, H height, W width, C channels (1 or 3), T tasks.

  load_images(dataset, split, *, image_size=None, channels=None)   one entry point, ``dataset``:
    "digits"                         1,797 8x8 digits from scikit-learn: 1,500 train, 297 test
    "fashion_mnist[:DIR]"            70,000 28x28 clothing images, 10 classes: 60,000 train,
                                     10,000 test, from Debian's ``dataset-fashion-mnist``:
                                       sudo apt-get install -y dataset-fashion-mnist
    "folder:DIR"                     one subfolder per class (``image_readers.load_folder``)
    "tfds:NAME[@DATA_DIR]"           a prepared TFDS set, never downloaded
                                     (``image_readers.load_tfds``)
  load_digits(split), load_fashion_mnist(split, path)   the two package-shipped sets directly

Every loader returns an ``ImageSet``: float32 images in [0, 1] shaped [N, H, W, C], int32 labels
in [0, num_classes). ``split`` is "train", "test" or "all". ``channels`` converts (1 -> 3 repeats
the gray plane; 3 -> 1 is ITU-R 601 luma, as Pillow's "L"); ``image_size`` resizes every image to
image_size x image_size, bilinear (Pillow, antialiased when shrinking).

Task labels (task-conditioned routing): ``TASK_LABELS[name](labels_N, num_classes, class_names)``
returns (task labels_N int32, task num_classes, task class_names); ``task_labels(image_set, name)``
applies one by name. Tasks: "class" (identity), "fashion_coarse3" (``FASHION_COARSE3``),
"parity" (digits even / odd).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from typing import Callable, Sequence

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
_DIGITS_TRAIN = 1500
_FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_LUMA_C = np.array([0.299, 0.587, 0.114], np.float32)
DATASET_FORMS = ('"digits"', '"fashion_mnist"', '"fashion_mnist:/path/to/dir"', '"folder:/path"',
                 '"tfds:NAME"', '"tfds:NAME@DATA_DIR"')


@dataclasses.dataclass(frozen=True)
class ImageSet:
  images_NHWC: np.ndarray  # float32 in [0, 1]
  labels_N: np.ndarray     # int32
  num_classes: int
  class_names: tuple[str, ...]


def check_split(split: str) -> None:
  if split not in ("train", "test", "all"):
    raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")


# ----------------------------------------------------------------------------- conversion

def set_channels(images_NHWC: np.ndarray, channels: int | None) -> np.ndarray:
  """Float32 images with ``channels`` channels (None keeps them); works on [..., H, W, C]."""
  if channels is None or images_NHWC.shape[-1] == channels:
    return images_NHWC
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
  have = images_NHWC.shape[-1]
  if have == 1 and channels == 3:
    return np.repeat(images_NHWC, 3, axis=-1)
  if have == 3 and channels == 1:
    return (images_NHWC @ _LUMA_C)[..., None].astype(np.float32)
  raise ValueError(f"cannot convert {have}-channel images to channels={channels}")


def resize_image(image_HWC: np.ndarray, image_size: int) -> np.ndarray:
  """Bilinear resize of one float32 image to image_size x image_size (Pillow, per channel)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  if image_HWC.shape[:2] == (image_size, image_size):
    return image_HWC
  planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image_HWC[..., c]), mode="F")
                       .resize((image_size, image_size), Image.Resampling.BILINEAR))
            for c in range(image_HWC.shape[-1])]
  return np.clip(np.stack(planes, axis=-1), 0.0, 1.0).astype(np.float32)


def stack_images(images: Sequence[np.ndarray], names: Sequence[str], image_size: int | None,
                 channels: int | None) -> np.ndarray:
  """Converts float32 [H, W, C] images (channels, then size) and stacks them to [N, H, W, C].

  Without ``image_size`` all images must share one size; ``names[i]`` names image i in the error.
  """
  if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
    raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
  out = []
  for image_HWC, name in zip(images, names):
    image_HWC = set_channels(image_HWC, channels)
    if image_size is not None:
      image_HWC = resize_image(image_HWC, image_size)
    elif out and image_HWC.shape != out[0].shape:
      raise ValueError(f"images differ in size: {name} is {image_HWC.shape[:2]} but {names[0]} "
                       f"is {out[0].shape[:2]}; pass image_size= to resize them all")
    out.append(image_HWC)
  if not out:
    raise ValueError("no images to stack")
  return np.stack(out).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- loaders

def load_digits(split: str = "all") -> ImageSet:
  """scikit-learn's bundled 8x8 digits; ``train`` is the first 1,500, ``test`` the other 297."""
  from sklearn import datasets  # pylint: disable=import-outside-toplevel
  check_split(split)
  bunch = datasets.load_digits()
  images = (bunch.images / 16.0).astype(np.float32)[..., None]
  labels = bunch.target.astype(np.int32)
  part = {"train": slice(0, _DIGITS_TRAIN), "test": slice(_DIGITS_TRAIN, None),
          "all": slice(None)}[split]
  return ImageSet(images[part], labels[part], 10, DIGIT_CLASSES)


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
  check_split(split)
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


def load_images(dataset: str, split: str, *, image_size: int | None = None,
                channels: int | None = None) -> ImageSet:
  """Loads ``split`` of ``dataset`` (forms in the module docstring), converted and resized."""
  from moejax.data import image_readers  # pylint: disable=import-outside-toplevel
  check_split(split)
  kind, _, arg = dataset.partition(":")
  if kind == "folder" and arg:
    return image_readers.load_folder(arg, split, image_size=image_size, channels=channels)
  if kind == "tfds" and arg:
    return image_readers.load_tfds(arg, split, image_size=image_size, channels=channels)
  if kind == "digits" and not arg:
    data = load_digits(split)
  elif kind == "fashion_mnist":
    data = load_fashion_mnist(split, arg or FASHION_MNIST_DIR)
  else:
    raise ValueError(f"dataset={dataset!r} is not a known form; accepted: "
                     f"{', '.join(DATASET_FORMS)}")
  images_NHWC = set_channels(data.images_NHWC, channels)
  if image_size is not None:
    images_NHWC = stack_images(images_NHWC, [f"{dataset}[{i}]" for i in range(len(images_NHWC))],
                               image_size, None)
  return dataclasses.replace(data, images_NHWC=images_NHWC)


# ----------------------------------------------------------------------------- task labels

# Fashion-MNIST's 10 classes in 3 coarse groups: 0 tops (T-shirt/top, Pullover, Dress, Coat,
# Shirt), 1 footwear (Sandal, Sneaker, Ankle boot), 2 other (Trouser, Bag).
FASHION_COARSE3 = ("tops", "footwear", "other")
_FASHION_COARSE3_OF_CLASS = np.array([0, 2, 0, 0, 0, 1, 0, 1, 2, 1], np.int32)

TaskFn = Callable[[np.ndarray, int, tuple], tuple[np.ndarray, int, tuple]]


def _require_classes(task: str, class_names: tuple, expected: tuple) -> None:
  if tuple(class_names) != expected:
    raise ValueError(f"task {task!r} needs the classes {expected}, got {tuple(class_names)}")


def _class_task(labels_N, num_classes, class_names):
  return labels_N.astype(np.int32), num_classes, tuple(class_names)


def _fashion_coarse3_task(labels_N, num_classes, class_names):
  del num_classes
  _require_classes("fashion_coarse3", class_names, FASHION_MNIST_CLASSES)
  return _FASHION_COARSE3_OF_CLASS[labels_N], 3, FASHION_COARSE3


def _parity_task(labels_N, num_classes, class_names):
  del num_classes
  _require_classes("parity", class_names, DIGIT_CLASSES)
  return (labels_N % 2).astype(np.int32), 2, ("even", "odd")


TASK_LABELS: dict[str, TaskFn] = {"class": _class_task, "fashion_coarse3": _fashion_coarse3_task,
                                  "parity": _parity_task}


def task_labels(image_set: ImageSet, task: str) -> tuple[np.ndarray, int, tuple[str, ...]]:
  """(labels_N, num_classes, class_names) of ``task`` for ``image_set``."""
  if task not in TASK_LABELS:
    raise ValueError(f"task {task!r} is not known; known tasks: {sorted(TASK_LABELS)}")
  return TASK_LABELS[task](image_set.labels_N, image_set.num_classes, image_set.class_names)
