"""What a sweep is: a list of named runs, each a full training config plus tags.

A sweep file (``configs/sweeps/NAME.py``) defines ``get_sweep(preset) -> list[SweepRun]``; the
runner trains each run into ``WORKDIR/runs/NAME``. Sweep files may also define
``evaluate(run, run_dir) -> dict[str, float]``, the per-run evaluation hook (see runner.py).

  runs = load_sweep("configs/sweeps/optimal_sparsity.py:tiny")
  for line in listing(runs): print(line)
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import json
import os
import re
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

import ml_collections

from moejax import counting, validation
from moejax.training import task as task_lib


@dataclasses.dataclass(frozen=True)
class SweepRun:
  """One run of a sweep.

  Attributes:
    name: unique within the sweep; also the run's directory name.
    config: the full training config (``configs/lm_moe.py`` layout).
    family: the family the run belongs to (e.g. fixed active parameters, one FLOP budget).
    tags: extra columns for the results table (strings or numbers).
  """
  name: str
  config: ml_collections.ConfigDict
  family: str = ""
  tags: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def is_dense(model: ml_collections.ConfigDict) -> bool:
  """A model without MoE layers (``moe_every=0`` and no explicit ``moe_layers``)."""
  return not model.moe_every and not model.get("moe_layers")


def model_tags(model: ml_collections.ConfigDict) -> dict[str, Any]:
  """d_model, E, k and sparsity = 1 - k/E; a dense model counts as E = k = 1."""
  experts, top_k = (1, 1) if is_dense(model) else (model.moe.num_experts, model.moe.top_k)
  return {"d_model": model.d_model, "num_experts": experts, "top_k": top_k,
          "sparsity": 1.0 - top_k / experts}


def default_name(config: ml_collections.ConfigDict) -> str:
  """The run's name from its model: the task's ``counts(config)["name"]``, e.g. the LM
  study's ``d{D}-E{E}-k{K}-{TOTAL}-A{ACTIVE}`` (``d{D}-dense-...`` for dense)."""
  return task_lib.get(config).counts(config)["name"]


def make_run(base: ml_collections.ConfigDict, *, family: str = "",
             name: str | None = None, suffix: str = "", tags: Mapping[str, Any] | None = None,
             **overrides: Mapping[str, Any]) -> SweepRun:
  """A run from a copy of ``base`` updated section by section.

  Example: ``make_run(base, model=dict(moe=dict(num_experts=16)), train=dict(steps=200))``
  (nested sections update field by field). The name
  defaults to ``default_name(config) + suffix``.
  """
  config = copy.deepcopy(base)  # keeps lazy references: heads and FFN sizes follow d_model
  for section, values in overrides.items():
    _update(config, section, values)
  return SweepRun(name=name or default_name(config) + suffix, config=config,
                  family=family, tags=dict(tags or {}))


def seeded_run(base: ml_collections.ConfigDict, name_of: Callable[[ml_collections.ConfigDict], str],
               *, family: str, seed: int, tags: Mapping[str, Any] | None = None,
               **sections: Mapping[str, Any]) -> SweepRun:
  """``make_run`` seeded by ``seed`` (model init and data order together) and named
  ``{name_of(config.model)}-s{seed}``."""
  data = {"seed": seed, **sections.pop("data", {})}
  run = make_run(base, family=family, name="unnamed", tags=tags, data=data, **sections)
  run.config.seed = seed
  return dataclasses.replace(run, name=f"{name_of(run.config.model)}-s{seed}")


def _update(config: ml_collections.ConfigDict, section: str, values: Mapping[str, Any]):
  """``config[section].update(values)``, refusing fields the config does not have."""
  unknown = sorted(set(values) - set(config[section].keys()))
  if unknown:
    raise validation.ConfigError(f"unknown config field(s) config.{section}.{unknown}")
  config[section].update(values)


def steps_for_flops(config: ml_collections.ConfigDict, flops: float) -> int:
  """Training steps that spend ``flops`` training FLOPs with this model, batch and length."""
  per_step = (counting.train_flops_per_token(config.model, config.data.seq_len)
              * config.data.batch_size * config.data.seq_len)
  return max(1, round(flops / per_step))


def static_columns(run: SweepRun) -> dict[str, Any]:
  """The results-table columns known before training: counts, tags and the config."""
  summary = task_lib.get(run.config).counts(run.config)
  summary.pop("name")
  summary.pop("params_by_component")
  columns = {**summary, **model_tags(run.config.model), "family": run.family,
             "seed": run.config.seed, "steps": run.config.train.steps,
             "batch_size": run.config.data.batch_size, "config_json": run.config.to_json()}
  if "train_tokens" in summary:  # token-based families (the LM)
    columns.update(tpp=summary["train_tokens"] / summary["total_params"],
                   seq_len=run.config.data.seq_len)
  columns.update(run.tags)
  return columns


