"""The grouped matmul kernels for GPU (Triton through ``jax.experimental.pallas.triton``).

Triton has no scalar prefetch, so the schedule (kernels_pallas/schedule.py) is a plain input
and every program reads its own entry, then loads its tiles by pointer offsets from whole-array
refs (the arrays arrive padded to whole tiles, kernels_pallas/tiling.py, so no load needs a
bounds mask). Programs run concurrently and in any order, so where TPU relies on an output
block staying in VMEM across a tile's steps, here each program stores only the rows it owns
with a masked store (``plgpu.store(..., mask=)``):

  gmm   grid (steps, n tiles); the program of step I loops over k computing x[tile] @ w[group]
        in float32 and stores the rows of its group; a tile's FIRST step also stores zeros in
        the rows no local group owns (rows past the groups, rows of other devices' groups).
        Each output row is written by exactly one program.
  tgmm  grid (local groups, k tiles, n tiles); a program loops over its group's row tiles,
        accumulating x^T @ dy with the rows outside the group masked to zero, and stores its
        [tk, tn] block once (an empty group stores zeros).

The layout follows MegaBlocks' grouped GEMM (Gale et al. 2023) in spirit: one program per
(row tile, group) pair, no padding of groups to a capacity. Axes: M rows, K/N features,
G local groups, I schedule steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels_pallas.schedule import ACTIVE, FIRST, Schedule
from kernels_pallas.shard import out_struct

_NT = (((1,), (0,)), ((), ()))
_NN_T = (((1,), (1,)), ((), ()))
_TN = (((0,), (0,)), ((), ()))


def compiler_params(num_warps: int = 4, num_stages: int = 3):
  """Triton compiler parameters (passing them makes pallas_call pick Triton, not Mosaic GPU)."""
  return plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def _default_params(tiling):
  tm, _, tn = tiling
  return compiler_params(num_warps=8 if tm * tn >= 128 * 128 else 4, num_stages=3)


def gmm(x_MK, w_GKN, schedule: Schedule, *, local_rows, tiling, out_dtype,
        transpose_rhs: bool = False, interpret: bool = False, params=None):
  """y[M, N] with y[rows of group g] = x[rows] @ w[g] (w[g]^T with ``transpose_rhs``);
  ``local_rows`` [2] int32: the rows [start, end) of all local groups together."""
  tm, tk, tn = tiling
  m, k = x_MK.shape
  n = w_GKN.shape[1] if transpose_rhs else w_GKN.shape[2]
  compute_dtype = x_MK.dtype

  def kernel(tile_ref, group_ref, start_ref, end_ref, flags_ref, local_ref, x_ref, w_ref,
             y_ref):
    step, n_i = pl.program_id(0), pl.program_id(1)
    flags, tile, group = flags_ref[step], tile_ref[step], group_ref[step]
    active, first = (flags & ACTIVE) != 0, (flags & FIRST) != 0
    row0 = pl.multiple_of(tile * tm, tm)
    col0 = pl.multiple_of(n_i * tn, tn)

    def body(k_i, acc):
      k0 = pl.multiple_of(k_i * tk, tk)
      x = x_ref[pl.ds(row0, tm), pl.ds(k0, tk)].astype(compute_dtype)
      if transpose_rhs:
        w = w_ref[group, pl.ds(col0, tn), pl.ds(k0, tk)].astype(compute_dtype)
      else:
        w = w_ref[group, pl.ds(k0, tk), pl.ds(col0, tn)].astype(compute_dtype)
      return acc + jax.lax.dot_general(x, w, _NN_T if transpose_rhs else _NT,
                                       preferred_element_type=jnp.float32)

    @pl.when(active | first)
    def _run():
      # An inactive FIRST step (a tile without local groups) runs no k loop.
      trips = jnp.where(active, k // tk, 0)
      acc = jax.lax.fori_loop(0, trips, body, jnp.zeros((tm, tn), jnp.float32))
      rows = row0 + jax.lax.broadcasted_iota(jnp.int32, (tm, tn), 0)
      mine = (rows >= start_ref[step]) & (rows < end_ref[step])
      unowned = (rows < local_ref[0]) | (rows >= local_ref[1])
      plgpu.store(y_ref.at[pl.ds(row0, tm), pl.ds(col0, tn)],
                  jnp.where(mine, acc, 0.0).astype(y_ref.dtype),
                  mask=mine | (first & unowned))

  return pl.pallas_call(
      kernel,
      out_shape=out_struct((m, n), out_dtype, like=x_MK),
      grid=(schedule.num_steps, n // tn),
      compiler_params=params or _default_params(tiling),
      interpret=interpret,
      name="moejax_gmm_gpu",
  )(*schedule, local_rows, x_MK, w_GKN)


def tgmm(x_MK, dy_MN, *, num_groups: int, local_bounds, tiling, out_dtype,
         interpret: bool = False, params=None):
  """dw[G, K, N] with dw[g] = x[rows of g]^T @ dy[rows of g]; ``local_bounds``: (start_G,
  end_G) int32 rows of each local group. No schedule: a program walks its group's tiles."""
  tm, tk, tn = tiling
  m, k = x_MK.shape
  n = dy_MN.shape[1]
  compute_dtype = x_MK.dtype
  start_G, end_G = local_bounds

  def kernel(start_ref, end_ref, x_ref, dy_ref, dw_ref):
    g, k_i, n_i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    start, end = start_ref[g], end_ref[g]
    k0 = pl.multiple_of(k_i * tk, tk)
    n0 = pl.multiple_of(n_i * tn, tn)
    first_tile = start // tm
    last_tile = jnp.where(end > start, (end - 1) // tm + 1, first_tile)

    def body(t, acc):
      row0 = pl.multiple_of(t * tm, tm)
      rows = row0 + jax.lax.broadcasted_iota(jnp.int32, (tm, tk), 0)
      mine = (rows >= start) & (rows < end)
      x = x_ref[pl.ds(row0, tm), pl.ds(k0, tk)]
      x = jnp.where(mine, x, jnp.zeros_like(x)).astype(compute_dtype)
      dy = dy_ref[pl.ds(row0, tm), pl.ds(n0, tn)].astype(compute_dtype)
      return acc + jax.lax.dot_general(x, dy, _TN, preferred_element_type=jnp.float32)

    acc = jax.lax.fori_loop(first_tile, last_tile, body, jnp.zeros((tk, tn), jnp.float32))
    dw_ref[g, pl.ds(k0, tk), pl.ds(n0, tn)] = acc.astype(dw_ref.dtype)

  return pl.pallas_call(
      kernel,
      out_shape=out_struct((num_groups, k, n), out_dtype, like=x_MK),
      grid=(num_groups, k // tk, n // tn),
      compiler_params=params or _default_params(tiling),
      interpret=interpret,
      name="moejax_tgmm_gpu",
  )(start_G, end_G, x_MK, dy_MN)
