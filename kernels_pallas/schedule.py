"""Work lists of the grouped matmul kernels: which row tile and which group each grid step takes.

Rows are sorted by group, so a row tile of tm rows meets a contiguous run of groups. A kernel
grid of static length ``tiles + groups - 1`` covers every (row tile, group) pair that meets,
because each group boundary inside a tile adds exactly one visit (the counting argument of
MegaBlocks, Gale et al. 2023, and of the megablox TPU kernels that ship with JAX). Both
schedules below are computed on device from ``group_sizes`` (they are data dependent) and are
handed to the kernels as int32 vectors: scalar-prefetched into SMEM on TPU, plain inputs on GPU.

``row_schedule`` (gmm: one output row tile per step, groups of a tile in consecutive steps):
  tile_I, group_I   the row tile and the local group (0 .. G_local-1) of step I;
  start_I, end_I    the rows [start, end) of that group (empty where the step has no group);
  flags_I           FIRST (the tile's first step: it zero-fills the rows no local group owns),
                    ACTIVE (the step has a group: it computes).
Tiles that no local group meets get one step with FIRST set and no group: their rows are zeros.
Steps past the work (the list has a static length) repeat the last tile and group with no flag,
so a TPU pipeline neither fetches nor writes back anything new for them.

``group_schedule`` (tgmm: one output group per run of steps over its row tiles):
  tile_I, group_I, start_I, end_I as above; flags_I has FIRST (zero the accumulator), LAST
  (write the group's [tk, tn] block) and ACTIVE (the group has rows: compute). Every local
  group gets at least one step, so empty groups are written as zeros.

Only groups ``group_offset .. group_offset + G_local - 1`` are scheduled (expert parallelism:
the device holds those experts); rows of other groups, and rows past ``sum(group_sizes)``, are
never computed and come out as zeros. Axes: G all groups, L local groups, T row tiles, I steps.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

FIRST, ACTIVE, LAST = 1, 2, 4


class Schedule(NamedTuple):
  tile_I: jax.Array
  group_I: jax.Array
  start_I: jax.Array
  end_I: jax.Array
  flags_I: jax.Array

  @property
  def num_steps(self) -> int:
    return self.tile_I.shape[0]


def num_steps(rows: int, tm: int, num_local: int) -> int:
  """The static schedule length for ``rows`` (a multiple of tm) and ``num_local`` groups."""
  return rows // tm + num_local - 1


def local_bounds(group_sizes_G, group_offset, num_local: int, num_rows: int):
  """(start_L, end_L): the rows of each local group, clipped to ``num_rows``."""
  sizes_G = jnp.maximum(group_sizes_G.astype(jnp.int32), 0)
  end_G = jnp.cumsum(sizes_G)
  start_G = end_G - sizes_G
  offset = jnp.asarray(group_offset, jnp.int32).reshape(())
  start_L = jax.lax.dynamic_slice(start_G, (offset,), (num_local,))
  end_L = jax.lax.dynamic_slice(end_G, (offset,), (num_local,))
  return jnp.minimum(start_L, num_rows), jnp.minimum(end_L, num_rows)


def _tile_span(start_L, end_L, tm: int):
  """(nonempty_L, first_tile_L, last_tile_L) of each local group's rows."""
  nonempty_L = end_L > start_L
  return nonempty_L, start_L // tm, jnp.maximum(end_L - 1, 0) // tm


def row_schedule(group_sizes_G, group_offset, *, num_local: int, num_rows: int, rows: int,
                 tm: int) -> Schedule:
  """The gmm work list over ``rows`` (padded, a multiple of tm) of which ``num_rows`` are real."""
  tiles = rows // tm
  steps = num_steps(rows, tm, num_local)
  start_L, end_L = local_bounds(group_sizes_G, group_offset, num_local, num_rows)
  nonempty_L, first_L, last_L = _tile_span(start_L, end_L, tm)
  bin_first_L = jnp.where(nonempty_L, first_L, tiles)        # bin ``tiles``: not counted
  bin_after_L = jnp.where(nonempty_L, last_L + 1, tiles)
  began_T = jnp.zeros(tiles + 1, jnp.int32).at[bin_first_L].add(1)
  ended_T = jnp.zeros(tiles + 1, jnp.int32).at[bin_after_L].add(1)
  groups_before_T = jnp.cumsum(ended_T)[:tiles]               # nonempty groups done before t
  meeting_T = jnp.cumsum(began_T)[:tiles] - groups_before_T   # nonempty groups meeting t
  visits_T = jnp.maximum(meeting_T, 1)
  step_I = jnp.arange(steps, dtype=jnp.int32)
  tile_I = jnp.repeat(jnp.arange(tiles, dtype=jnp.int32), visits_T, total_repeat_length=steps)
  j_I = step_I - (jnp.cumsum(visits_T) - visits_T)[tile_I]    # visit number within the tile
  valid_I = step_I < jnp.sum(visits_T)
  active_I = valid_I & (j_I < meeting_T[tile_I])
  # The r-th nonempty local group, r = groups done before the tile + visit number.
  rank_I = groups_before_T[tile_I] + j_I
  nonempty_rank_L = jnp.cumsum(nonempty_L.astype(jnp.int32))
  group_I = jnp.searchsorted(nonempty_rank_L, rank_I, side="right").astype(jnp.int32)
  group_I = jnp.minimum(group_I, num_local - 1)
  # Groups never decrease along the list: a running max carries the last group into steps
  # without one (no new weight block to fetch there).
  group_I = jax.lax.cummax(jnp.where(active_I, group_I, 0), axis=0)
  start_I = jnp.where(active_I, start_L[group_I], 0)
  end_I = jnp.where(active_I, end_L[group_I], 0)
  flags_I = (jnp.where(valid_I & (j_I == 0), FIRST, 0) | jnp.where(active_I, ACTIVE, 0))
  return Schedule(tile_I, group_I, start_I, end_I, flags_I.astype(jnp.int32))


def group_schedule(group_sizes_G, group_offset, *, num_local: int, num_rows: int, rows: int,
                   tm: int) -> Schedule:
  """The tgmm work list: each local group's row tiles in order, one step for an empty group."""
  steps = num_steps(rows, tm, num_local)
  start_L, end_L = local_bounds(group_sizes_G, group_offset, num_local, num_rows)
  nonempty_L, first_L, last_L = _tile_span(start_L, end_L, tm)
  visits_L = jnp.where(nonempty_L, last_L - first_L + 1, 1)
  step_I = jnp.arange(steps, dtype=jnp.int32)
  group_I = jnp.repeat(jnp.arange(num_local, dtype=jnp.int32), visits_L,
                       total_repeat_length=steps)
  j_I = step_I - (jnp.cumsum(visits_L) - visits_L)[group_I]
  valid_I = step_I < jnp.sum(visits_L)
  active_I = valid_I & nonempty_L[group_I]
  # Row tiles never decrease along the list either: empty groups and the steps past the work
  # keep the previous tile (no new row block to fetch).
  tile_I = jax.lax.cummax(jnp.where(active_I, first_L[group_I] + j_I, 0), axis=0)
  start_I = jnp.where(active_I, start_L[group_I], 0)
  end_I = jnp.where(active_I, end_L[group_I], 0)
  flags_I = (jnp.where(valid_I & (j_I == 0), FIRST, 0)
             | jnp.where(valid_I & (j_I == visits_L[group_I] - 1), LAST, 0)
             | jnp.where(active_I, ACTIVE, 0))
  return Schedule(tile_I, group_I, start_I, end_I, flags_I.astype(jnp.int32))
