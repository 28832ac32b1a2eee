"""Tile sizes (tm, tk, tn) of the grouped matmul kernels: the per-shape choice and its rules.

A kernel step multiplies a [tm, tk] tile of rows by a [tk, tn] tile of one group's weights and
accumulates a [tm, tn] float32 tile. The arrays are zero-padded up to whole tiles
(``padded_dims``), so any tiling that obeys the target's rules is valid for any shape:

  tpu  (Mosaic) the last two dims of every block are divisible by (sublane, 128) or equal to
       the (padded) array dims: tm a multiple of 8 (float32) or 16 (bfloat16), tk and tn
       multiples of 128. A tile at least as large as its dim covers the whole (padded) dim,
       which is always allowed: small or unaligned dims become one full-width block.
  gpu  (Triton) every block dim is a power of two of at least 16 (``tl.dot``'s minimum).

The choice: tk and tn as large as 512 (tpu) / 64 and 128 (gpu) where the dim allows, the
largest such tile that divides the dim (no padding where the dim is aligned), and tm from the
mean rows per group: a group boundary inside a row tile costs one extra tile visit (the
MegaBlocks block-sparse argument, Gale et al. 2023), so tm shrinks towards 128 (tpu) / 64 (gpu)
as groups get small and grows to 512 / 128 for large groups. Not autotuned: tile sizes can be
overridden per call (``tiling=`` of kernels_pallas.grouped_matmul).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

TARGETS = ("tpu", "gpu")
LANE = 128                          # TPU lane width: the last block dim
_TPU_MAX = {"m": 512, "k": 512, "n": 512}
_TPU_MIN_M = 128
_GPU_MAX = {"m": 128, "k": 64, "n": 128}
_GPU_MIN_M = 64
_GPU_MIN = 16                       # tl.dot needs every dim >= 16


def sublane(dtype) -> int:
  """The TPU second-to-last block multiple: 8 rows of 32-bit values, 16 of 16-bit ones."""
  return 8 * max(1, 4 // np.dtype(dtype).itemsize)


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _pow2_ceil(x: int) -> int:
  return 1 << max(0, int(x) - 1).bit_length()


def _pow2_floor(x: int) -> int:
  return 1 << (max(1, int(x)).bit_length() - 1)


def _tpu_feature_tile(dim: int, largest: int) -> int:
  """The full dim where it fits in one tile, else the largest multiple of 128 up to
  ``largest`` that divides the dim rounded up to 128 (so at most 127 padded columns)."""
  if dim <= largest:
    return dim
  padded = _round_up(dim, LANE)
  for tile in range(largest - largest % LANE, 0, -LANE):
    if padded % tile == 0:
      return tile
  return LANE


def choose_tiling(m: int, k: int, n: int, num_groups: int, dtype,
                  target: str = "tpu") -> tuple[int, int, int]:
  """(tm, tk, tn) for rows [m, k] times weights [num_groups, k, n] on ``target``."""
  if target not in TARGETS:
    raise ValueError(f"target={target!r} is not one of {TARGETS}")
  for name, dim in (("m", m), ("k", k), ("n", n), ("num_groups", num_groups)):
    if dim < 1:
      raise ValueError(f"choose_tiling: {name}={dim} must be >= 1")
  rows_per_group = max(1, m // num_groups)
  if target == "tpu":
    sub = sublane(dtype)
    tm = min(_TPU_MAX["m"], max(_TPU_MIN_M, _pow2_floor(rows_per_group)))
    tm = min(tm, _round_up(m, sub))
    return tm, _tpu_feature_tile(k, _TPU_MAX["k"]), _tpu_feature_tile(n, _TPU_MAX["n"])
  tm = min(_GPU_MAX["m"], max(_GPU_MIN_M, _pow2_floor(rows_per_group)))
  tm = max(_GPU_MIN, min(tm, _pow2_ceil(m)))
  tk = max(_GPU_MIN, min(_GPU_MAX["k"], _pow2_ceil(k)))
  tn = max(_GPU_MIN, min(_GPU_MAX["n"], _pow2_ceil(n)))
  return tm, tk, tn


def check_tiling(tiling: Sequence[int], m: int, k: int, n: int, dtype, target: str,
                 name: str = "tiling") -> tuple[int, int, int]:
  """The tiling as a tuple of ints, or a ValueError naming ``name`` and the broken rule."""
  if len(tiling) != 3:
    raise ValueError(f"{name}={tiling!r} must be (tm, tk, tn)")
  tm, tk, tn = (int(t) for t in tiling)
  for label, tile in (("tm", tm), ("tk", tk), ("tn", tn)):
    if tile < 1:
      raise ValueError(f"{name}: {label}={tile} must be >= 1")
  if target == "tpu":
    sub = sublane(dtype)
    rules = (("tm", tm, m, sub), ("tk", tk, k, LANE), ("tn", tn, n, LANE))
    for label, tile, dim, multiple in rules:
      if tile % multiple and tile < dim:
        raise ValueError(
            f"{name}: {label}={tile} must be a multiple of {multiple} for {np.dtype(dtype).name} "
            f"on TPU (or cover the whole dim {dim})")
  elif target == "gpu":
    for label, tile in (("tm", tm), ("tk", tk), ("tn", tn)):
      if tile < _GPU_MIN or tile & (tile - 1):
        raise ValueError(f"{name}: {label}={tile} must be a power of two >= {_GPU_MIN} on GPU "
                         "(Triton blocks)")
  else:
    raise ValueError(f"target={target!r} is not one of {TARGETS}")
  return tm, tk, tn


def padded_dims(m: int, k: int, n: int, tiling: Sequence[int]) -> tuple[int, int, int]:
  """(m, k, n) rounded up to whole tiles: the shapes the kernels run on."""
  tm, tk, tn = tiling
  return _round_up(m, tm), _round_up(k, tk), _round_up(n, tn)


def resolve_tiling(tiling: Optional[Sequence[int]], m: int, k: int, n: int, num_groups: int,
                   dtype, target: str) -> tuple[int, int, int]:
  """The given tiling (checked) or the chosen one."""
  if tiling is None:
    return choose_tiling(m, k, n, num_groups, dtype, target)
  return check_tiling(tiling, m, k, n, dtype, target)
