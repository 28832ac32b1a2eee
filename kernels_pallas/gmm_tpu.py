"""The grouped matmul kernels for TPU (Mosaic): gmm and tgmm over a scalar-prefetched schedule.

Inputs arrive padded to whole tiles (kernels_pallas/tiling.py) with their work list
(kernels_pallas/schedule.py). The schedule's five int32 vectors are scalar-prefetched into SMEM
(``pltpu.PrefetchScalarGridSpec``), so the BlockSpec index maps can read them: step I of the
grid fetches row tile ``tile_I[I]`` and the weights of group ``group_I[I]``, the same
data-dependent blocking as the megablox kernels (JAX's jax.experimental.pallas.ops.tpu.megablox,
after MegaBlocks, Gale et al. 2023). Each output block is visited in consecutive steps only, so
it stays in VMEM across a tile's groups and is written back once.

  gmm   grid (n tiles, steps, k tiles); step I adds x[tile] @ w[group] into a float32 VMEM
        accumulator over k and, at the last k tile, writes the rows of its group into the
        output block; a tile's first step writes zeros to every other row first.
  tgmm  grid (k tiles, n tiles, steps); step I adds x[tile]^T @ dy[tile], rows outside its
        group zeroed, into the accumulator of its group, written at the group's last step.

Axes: M rows, K/N features, G local groups, I schedule steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.schedule import ACTIVE, FIRST, LAST, Schedule
from kernels_pallas.shard import out_struct

_NT = (((1,), (0,)), ((), ()))   # x @ w
_NN_T = (((1,), (1,)), ((), ()))  # x @ w^T
_TN = (((0,), (0,)), ((), ()))   # x^T @ dy


def _rows_in_group(tile, start, end, shape):
  """[tm, c] bool: which rows of the tile lie in [start, end)."""
  rows = jax.lax.broadcasted_iota(jnp.int32, shape, 0) + tile * shape[0]
  return (rows >= start) & (rows < end)


def gmm(x_MK, w_GKN, schedule: Schedule, *, tiling, out_dtype, transpose_rhs: bool = False,
        interpret: bool = False, cost_flops: int = 0):
  """y[M, N] with y[rows of group g] = x[rows] @ w[g] (w[g]^T with ``transpose_rhs``)."""
  tm, tk, tn = tiling
  m, k = x_MK.shape
  n = w_GKN.shape[1] if transpose_rhs else w_GKN.shape[2]
  tiles_k, tiles_n = k // tk, n // tn
  compute_dtype = x_MK.dtype

  def kernel(tile_ref, group_ref, start_ref, end_ref, flags_ref, x_ref, w_ref, y_ref, acc_ref):
    del group_ref
    step, k_i = pl.program_id(1), pl.program_id(2)
    flags = flags_ref[step]

    @pl.when(k_i == 0)
    def _zero():
      acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when((flags & ACTIVE) != 0)
    def _accumulate():
      acc_ref[...] += jax.lax.dot_general(
          x_ref[...].astype(compute_dtype), w_ref[...].astype(compute_dtype),
          _NN_T if transpose_rhs else _NT, preferred_element_type=jnp.float32)

    @pl.when(k_i == tiles_k - 1)
    def _store():
      mine = _rows_in_group(tile_ref[step], start_ref[step], end_ref[step], (tm, tn))
      first = (flags & FIRST) != 0
      # A tile's first step zero-fills it; later steps keep the rows of other groups.
      kept = jnp.where(first, jnp.zeros((tm, tn), jnp.float32), y_ref[...].astype(jnp.float32))
      y_ref[...] = jnp.where(mine, acc_ref[...], kept).astype(y_ref.dtype)

  def x_map(n_i, step, k_i, tile_ref, *_):
    del n_i
    return tile_ref[step], k_i

  def w_map(n_i, step, k_i, tile_ref, group_ref, *_):
    del tile_ref
    if transpose_rhs:
      return group_ref[step], n_i, k_i
    return group_ref[step], k_i, n_i

  def y_map(n_i, step, k_i, tile_ref, *_):
    del k_i
    return tile_ref[step], n_i

  w_block = (None, tn, tk) if transpose_rhs else (None, tk, tn)
  itemsize = x_MK.dtype.itemsize
  call = pl.pallas_call(
      kernel,
      out_shape=out_struct((m, n), out_dtype, like=x_MK),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=5,
          grid=(tiles_n, schedule.num_steps, tiles_k),
          in_specs=[pl.BlockSpec((tm, tk), x_map), pl.BlockSpec(w_block, w_map)],
          out_specs=pl.BlockSpec((tm, tn), y_map),
          scratch_shapes=[pltpu.VMEM((tm, tn), jnp.float32)]),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "arbitrary", "arbitrary")),
      cost_estimate=pl.CostEstimate(
          flops=cost_flops, transcendentals=0,
          bytes_accessed=(m * k * tiles_n + schedule.num_steps * k * n) * itemsize
          + m * n * jnp.dtype(out_dtype).itemsize),
      interpret=interpret,
      name="moejax_gmm_tpu",
  )
  return call(*schedule, x_MK, w_GKN)


def tgmm(x_MK, dy_MN, schedule: Schedule, *, num_groups: int, tiling, out_dtype,
         interpret: bool = False, cost_flops: int = 0):
  """dw[G, K, N] with dw[g] = x[rows of g]^T @ dy[rows of g] (zeros for an empty group)."""
  tm, tk, tn = tiling
  m, k = x_MK.shape
  n = dy_MN.shape[1]
  compute_dtype = x_MK.dtype

  def kernel(tile_ref, group_ref, start_ref, end_ref, flags_ref, x_ref, dy_ref, dw_ref,
             acc_ref):
    del group_ref
    step = pl.program_id(2)
    flags = flags_ref[step]

    @pl.when((flags & FIRST) != 0)
    def _zero():
      acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when((flags & ACTIVE) != 0)
    def _accumulate():
      mine = _rows_in_group(tile_ref[step], start_ref[step], end_ref[step], (tm, tk))
      # Rows of other groups (and padding) are zeroed; the select runs in float32, which
      # every TPU generation's vector unit supports.
      x = jnp.where(mine, x_ref[...].astype(jnp.float32), 0.0).astype(compute_dtype)
      acc_ref[...] += jax.lax.dot_general(x, dy_ref[...].astype(compute_dtype), _TN,
                                          preferred_element_type=jnp.float32)

    @pl.when((flags & LAST) != 0)
    def _store():
      dw_ref[...] = acc_ref[...].astype(dw_ref.dtype)

  def x_map(k_i, n_i, step, tile_ref, *_):
    del n_i
    return tile_ref[step], k_i

  def dy_map(k_i, n_i, step, tile_ref, *_):
    del k_i
    return tile_ref[step], n_i

  def dw_map(k_i, n_i, step, tile_ref, group_ref, *_):
    del tile_ref
    return group_ref[step], k_i, n_i

  itemsize = x_MK.dtype.itemsize
  call = pl.pallas_call(
      kernel,
      out_shape=out_struct((num_groups, k, n), out_dtype, like=x_MK),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=5,
          grid=(k // tk, n // tn, schedule.num_steps),
          in_specs=[pl.BlockSpec((tm, tk), x_map), pl.BlockSpec((tm, tn), dy_map)],
          out_specs=pl.BlockSpec((None, tk, tn), dw_map),
          scratch_shapes=[pltpu.VMEM((tk, tn), jnp.float32)]),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      cost_estimate=pl.CostEstimate(
          flops=cost_flops, transcendentals=0,
          bytes_accessed=(m * k * (n // tn) + m * n * (k // tk)) * itemsize
          + num_groups * k * n * jnp.dtype(out_dtype).itemsize),
      interpret=interpret,
      name="moejax_tgmm_tpu",
  )
  return call(*schedule, x_MK, dy_MN)
