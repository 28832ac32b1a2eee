"""Packing and the (seed, step)-addressed mixture stream, on hand-made token data (numpy only)."""

import numpy as np
import pytest

from moejax.data import packing
from moejax.data import presets
from moejax.data import stream

T = 16


def _examples(lengths, base):
  """Examples whose tokens name them: example i holds base + 100 * i + j, j = 0.."""
  tokens = np.concatenate([base + 100 * i + np.arange(n) for i, n in enumerate(lengths)])
  return tokens.astype(np.int32), np.concatenate([[0], np.cumsum(lengths)])


def _segments(rows):
  out = []
  for r in range(rows.num_rows):
    seg = rows.segment_ids_RT[r]
    for s in np.unique(seg[seg > 0]):
      mask = seg == s
      assert np.all(np.diff(np.flatnonzero(mask)) == 1)  # contiguous
      np.testing.assert_array_equal(rows.positions_RT[r][mask], np.arange(mask.sum()))
      out.append(rows.tokens_RT[r][mask])
  return out


def test_pack_keeps_every_token_once_and_splits_long_examples():
  lengths = np.random.default_rng(0).integers(1, 2 * T, size=200)
  tokens, offsets = _examples(lengths, base=1000)
  rows = packing.pack(tokens, offsets, T, np.random.default_rng(1))
  segments = _segments(rows)
  np.testing.assert_array_equal(np.sort(np.concatenate(segments)), np.sort(tokens))
  for seg in segments:  # a segment is a run of consecutive tokens of one example
    assert len(seg) <= T and np.all(np.diff(seg) == 1)
  assert len(segments) == sum(-(-n // T) for n in lengths)
  assert rows.num_rows <= 1.2 * tokens.size / T + 1  # best fit wastes little


def test_to_batch_shifts_inside_segments():
  rows = packing.pack(*_examples([3, 2], base=10), 8, np.random.default_rng(0))
  batch = packing.to_batch(rows.tokens_RT, rows.segment_ids_RT, rows.positions_RT)
  np.testing.assert_array_equal(batch["targets"], [[10, 11, 12, 110, 111, 0, 0, 0]])
  np.testing.assert_array_equal(batch["inputs"], [[0, 10, 11, 0, 110, 0, 0, 0]])
  np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 2, 2, 0, 0, 0]])
  np.testing.assert_array_equal(batch["positions"], [[0, 1, 2, 0, 1, 0, 0, 0]])
  np.testing.assert_array_equal(batch["loss_mask"], [[1, 1, 1, 1, 1, 0, 0, 0]])
  assert batch["loss_mask"].dtype == np.float32 and batch["inputs"].dtype == np.int32


def _stream(seed=0, weights=None, batch_size=8):
  rng = np.random.default_rng(5)
  tasks = {"memorization": packing.pack(*_examples(rng.integers(1, T, 300), 1000), T, rng),
           "reasoning": packing.pack(*_examples(rng.integers(1, T, 90), 100000), T, rng)}
  weights = weights or {"memorization": 0.75, "reasoning": 0.25}
  return stream.MixtureStream(tasks, weights, batch_size, seed)


def _equal(a, b):
  return all(np.array_equal(a[k], b[k]) for k in a)


def test_batches_are_pure_functions_of_seed_and_step():
  run = _stream()
  straight = [run.batch(s) for s in range(12)]
  resumed = _stream()
  for s in (7, 3, 11, 0, 7):  # any order, any restart point
    assert _equal(resumed.batch(s), straight[s])
  assert not _equal(_stream(seed=1).batch(3), straight[3])
  assert not _equal(straight[2], straight[3])
  assert set(straight[0]) == {"inputs", "targets", "loss_mask", "segment_ids", "positions"}


def test_mixture_proportions_and_epochs():
  run = _stream(batch_size=64)
  tasks = np.concatenate([run.row_sources(s)[0] for s in range(stream.PATTERN_PERIOD // 64)])
  assert np.bincount(tasks).tolist() == [3072, 1024]  # exact over one period
  # Each task walks through all its rows once per epoch.
  picked = {0: [], 1: []}
  for s in range(40):
    task, rows = run.row_sources(s)
    for t, r in zip(task, rows):
      picked[int(t)].append(int(r))
  for t, rows in picked.items():
    n = run.tasks[t].num_rows
    assert sorted(rows[:n]) == list(range(n))
    assert sorted(rows[n:2 * n]) == list(range(n))


def test_single_suite_mixture_and_parsing():
  run = _stream(weights={"reasoning": 1.0})
  assert np.all(run.batch(4)["targets"][run.batch(4)["targets"] > 0] >= 100000)
  tiny = presets.get_preset("tiny")
  assert stream.parse_mixture("", tiny) == {"memorization": 0.5, "reasoning": 0.5}
  assert stream.parse_mixture("reasoning", tiny) == {"reasoning": 1.0}
  assert stream.parse_mixture("memorization=3, filler=1", tiny) == {"memorization": 3.0,
                                                                      "filler": 1.0}
  with pytest.raises(ValueError, match="mixture"):
    stream.parse_mixture("wikipedia=1", tiny)


def test_rare_task_still_appears():
  run = _stream(weights={"memorization": 1.0, "reasoning": 1e-6}, batch_size=64)
  tasks = np.concatenate([run.row_sources(s)[0] for s in range(stream.PATTERN_PERIOD // 64)])
  assert np.bincount(tasks).tolist() == [stream.PATTERN_PERIOD - 1, 1]
