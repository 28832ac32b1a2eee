"""The kernels under ``jax.shard_map`` with ``check_vma=True`` (its default).

There every value's type says over which mesh axes it varies. Under expert parallelism a
device's expert weights vary over the expert axis, its group offset (``lax.axis_index``) too,
while the rows may be replicated. Two consequences:
  * ``match_varying``: the public functions cast every operand to the union of their varying
    axes before the custom VJP. Its backward then returns, e.g., a ``dx`` that varies (each
    device's partial sum over its own experts) for an ``x`` typed as varying, and JAX's
    transpose of that cast sums ``dx`` over the axis for a replicated ``x``: the right
    gradient.
  * ``out_struct``: a ``pallas_call`` must declare how its output varies (``manual_axis_type``);
    like its (matched) operands.
Outside shard_map both are no-ops.
"""

from __future__ import annotations

import jax


def _varying(a) -> frozenset:
  mat = getattr(jax.typeof(a), "mat", None)
  return frozenset() if mat is None else frozenset(mat.varying)


def match_varying(*arrays):
  """The arrays, each cast to vary over every mesh axis over which any of them varies."""
  axes = frozenset().union(*(_varying(a) for a in arrays))
  return tuple(a if _varying(a) == axes
               else jax.lax.pcast(a, tuple(sorted(axes - _varying(a))), to="varying")
               for a in arrays)


def out_struct(shape, dtype, like) -> jax.ShapeDtypeStruct:
  """ShapeDtypeStruct(shape, dtype) varying over the mesh axes ``like`` varies over."""
  mat = getattr(jax.typeof(like), "mat", None)
  if mat is None or mat.empty:
    return jax.ShapeDtypeStruct(shape, dtype)
  return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=mat)
