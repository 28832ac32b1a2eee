"""Packing tokenized examples into fixed-length rows, and rows into model batches (numpy only).

Axis letters: R rows, T sequence length (seq_len), B batch rows.

Each example (its ids end with EOS) becomes one segment of a row; examples longer than T are cut
into consecutive chunks of at most T tokens, each its own segment. Rows are filled best-fit
decreasing, which wastes little space and is deterministic for a given input order. Inside a
segment the inputs are the targets shifted right with 0 first (seqio's decoder convention), and
positions restart at 0; attention must stay inside a segment (segment id 0 is padding).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class PackedRows:
  """Rows of packed segments.

  Attributes:
    tokens_RT: target ids (0 in padding).
    segment_ids_RT: 1, 2, ... per segment in a row, 0 in padding.
    positions_RT: position inside the segment.
  """
  tokens_RT: np.ndarray
  segment_ids_RT: np.ndarray
  positions_RT: np.ndarray

  @property
  def num_rows(self) -> int:
    return self.tokens_RT.shape[0]


def _chunks(offsets: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Start and length of every chunk of at most ``seq_len`` tokens."""
  starts, lengths = [], []
  for begin, end in zip(offsets[:-1], offsets[1:]):
    for s in range(int(begin), int(end), seq_len):
      starts.append(s)
      lengths.append(min(seq_len, int(end) - s))
  return np.array(starts, np.int64), np.array(lengths, np.int64)


def best_fit(lengths: np.ndarray, seq_len: int, order: np.ndarray) -> list[list[int]]:
  """Assigns items (all of length <= seq_len) to rows, best-fit, longest first.

  Args:
    lengths: length of every item.
    seq_len: row capacity.
    order: a permutation of the items; ties in length keep this order.

  Returns:
    The item indices of every row.
  """
  rows: list[list[int]] = []
  by_space: list[list[int]] = [[] for _ in range(seq_len + 1)]  # free space -> row ids
  for item in sorted(order.tolist(), key=lambda i: -int(lengths[i])):
    need = int(lengths[item])
    space = next((s for s in range(need, seq_len + 1) if by_space[s]), None)
    if space is None:
      rows.append([item])
      row, space = len(rows) - 1, seq_len
    else:
      row = by_space[space].pop()
      rows[row].append(item)
    by_space[space - need].append(row)
  return rows


def pack(tokens: np.ndarray, offsets: np.ndarray, seq_len: int,
         gen: np.random.Generator) -> PackedRows:
  """Packs the examples ``tokens[offsets[i]:offsets[i+1]]`` into rows of ``seq_len``."""
  starts, lengths = _chunks(offsets, seq_len)
  rows = best_fit(lengths, seq_len, gen.permutation(len(lengths)))
  tokens_RT = np.zeros((len(rows), seq_len), np.int32)
  segment_ids_RT = np.zeros_like(tokens_RT)
  positions_RT = np.zeros_like(tokens_RT)
  for r, items in enumerate(rows):
    col = 0
    for segment, item in enumerate(items, start=1):
      n = int(lengths[item])
      tokens_RT[r, col:col + n] = tokens[starts[item]:starts[item] + n]
      segment_ids_RT[r, col:col + n] = segment
      positions_RT[r, col:col + n] = np.arange(n)
      col += n
  return PackedRows(tokens_RT, segment_ids_RT, positions_RT)


def to_batch(tokens_BT: np.ndarray, segment_ids_BT: np.ndarray,
             positions_BT: np.ndarray) -> dict[str, np.ndarray]:
  """The batch dict of sources.BATCH_KEYS from packed target rows."""
  shifted_BT = np.zeros_like(tokens_BT)
  shifted_BT[:, 1:] = tokens_BT[:, :-1]
  return {
      "inputs": np.where(positions_BT > 0, shifted_BT, 0).astype(np.int32),
      "targets": tokens_BT.astype(np.int32),
      "loss_mask": (segment_ids_BT > 0).astype(np.float32),
      "segment_ids": segment_ids_BT.astype(np.int32),
      "positions": positions_BT.astype(np.int32),
  }
