"""ImageSource: (seed, step) determinism, epochs, task rows, evaluation padding and coverage."""

import numpy as np
import pytest

from moejax.data import images
from moejax.data.image_source import IMAGE_BATCH_KEYS, ImageSource, channel_stats


def _tagged_set(n=10, num_classes=10, class_names=images.DIGIT_CLASSES):
  """n 2x2x1 images whose pixels hold their index (to identify rows), labels index % 10."""
  images_NHWC = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None],
                                (n, 2, 2, 1)).copy()
  return images.ImageSet(images_NHWC, (np.arange(n) % 10).astype(np.int32), num_classes,
                         class_names)


def _ids(batch):  # image index of each row
  return batch["images"][:, 0, 0, 0].astype(int)


def test_batch_layout_dtypes_and_shapes():
  digits = images.load_digits("test")
  source = ImageSource(digits, batch_size=16, seed=0, tasks=("class", "parity"))
  batch = source.batch(3)
  assert tuple(batch) == IMAGE_BATCH_KEYS
  assert batch["images"].shape == (16, 8, 8, 1) and batch["images"].dtype == np.float32
  for key, dtype in (("labels", np.int32), ("task_ids", np.int32), ("weights", np.float32)):
    assert batch[key].shape == (16,) and batch[key].dtype == dtype, key
  np.testing.assert_array_equal(batch["weights"], 1.0)
  assert source.num_classes_per_task == (10, 2)
  assert source.class_names_per_task == (images.DIGIT_CLASSES, ("even", "odd"))
  assert source.num_batches == 19  # ceil(297 / 16)
  evaluation = ImageSource(digits, batch_size=16, seed=0, tasks=("class", "parity"), shuffle=False)
  assert evaluation.num_batches == 38  # ceil(2 * 297 / 16)
  assert tuple(evaluation.batch(37)) == IMAGE_BATCH_KEYS


def test_same_seed_and_step_give_identical_batches_other_seeds_differ():
  digits = images.load_digits("test")
  a = ImageSource(digits, batch_size=32, seed=5).batch(7)
  fresh = ImageSource(digits, batch_size=32, seed=5)
  fresh.batch(0)
  fresh.batch(40)  # other epochs in the cache do not change step 7
  b = fresh.batch(7)
  for key in IMAGE_BATCH_KEYS:
    np.testing.assert_array_equal(a[key], b[key])
  c = ImageSource(digits, batch_size=32, seed=6).batch(7)
  assert not np.array_equal(a["images"], c["images"])
  next_step = ImageSource(digits, batch_size=32, seed=5).batch(8)
  assert not np.array_equal(a["images"], next_step["images"])


def test_every_image_once_per_epoch():
  source = ImageSource(_tagged_set(n=24), batch_size=6, seed=1)
  assert source.num_batches == 4
  epochs = [np.concatenate([_ids(source.batch(e * 4 + s)) for s in range(4)]) for e in range(2)]
  for order in epochs:
    assert sorted(order.tolist()) == list(range(24))
  assert epochs[0].tolist() != epochs[1].tolist() and epochs[0].tolist() != list(range(24))


def test_batches_cross_epoch_boundaries():
  n, b, seed = 10, 4, 3
  source = ImageSource(_tagged_set(n=n), batch_size=b, seed=seed)
  stream = np.concatenate([_ids(source.batch(s)) for s in range(8)])  # 32 rows: epochs 0..3
  expected = np.concatenate([np.random.default_rng([seed, e]).permutation(n) for e in range(4)])
  np.testing.assert_array_equal(stream, expected[:32])
  big = ImageSource(_tagged_set(n=n), batch_size=25, seed=seed).batch(1)  # rows 25..49
  np.testing.assert_array_equal(_ids(big), np.concatenate([expected, np.random.default_rng(
      [seed, 4]).permutation(n)])[25:50])


def test_permutation_cache_stays_bounded_in_any_step_order():
  source = ImageSource(_tagged_set(n=10), batch_size=4, seed=0)
  reference = [_ids(source.batch(s)) for s in range(60)]
  for step in (59, 0, 30, 31, 2, 59, 1):
    np.testing.assert_array_equal(_ids(source.batch(step)), reference[step])
    assert len(source._perms) <= 3  # pylint: disable=protected-access


