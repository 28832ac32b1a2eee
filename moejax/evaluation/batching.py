"""Token ids of evaluation items, and fixed-shape batches of them (numpy only).

The suites' conventions (data/README.md): the model reads ``[PAD] + encode(prompt)`` (0 is also
the "beginning" token of every training segment) and should continue with the answer tokens
``encode(prompt + target)[len(encode(prompt)):]`` followed by EOS.

Jitted functions see a few shapes only: rows are sorted by length and cut into batches of
exactly ``batch_size`` rows (the last one filled with dummy rows, also when there are fewer
rows than that), and each batch is padded to a length bucket (a power of two), so a whole
evaluation compiles a handful of programs.

Axes: B batch, P padded prompt length, T padded sequence length.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from moejax.data import records
from moejax.data import tokenizer as tokenizer_lib


@dataclasses.dataclass(frozen=True)
class ItemTokens:
  """Token ids of one evaluation item.

  Attributes:
    prompt: ``[PAD] + encode(prompt)``, what the model reads before answering.
    answer: the reference continuation's ids, ending with EOS.
  """
  prompt: tuple[int, ...]
  answer: tuple[int, ...]


def tokenize_items(tokenizer: tokenizer_lib.Tokenizer,
                   items: Sequence[records.Example]) -> list[ItemTokens]:
  """Prompt and reference-answer ids of ``items``."""
  out = []
  for item in items:
    prompt = tokenizer.encode(item.prompt)
    full = tokenizer.encode(item.prompt + item.target)
    if full[:len(prompt)] != prompt:
      raise ValueError(f"The prompt tokens of {item.uid} do not prefix its full text")
    out.append(ItemTokens(prompt=(tokenizer_lib.PAD_ID, *prompt),
                          answer=(*full[len(prompt):], tokenizer_lib.EOS_ID)))
  return out


def bucket_length(length: int, minimum: int = 16) -> int:
  """The smallest power of two >= ``length`` and >= ``minimum``."""
  return max(minimum, 1 << max(length - 1, 0).bit_length())


def length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
  """Indices of the rows of each batch, longest rows first (similar lengths together)."""
  order = np.argsort(-np.asarray(lengths), kind="stable")
  for begin in range(0, len(order), batch_size):
    yield order[begin:begin + batch_size]


def left_pad(seqs: Sequence[Sequence[int]], rows: int, length: int):
  """Right-aligns ``seqs`` in ``[rows, length]`` zeros; dummy rows hold one PAD token.

  Returns:
    (ids_BP int32, start_B int32: the index of each row's first real token).
  """
  ids_BP = np.full((rows, length), tokenizer_lib.PAD_ID, np.int32)
  start_B = np.full((rows,), length - 1, np.int32)
  for b, seq in enumerate(seqs):
    ids_BP[b, length - len(seq):] = seq
    start_B[b] = length - len(seq)
  return ids_BP, start_B


def right_pad(seqs: Sequence[Sequence[int]], rows: int, length: int):
  """Left-aligns ``seqs`` in ``[rows, length]`` zeros; returns (ids_BT, real_BT int32)."""
  ids_BT = np.full((rows, length), tokenizer_lib.PAD_ID, np.int32)
  real_BT = np.zeros((rows, length), np.int32)
  for b, seq in enumerate(seqs):
    ids_BT[b, :len(seq)] = seq
    real_BT[b, :len(seq)] = 1
  return ids_BT, real_BT