def validate(runs: Sequence[SweepRun]) -> None:
  """Unique names and valid models; raises ``ConfigError`` naming the run and the field."""
  seen = set()
  for run in runs:
    if run.name in seen:
      raise validation.ConfigError(f"sweep has two runs named {run.name!r}")
    if not re.fullmatch(r"[A-Za-z0-9._+-]+", run.name):
      raise validation.ConfigError(f"run name {run.name!r} must be a plain file name")
    seen.add(run.name)
    try:
      validation.validate_config(run.config)
    except validation.ConfigError as e:
      raise validation.ConfigError(f"run {run.name}: {e}") from None


def _import_file(path: str, module_name: str | None = None):
  """Imports a Python file as a module (registered in sys.modules, so it pickles by name)."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no such sweep file: {path}")
  module_name = module_name or "_moejax_sweep_" + re.sub(r"\W", "_", path)
  if module_name in sys.modules:
    return sys.modules[module_name]
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  spec.loader.exec_module(module)
  return module


def _split_spec(spec: str) -> tuple[str, str]:
  target, sep, attr = spec.rpartition(":")
  if not sep or not target or not attr:
    raise ValueError(f"expected 'path/to/file.py:NAME' or 'package.module:NAME', got {spec!r}")
  return target, attr


def _import_target(target: str):
  return _import_file(target) if target.endswith(".py") else importlib.import_module(target)


def load_module(spec: str):
  """The module of a ``file.py:preset`` sweep spec."""
  return _import_target(_split_spec(spec)[0])


def load_sweep(spec: str) -> list[SweepRun]:
  """``configs/sweeps/NAME.py:PRESET`` -> the validated list of runs."""
  target, preset = _split_spec(spec)
  runs = list(_import_target(target).get_sweep(preset))
  validate(runs)
  return runs


def load_callable(spec: str) -> Callable:
  """``path/to/file.py:function`` or ``package.module:function`` -> the function."""
  target, attr = _split_spec(spec)
  return getattr(_import_target(target), attr)


def select(runs: Iterable[SweepRun], pattern: str | None) -> list[SweepRun]:
  """Runs whose name matches the regular expression ``pattern`` (all when empty)."""
  return [r for r in runs if not pattern or re.search(pattern, r.name)]


def _parse_value(text: str, current: Any) -> Any:
  """``text`` as the type of the field's current value (JSON for other types and None)."""
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"expected a boolean, got {text!r}")
    return text.lower() in ("true", "1")
  if isinstance(current, int):
    return int(float(text))
  if isinstance(current, float):
    return float(text)
  return text if isinstance(current, str) else json.loads(text)


def _set_field(config: ml_collections.ConfigDict, item: str) -> None:
  key, sep, text = item.partition("=")
  *parents, field = key.split(".")
  try:
    node = config
    for part in parents:
      node = node[part]
    if not sep or field not in node:
      raise KeyError(key)
    node[field] = _parse_value(text, node[field])
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    raise validation.ConfigError(f"override {item!r}: not KEY=VALUE with a known config "
                                 f"field ({type(e).__name__}: {e})") from None


def apply_overrides(runs: Sequence[SweepRun], overrides: Sequence[str]) -> list[SweepRun]:
  """Copies of ``runs`` with ``section.field=value`` overrides applied to every config.

  E.g. ``train.steps=100`` shortens every run. A default name follows a changed model.
  """
  out = []
  for run in runs:
    config = copy.deepcopy(run.config)
    for item in overrides:
      _set_field(config, item)
    old, new = default_name(run.config), default_name(config)
    name = new + run.name[len(old):] if run.name.startswith(old) else run.name
    out.append(dataclasses.replace(run, name=name, config=config))
  validate(out)
  return out


def listing(runs: Sequence[SweepRun]) -> list[str]:
  """One line per run: name, total and active parameters, training FLOPs and tokens."""
  width = max((len(r.name) for r in runs), default=0)
  lines = []
  for run in runs:
    s = task_lib.get(run.config).counts(run.config)
    data = (f"tokens={s['train_tokens']:,}" if "train_tokens" in s
            else f"images={s['train_images']:,}")
    lines.append(f"{run.name:<{width}}  total={s['total_params']:,}  "
                 f"active={s['active_params']:,}  train_flops={s['train_flops']:.3e}  {data}")
  return lines