def test_two_tasks_alternate_with_their_labels():
  digits = images.load_digits("train")
  source = ImageSource(digits, batch_size=7, seed=0, tasks=("class", "parity"))
  lookup = {images_HW.tobytes(): label for images_HW, label in
            zip(digits.images_NHWC, digits.labels_N)}
  for step in (0, 1, 5):
    batch = source.batch(step)
    positions = step * 7 + np.arange(7)
    np.testing.assert_array_equal(batch["task_ids"], positions % 2)
    classes = np.array([lookup[image.tobytes()] for image in batch["images"]])
    np.testing.assert_array_equal(batch["labels"],
                                  np.where(batch["task_ids"] == 0, classes, classes % 2))


def test_eval_is_ordered_and_pads_by_wrapping():
  data = _tagged_set(n=10)
  source = ImageSource(data, batch_size=4, seed=0, shuffle=False)
  assert source.num_batches == 3
  np.testing.assert_array_equal(_ids(source.batch(0)), [0, 1, 2, 3])
  last = source.batch(2)
  np.testing.assert_array_equal(_ids(last), [8, 9, 0, 1])
  np.testing.assert_array_equal(last["weights"], [1, 1, 0, 0])
  np.testing.assert_array_equal(source.batch(1)["weights"], 1.0)
  with pytest.raises(ValueError, match="past the evaluation set"):
    source.batch(3)


def test_eval_covers_each_task_image_pair_once_task_major():
  data = _tagged_set(n=11)
  source = ImageSource(data, batch_size=4, seed=0, tasks=("class", "parity"), shuffle=False)
  batches = [source.batch(s) for s in range(source.num_batches)]
  real = [np.concatenate([b[k][b["weights"] == 1] for b in batches])
          for k in ("task_ids", "labels")]
  ids = np.concatenate([_ids(b)[b["weights"] == 1] for b in batches])
  assert sum(int(b["weights"].sum()) for b in batches) == 22 and len(batches) == 6
  np.testing.assert_array_equal(real[0], [0] * 11 + [1] * 11)  # task-major
  np.testing.assert_array_equal(ids, np.tile(np.arange(11), 2))
  np.testing.assert_array_equal(real[1], np.concatenate([np.arange(11) % 10,
                                                         (np.arange(11) % 10) % 2]))


def test_normalize_uses_the_given_statistics():
  rng = np.random.default_rng(0)
  train = images.ImageSet(rng.uniform(size=(50, 3, 3, 3)).astype(np.float32),
                          np.zeros(50, np.int32), 10, images.DIGIT_CLASSES)
  test = images.ImageSet(rng.uniform(0.5, 1.0, size=(8, 3, 3, 3)).astype(np.float32),
                         np.zeros(8, np.int32), 10, images.DIGIT_CLASSES)
  mean_C, std_C = channel_stats(train)
  np.testing.assert_allclose(mean_C, train.images_NHWC.mean(axis=(0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(std_C, train.images_NHWC.std(axis=(0, 1, 2)), rtol=1e-4)
  whole = ImageSource(train, batch_size=50, seed=0, shuffle=False, normalize=(mean_C, std_C))
  normalized = whole.batch(0)["images"]
  assert normalized.dtype == np.float32
  np.testing.assert_allclose(normalized.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(normalized.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
  test_batch = ImageSource(test, batch_size=8, seed=0, shuffle=False,
                           normalize=(mean_C, std_C)).batch(0)["images"]
  np.testing.assert_allclose(test_batch, (test.images_NHWC - mean_C) / std_C, atol=1e-5)
  with pytest.raises(ValueError, match="normalize"):
    ImageSource(train, batch_size=8, seed=0, normalize=(mean_C[:1], std_C[:1]))


def test_bad_arguments_are_named():
  data = _tagged_set()
  for kwargs, match in (({"batch_size": 0}, "batch_size"), ({"seed": -1}, "seed"),
                        ({"tasks": "class"}, "tasks"), ({"tasks": ("nope",)}, "known tasks")):
    with pytest.raises(ValueError, match=match):
      ImageSource(data, **{"batch_size": 4, "seed": 0, **kwargs})
  with pytest.raises(ValueError, match="step"):
    ImageSource(data, batch_size=4, seed=0).batch(-1)
