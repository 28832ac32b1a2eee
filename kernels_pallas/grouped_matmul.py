"""The Pallas grouped matmul: ``gmm`` (differentiable, with its own VJP) and ``tgmm``.

``gmm(x_MK, w_GKN, group_sizes_G) -> y_MN``: rows of ``x_MK`` sorted by group, the first
``group_sizes_G[0]`` rows times ``w_GKN[0]``, the next ``group_sizes_G[1]`` times ``w_GKN[1]``,
and so on; rows past ``sum(group_sizes_G)`` give zeros (in the value and in the gradient; the
megablox kernels leave them undefined). It is the signature of ``jax.lax.ragged_dot``, so the
``pallas`` dispatch strategy (moejax/moe/dispatch/grouped.py) uses it where ``ragged_dot`` runs.

``tgmm(x_MK, dy_MN, group_sizes_G) -> dw_GKN``: ``dw[g] = x[rows of g]^T @ dy[rows of g]``, the
weight gradient (zeros for an empty group). The VJP of gmm is built from the two:
``dx = gmm(dy, w^T)`` (the kernel reads w transposed, no copy) and ``dw = tgmm(x, dy)``;
``jax.grad`` cannot differentiate through ``pallas_call`` itself.

Options (keywords):
  group_offset            g0 (an int or a traced int32 scalar, e.g. from ``lax.axis_index``):
                          ``w_GKN`` holds groups g0 .. g0+G_local-1 of the ``len(group_sizes)``
                          groups, the experts of one device under expert parallelism; rows of
                          the other groups give zeros. g0 + G_local must not exceed the number
                          of groups (a traced g0 cannot be checked).
  preferred_element_type  the output dtype (default: the inputs' dtype). Accumulation is
                          always float32; float32 and bfloat16 inputs.
  tiling                  (tm, tk, tn) of the forward problem (default: kernels_pallas/tiling.py
                          chooses per shape and target); the backward matmuls use the same
                          tiles permuted to their (rows, contracted, output) dims.
  target                  "tpu" (Mosaic) or "gpu" (Triton); default: the running backend, the
                          TPU kernel on CPU.
  interpret               run the kernel in the Pallas interpreter (any backend, CPU included).
                          Default False: cross-lowering for TPU/GPU from a CPU host (the tests)
                          must lower the real kernel; moejax's ``pallas`` dispatch passes True
                          on CPU itself.
  compiler_params         GPU only: ``jax.experimental.pallas.triton.CompilerParams``.

Under ``jax.shard_map`` the operands are cast to one varying type first (kernels_pallas/shard.py),
so a replicated ``x`` gets its gradient summed over the expert axis.

Axes: M rows, K/N features, G groups (experts).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from kernels_pallas import gmm_gpu, gmm_tpu, schedule, shard, tiling as tiling_lib

AVAILABLE = True
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def default_target() -> str:
  """The kernel for the running backend: gpu on CUDA/ROCm, else tpu (on CPU: interpreted)."""
  return "gpu" if jax.default_backend() in ("gpu", "cuda", "rocm") else "tpu"


@dataclasses.dataclass(frozen=True)
class _Options:
  out_dtype: Any
  tiling: Optional[tuple[int, int, int]]
  target: str
  interpret: bool
  compiler_params: Any


def _check(x_MK, w_GKN, group_sizes_G, *, transpose_rhs: bool = False):
  if x_MK.ndim != 2:
    raise ValueError(f"x_MK must be 2-D [m, k], got shape {x_MK.shape}")
  if w_GKN.ndim != 3:
    raise ValueError(f"w_GKN must be 3-D [groups, k, n], got shape {w_GKN.shape}")
  if group_sizes_G.ndim != 1 or not jnp.issubdtype(group_sizes_G.dtype, jnp.integer):
    raise ValueError(f"group_sizes_G must be a 1-D integer array, got {group_sizes_G.dtype}"
                     f"{list(group_sizes_G.shape)}")
  k_w = w_GKN.shape[2] if transpose_rhs else w_GKN.shape[1]
  if x_MK.shape[1] != k_w:
    raise ValueError(f"x_MK {x_MK.shape} and w_GKN {w_GKN.shape} disagree on k")
  if w_GKN.shape[0] > group_sizes_G.shape[0]:
    raise ValueError(f"w_GKN holds {w_GKN.shape[0]} groups, more than the "
                     f"{group_sizes_G.shape[0]} of group_sizes_G")
  for name, a in (("x_MK", x_MK), ("w_GKN", w_GKN)):
    if jnp.dtype(a.dtype) not in _DTYPES:
      raise ValueError(f"{name} has dtype {a.dtype}; the kernels take float32 or bfloat16")


def _offset(group_offset, num_groups: int, num_local: int):
  if group_offset is None:
    return jnp.zeros((), jnp.int32)
  if isinstance(group_offset, int) and not 0 <= group_offset <= num_groups - num_local:
    raise ValueError(f"group_offset={group_offset} must be in [0, {num_groups - num_local}] "
                     f"for {num_local} local of {num_groups} groups")
  return jnp.asarray(group_offset, jnp.int32).reshape(())


def _pad(a, shape):
  pads = [(0, s - d) for s, d in zip(shape, a.shape)]
  return jnp.pad(a, pads) if any(p for _, p in pads) else a


def _gmm_forward(x_MK, w_GKN, group_sizes_G, group_offset, opts: _Options, *,
                 transpose_rhs: bool = False, tiling=None):
  """The kernel call on padded operands: y = x @ w[g] (w[g]^T) per group, zeros elsewhere."""
  m, k = x_MK.shape
  num_local = w_GKN.shape[0]
  n = w_GKN.shape[1] if transpose_rhs else w_GKN.shape[2]
  if m == 0 or n == 0:
    return jnp.zeros((m, n), opts.out_dtype)
  dtype = jnp.result_type(x_MK.dtype, w_GKN.dtype)
  x_MK, w_GKN = x_MK.astype(dtype), w_GKN.astype(dtype)
  tiles = tiling_lib.resolve_tiling(tiling, m, k, n, num_local, dtype, opts.target)
  m_p, k_p, n_p = tiling_lib.padded_dims(m, k, n, tiles)
  x_MK = _pad(x_MK, (m_p, k_p))
  w_GKN = _pad(w_GKN, (num_local, n_p, k_p) if transpose_rhs else (num_local, k_p, n_p))
  plan = schedule.row_schedule(group_sizes_G, group_offset, num_local=num_local, num_rows=m,
                               rows=m_p, tm=tiles[0])
  if opts.target == "tpu":
    y = gmm_tpu.gmm(x_MK, w_GKN, plan, tiling=tiles, out_dtype=opts.out_dtype,
                    transpose_rhs=transpose_rhs, interpret=opts.interpret,
                    cost_flops=2 * m * k * n)
  else:
    start_L, end_L = schedule.local_bounds(group_sizes_G, group_offset, num_local, m)
    local_rows = jnp.stack([start_L[0], end_L[-1]])
    y = gmm_gpu.gmm(x_MK, w_GKN, plan, local_rows=local_rows, tiling=tiles,
                    out_dtype=opts.out_dtype, transpose_rhs=transpose_rhs,
                    interpret=opts.interpret, params=opts.compiler_params)
  return y[:m, :n]


def _tgmm_forward(x_MK, dy_MN, group_sizes_G, group_offset, num_local: int, opts: _Options, *,
                  tiling=None):
  m, k = x_MK.shape
  n = dy_MN.shape[1]
  if m == 0 or k == 0 or n == 0:
    return jnp.zeros((num_local, k, n), opts.out_dtype)
  dtype = jnp.result_type(x_MK.dtype, dy_MN.dtype)
  x_MK, dy_MN = x_MK.astype(dtype), dy_MN.astype(dtype)
  tiles = tiling_lib.resolve_tiling(tiling, m, k, n, num_local, dtype, opts.target)
  m_p, k_p, n_p = tiling_lib.padded_dims(m, k, n, tiles)
  x_MK, dy_MN = _pad(x_MK, (m_p, k_p)), _pad(dy_MN, (m_p, n_p))
  if opts.target == "tpu":
    plan = schedule.group_schedule(group_sizes_G, group_offset, num_local=num_local,
                                   num_rows=m, rows=m_p, tm=tiles[0])
    dw = gmm_tpu.tgmm(x_MK, dy_MN, plan, num_groups=num_local, tiling=tiles,
                      out_dtype=opts.out_dtype, interpret=opts.interpret,
                      cost_flops=2 * m * k * n)
  else:
    bounds = schedule.local_bounds(group_sizes_G, group_offset, num_local, m)
    dw = gmm_gpu.tgmm(x_MK, dy_MN, num_groups=num_local, local_bounds=bounds,
                      tiling=tiles, out_dtype=opts.out_dtype, interpret=opts.interpret,
                      params=opts.compiler_params)
  return dw[:, :k, :n]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _gmm(x_MK, w_GKN, group_sizes_G, group_offset, opts: _Options):
  return _gmm_forward(x_MK, w_GKN, group_sizes_G, group_offset, opts, tiling=opts.tiling)


def _gmm_fwd(x_MK, w_GKN, group_sizes_G, group_offset, opts: _Options):
  y = _gmm_forward(x_MK, w_GKN, group_sizes_G, group_offset, opts, tiling=opts.tiling)
  return y, (x_MK, w_GKN, group_sizes_G, group_offset)


def _gmm_bwd(opts: _Options, residuals, dy_MN):
  x_MK, w_GKN, group_sizes_G, group_offset = residuals
  dtype = jnp.result_type(x_MK.dtype, w_GKN.dtype)
  dy_MN = dy_MN.astype(dtype)
  tm, tk, tn = opts.tiling or (None, None, None)
  dx_tiling = None if opts.tiling is None else (tm, tn, tk)
  dx_MK = _gmm_forward(dy_MN, w_GKN, group_sizes_G, group_offset,
                       dataclasses.replace(opts, out_dtype=x_MK.dtype), transpose_rhs=True,
                       tiling=dx_tiling)
  dw_GKN = _tgmm_forward(x_MK.astype(dtype), dy_MN, group_sizes_G, group_offset,
                         w_GKN.shape[0], dataclasses.replace(opts, out_dtype=w_GKN.dtype),
                         tiling=opts.tiling)
  return dx_MK, dw_GKN, None, None


_gmm.defvjp(_gmm_fwd, _gmm_bwd)


def _options(dtype, preferred_element_type, tiling, target, interpret, compiler_params):
  target = default_target() if target is None else target
  if target not in tiling_lib.TARGETS:
    raise ValueError(f"target={target!r} is not one of {tiling_lib.TARGETS}")
  if compiler_params is not None and target != "gpu":
    raise ValueError("compiler_params are Triton's: only for target='gpu'")
  out_dtype = jnp.dtype(preferred_element_type or dtype)
  return _Options(out_dtype=out_dtype, tiling=None if tiling is None else tuple(tiling),
                  target=target, interpret=bool(interpret), compiler_params=compiler_params)


def gmm(x_MK, w_GKN, group_sizes_G, group_offset=None, *, preferred_element_type=None,
        tiling=None, target: Optional[str] = None, interpret: bool = False,
        compiler_params=None):
  """The grouped matmul [m, k] x [G_local, k, n] -> [m, n] (module docstring: the options)."""
  _check(x_MK, w_GKN, group_sizes_G)
  offset = _offset(group_offset, group_sizes_G.shape[0], w_GKN.shape[0])
  opts = _options(jnp.result_type(x_MK.dtype, w_GKN.dtype), preferred_element_type, tiling,
                  target, interpret, compiler_params)
  if opts.tiling is not None:  # errors at the call, naming the argument
    tiling_lib.check_tiling(opts.tiling, x_MK.shape[0], x_MK.shape[1], w_GKN.shape[2],
                            jnp.result_type(x_MK.dtype, w_GKN.dtype), opts.target)
  # Under shard_map: one varying type for all operands (kernels_pallas/shard.py).
  operands = shard.match_varying(x_MK, w_GKN, group_sizes_G.astype(jnp.int32), offset)
  return _gmm(*operands, opts)


def tgmm(x_MK, dy_MN, group_sizes_G, group_offset=None, *, num_groups: Optional[int] = None,
         preferred_element_type=None, tiling=None, target: Optional[str] = None,
         interpret: bool = False, compiler_params=None):
  """[m, k]^T x [m, n] per group -> [num_groups, k, n] (num_groups: the local groups, default
  all of ``group_sizes_G``). Not differentiable itself."""
  num_groups = group_sizes_G.shape[0] if num_groups is None else int(num_groups)
  if x_MK.ndim != 2 or dy_MN.ndim != 2 or x_MK.shape[0] != dy_MN.shape[0]:
    raise ValueError(f"x_MK {x_MK.shape} and dy_MN {dy_MN.shape} must be 2-D with equal rows")
  if not 1 <= num_groups <= group_sizes_G.shape[0]:
    raise ValueError(f"num_groups={num_groups} must be in [1, {group_sizes_G.shape[0]}]")
  _check(x_MK, jax.ShapeDtypeStruct((num_groups, x_MK.shape[1], dy_MN.shape[1]), dy_MN.dtype),
         group_sizes_G)
  offset = _offset(group_offset, group_sizes_G.shape[0], num_groups)
  opts = _options(jnp.result_type(x_MK.dtype, dy_MN.dtype), preferred_element_type, tiling,
                  target, interpret, compiler_params)
  x_MK, dy_MN, group_sizes_G, offset = shard.match_varying(
      x_MK, dy_MN, group_sizes_G.astype(jnp.int32), offset)
  return _tgmm_forward(x_MK, dy_MN, group_sizes_G, offset, num_groups, opts, tiling=opts.tiling)
