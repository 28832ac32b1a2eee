"""Image readers behind ``images.load_images``: class-per-subfolder image folders and TFDS sets.

``load_folder(root, split)``: ``root`` holds one subfolder per class (class names = sorted
subfolder names, label = index in that order; hidden entries are skipped). If ``root`` has both
``train/`` and ``test/`` subfolders they are the splits (class names = sorted union of their class
subfolders, so labels agree between splits); otherwise the split is deterministic: over all
images sorted by path relative to ``root``, every 10th (indices 9, 19, ...) is ``test``. Files
are read with Pillow (8-bit modes). Default ``channels``: 3 if any image in ``root`` (all splits)
is colour, else 1, so both splits agree. Without ``image_size`` every image in ``root`` must share
one size (the error names the first that differs).

``load_tfds(spec, split)``: ``spec`` is "NAME" or "NAME@DATA_DIR" (else $TFDS_DATA_DIR, else the
TFDS default), loaded with ``tfds.load(NAME, split=..., as_supervised=True, download=False)``.
Split "test" falls back to "validation" when the prepared set has no "test" (e.g. imagenette);
"all" is train + test. Class names come from ``info.features['label'].names``. A set that is not
prepared gives a FileNotFoundError naming the set and the data_dir: nothing is downloaded here.
"""

from __future__ import annotations

import os

import numpy as np

from moejax.data.images import ImageSet, check_split, stack_images

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_TEST_EVERY = 10


def _subdirs(path: str) -> list[str]:
  return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _class_files(root: str, classes: list[str]) -> list[tuple[str, int]]:
  """(path, label) of the image files in ``root/<class>/``, sorted by path."""
  files = []
  for name in _subdirs(root):
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
      files += [(os.path.join(dirpath, f), classes.index(name)) for f in filenames
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
  return sorted(files)


def _folder_splits(root: str) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
  """Class names and the (path, label) files of each split ("train", "test")."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"image folder {root!r} does not exist (dataset 'folder:{root}')")
  top = _subdirs(root)
  if "train" in top and "test" in top:
    split_roots = {s: os.path.join(root, s) for s in ("train", "test")}
    classes = sorted(set(_subdirs(split_roots["train"])) | set(_subdirs(split_roots["test"])))
  else:
    split_roots, classes = None, top
  if not classes:
    raise ValueError(f"image folder {root!r} has no class subfolders; expected one subfolder per "
                     "class (optionally under train/ and test/)")
  if split_roots:
    splits = {s: _class_files(r, classes) for s, r in split_roots.items()}
  else:
    files = _class_files(root, classes)
    splits = {"train": [f for i, f in enumerate(files) if i % _TEST_EVERY != _TEST_EVERY - 1],
              "test": [f for i, f in enumerate(files) if i % _TEST_EVERY == _TEST_EVERY - 1]}
  if not splits["train"] and not splits["test"]:
    raise ValueError(f"image folder {root!r} has class subfolders {classes} but no image files "
                     f"({', '.join(IMAGE_EXTENSIONS)})")
  return classes, splits


def _scan(paths: list[str]) -> tuple[bool, dict[str, tuple[int, int]]]:
  """Whether any image is colour, and each image's (height, width), from the headers only."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  colour, sizes = False, {}
  for path in paths:
    with Image.open(path) as image:
      colour |= image.mode not in _GRAY_MODES
      sizes[path] = (image.height, image.width)
  return colour, sizes


def load_folder(root: str, split: str, *, image_size: int | None = None,
                channels: int | None = None) -> ImageSet:
  """``split`` of the class-per-subfolder image folder ``root`` (contract in the docstring)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  check_split(split)
  classes, splits = _folder_splits(root)
  files = splits["train"] + splits["test"] if split == "all" else splits[split]
  if not files:
    raise ValueError(f"image folder {root!r} has no {split!r} images "
                     f"({len(splits['train'])} train, {len(splits['test'])} test)")
  all_paths = [p for part in splits.values() for p, _ in part]
  colour, sizes = _scan(all_paths)
  if image_size is None:
    first = all_paths[0]
    for path in all_paths:
      if sizes[path] != sizes[first]:
        raise ValueError(f"images in {root!r} differ in size: {path} is {sizes[path]} (height, "
                         f"width) but {first} is {sizes[first]}; pass image_size= to resize")
  if channels is None:
    channels = 3 if colour else 1
  decoded = []
  for path, _ in files:
    with Image.open(path) as image:
      pixels = np.asarray(image.convert("RGB" if channels == 3 else "L"), np.float32) / 255.0
    decoded.append(pixels.reshape(pixels.shape[:2] + (channels,)))
  images_NHWC = stack_images(decoded, [p for p, _ in files], image_size, channels)
  labels_N = np.array([label for _, label in files], np.int32)
  return ImageSet(images_NHWC, labels_N, len(classes), tuple(classes))


def _tfds_split(builder, split: str) -> str:
  known = set(builder.info.splits.keys())  # empty when not prepared (or mocked)
  test = "validation" if known and "test" not in known and "validation" in known else "test"
  return {"train": "train", "test": test, "all": f"train+{test}"}[split]


def dataset_to_image_set(dataset, class_names, *, image_size: int | None = None,
                         channels: int | None = None, name: str = "tfds") -> ImageSet:
  """Converts a tf.data.Dataset of (image uint8 [H, W, C], label) pairs to an ``ImageSet``."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  images, labels = [], []
  for image, label in tfds.as_numpy(dataset):
    images.append(np.asarray(image, np.float32) / 255.0)
    labels.append(int(label))
  if not images:
    raise ValueError(f"{name} has no examples")
  images_NHWC = stack_images(images, [f"{name}[{i}]" for i in range(len(images))], image_size,
                             channels)
  return ImageSet(images_NHWC, np.array(labels, np.int32), len(class_names), tuple(class_names))


def load_tfds(spec: str, split: str, *, image_size: int | None = None,
              channels: int | None = None) -> ImageSet:
  """``split`` of the prepared TFDS set ``spec`` = "NAME[@DATA_DIR]" (contract in the docstring)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  check_split(split)
  name, _, data_dir = spec.partition("@")
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None
  where = f"data_dir={data_dir!r}" if data_dir else "the default TFDS data_dir"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"tfds:{name}: TFDS has no data set named {name!r}") from e
  label = builder.info.features["label"] if "label" in builder.info.features else None
  if label is None or not hasattr(label, "names"):
    raise ValueError(f"tfds:{name} has no ClassLabel feature 'label'")
  tfds_split = _tfds_split(builder, split)
  try:
    dataset = tfds.load(name, split=tfds_split, as_supervised=True, download=False,
                        data_dir=data_dir)
  except AssertionError as e:  # how tfds says "not prepared" with download=False
    raise FileNotFoundError(
        f"tfds:{name} is not prepared in {where} (nothing is downloaded here). Prepare it where "
        f"there is internet with tfds.builder({name!r}).download_and_prepare() and pass "
        f"'tfds:{name}@DATA_DIR' or set $TFDS_DATA_DIR.") from e
  return dataset_to_image_set(dataset, label.names, image_size=image_size, channels=channels,
                              name=f"tfds:{name}[{tfds_split}]")
