"""Meshes and logical-axis sharding.

Parameters and activations name their axes logically (``batch``, ``seq``, ``embed``, ``heads``,
``kv_heads``, ``mlp``, ``expert``, ``vocab``, ``layers``, and ``act_*`` for activation-only axes).
A rules table from the config maps each logical name to a mesh axis (``data``, ``fsdp``,
``expert``, ``tensor``), a tuple of mesh axes, or None (replicated). Changing the parallelism
layout is therefore a config change, never a model change.

Usage::

  mesh = make_mesh({"data": 4, "fsdp": 2})
  with use_rules(rules), jax.set_mesh(mesh):
    ...  # parameter specs and `constrain` calls resolve against `rules` and `mesh`
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, Mapping, Sequence

import jax
from absl import logging
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

_RULES: contextvars.ContextVar[tuple] = contextvars.ContextVar("moejax_axis_rules", default=())


def make_mesh(axis_sizes: Mapping[str, int], devices=None) -> jax.sharding.Mesh:
  """A mesh with the given named axis sizes; one size may be -1 (takes the remaining devices)."""
  devices = jax.devices() if devices is None else devices
  names = tuple(axis_sizes)
  sizes = [int(s) for s in axis_sizes.values()]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {dict(axis_sizes)}")
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    sizes[sizes.index(-1)] = len(devices) // max(known, 1)
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh: axis sizes {dict(zip(names, sizes))} multiply to "
                     f"{math.prod(sizes)}, but there are {len(devices)} devices")
  axis_types = (AxisType.Auto,) * len(names)
  try:
    return jax.make_mesh(tuple(sizes), names, axis_types=axis_types, devices=devices)
  except NotImplementedError:
    # A TPU torus (e.g. 4x4x4) cannot give an axis of 8 without splitting a physical axis;
    # jax.make_mesh refuses, create_device_mesh may split (the split axis's collectives then
    # cross two physical axes).
    logging.warning("mesh %s splits a physical axis of the %d-device topology",
                    dict(zip(names, sizes)), len(devices))
    grid = mesh_utils.create_device_mesh(tuple(sizes), devices,
                                         allow_split_physical_axes=True)
    return jax.sharding.Mesh(grid, names, axis_types=axis_types)


def platform() -> str:
  """The platform the computation being traced is for: the active mesh's devices' (e.g. "tpu"
  while a CPU host compiles for compile-only TPU devices, experiments/plan.py), else jax's
  default backend."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  return device.platform if device is not None else jax.default_backend()


@contextlib.contextmanager
def use_rules(rules: Rules) -> Iterator[None]:
  """Makes ``rules`` the active logical->mesh table (for parameters and activations)."""
  rules = tuple((name, tuple(axis) if isinstance(axis, list) else axis) for name, axis in rules)
  token = _RULES.set(rules)
  try:
    yield
  finally:
    _RULES.reset(token)


def active_rules() -> tuple:
  """The active logical->mesh table (empty outside ``use_rules``)."""
  return _RULES.get()


def rule_axes(target) -> tuple[str, ...]:
  """The mesh axes of a rule target or PartitionSpec entry: None, one name, or a sequence."""
  return (target,) if isinstance(target, str) else tuple(target or ())


def logical_to_spec(axes: Sequence[str | None], rules: Rules | None = None,
                    mesh_axes: Sequence[str] | None = None) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec; unknown names are replicated.

  With ``mesh_axes``, rule targets that the mesh lacks are dropped, so one rules table serves
  every mesh layout (e.g. rules naming ``expert`` on a (data, fsdp) mesh).
  """
  table = dict(_RULES.get() if rules is None else rules)
  used: set[str] = set()
  out = []
  for name in axes:
    targets = table.get(name) if name is not None else None
    flat = rule_axes(targets)
    if mesh_axes is not None:
      flat = tuple(a for a in flat if a in mesh_axes)
    if any(a in used for a in flat):  # a mesh axis may shard only one dimension
      flat = ()
    used.update(flat)
    out.append(None if not flat else flat[0] if len(flat) == 1 else flat)
  return PartitionSpec(*out)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint from logical axes; a no-op outside a mesh or without rules."""
  mesh = jax.sharding.get_abstract_mesh()
  if not _RULES.get() or mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, mesh_axes=mesh.axis_names))


def variable_axes(variable: nnx.Variable) -> tuple | None:
  """The logical axes of a Variable's value (its ``out_sharding`` metadata), or None without
  them. Inside the scan over a layer stack a Variable is one layer's slice while its metadata
  still names the stacked ``layers`` axis; that name is dropped then."""
  axes = tuple(variable.get_metadata().get("out_sharding") or ())
  if not axes:
    return None
  if len(axes) > variable.ndim:
    axes = tuple(a for a in axes if a != "layers")
  if len(axes) != variable.ndim:
    raise ValueError(f"a Variable of shape {variable.shape} has logical axes {axes}")
  return axes


def state_shardings(abstract_tree, mesh: jax.sharding.Mesh):
  """NamedShardings for a tree holding nnx Variables (a model state, a train state).

  Each Variable's ``out_sharding`` metadata holds its logical axes (see layers/params.py) and is
  resolved with the active rules; other leaves (step counters, Variables without axes) are
  replicated. Optimizer moments mirror the parameters' Variables, so they shard alike.
  """

  def sharding_of(node):
    if isinstance(node, nnx.Variable):
      axes = variable_axes(node) or ()
      return node.replace(NamedSharding(mesh, logical_to_spec(axes, mesh_axes=mesh.axis_names)))
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree.map(sharding_of, abstract_tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_shardings(spec, mesh: jax.sharding.Mesh) -> dict[str, NamedSharding]:
  """NamedShardings of a task's batch (``{name: BatchField}``) from each field's logical axes."""
  return {name: NamedSharding(mesh, logical_to_spec(field.axes, mesh_axes=mesh.axis_names))
          for name, field in spec.items()}
