"""Plan one run on a TPU slice: compile its real train step ahead of time for the slice's chips
(no TPU needed) and report what each chip would hold and do.

  figures = plan_run(config, parse_topology("v5p:4x4x4"), mesh={"fsdp": 64})
  print(format_plan(figures)); print(json.dumps(figures))

The step is the one the trainer runs (``training/compile.py``: abstract state and batch, the
config's dtype, remat and sharding rules, donation), lowered on a mesh of compile-only devices
from libtpu (``chips.py``) and compiled by the XLA TPU compiler; MaxText's train_compile.py does
the same for one config. A step that does not fit fails to compile with RESOURCE_EXHAUSTED; that
is reported as ``fits: false`` with the compiler's shortfall, not raised.

Figures (per chip unless named otherwise):
  arguments     train state shard + batch shard (the executable's inputs; outputs alias them)
  temporaries   the compiler's peak scratch (activations, gradients, collective buffers)
  total         arguments + temporaries + non-aliased outputs + program code, against HBM
  model FLOPs   moejax.counting's training FLOPs per token x tokens per step (as the study
                counts: 3x the forward matmuls plus attention scores), the MFU numerator
  HLO FLOPs     the compiler's cost analysis, which counts a scanned layer body once; scaled by
                the analytic ratio (all layers) / (one layer) of the same counts, so it includes
                the rematerialised forward passes the model count leaves out
  step time     roofline: max(HLO FLOPs / peak FLOP/s, bytes accessed / HBM bandwidth,
                collective bytes / ICI bandwidth); collectives from the HLO (``hlo_comm.py``)
  MFU           model FLOPs / (step time x peak FLOP/s): an upper estimate, not a measurement
"""

from __future__ import annotations

import copy
import re
import time

import jax
import ml_collections

from moejax import sharding, validation
from moejax.errors import ConfigError
from moejax.planning import hlo_comm
from moejax.planning.chips import GIB, Topology, compile_only_devices
from moejax.training import task as task_lib
from moejax.training.compile import lower_train_step


def prepare_config(config: ml_collections.ConfigDict, topology: Topology,
                   mesh: dict[str, int] | None = None,
                   microbatches: int | None = None) -> tuple[ml_collections.ConfigDict, dict]:
  """(config for the slice, resolved mesh sizes). ``mesh`` replaces ``config.mesh`` (axes it
  omits get size 1); ``microbatches`` sets ``config.train.microbatches``, which must exist when
  it is above 1. Raises ConfigError (naming the field) before anything is compiled."""
  config = copy.deepcopy(config)
  with config.unlocked():
    if mesh is not None:
      config.mesh = ml_collections.ConfigDict({**{k: 1 for k in config.mesh}, **mesh})
    if microbatches is not None:
      if "microbatches" in config.train:
        config.train.microbatches = microbatches
      elif microbatches != 1:
        raise ConfigError(f"--microbatches={microbatches}: this train step has no "
                          "config.train.microbatches (gradient accumulation)")
    moe = config.model.get("moe")
    if moe is not None and moe.get("ep_exchange") == "auto":  # "auto" reads this CPU host's
      moe.ep_exchange = "ragged"  # backend; the plan is for TPU chips (moejax/moe/config.py)
  sizes = validation.validate_run(config, topology.num_chips)
  return config, sizes


def microbatches_of(config: ml_collections.ConfigDict) -> int:
  return int(config.train.get("microbatches", 1) or 1)


_SIZE = r"([\d.]+)([KMGT])"
_SCALE = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _shortfall(message: str) -> dict:
  """The compiler's RESOURCE_EXHAUSTED line, and the sizes it names. libtpu 0.0.42 says "the
  total memory required for HLO temporaries (96.71G) exceeds available HBM (95.74G)": the
  temporaries alone, so the shortfall is at least temporaries - HBM (the arguments add more)."""
  lines = [line.strip() for line in message.splitlines() if "RESOURCE_EXHAUSTED" in line]
  out = {"error": (lines or message.strip().splitlines()[:1] or [""])[0][:400]}
  size = lambda number, unit: int(float(number) * _SCALE[unit])
  temporaries = re.search(rf"HLO temporaries \({_SIZE}\) exceeds available HBM \({_SIZE}\)",
                          message)
  used = re.search(rf"Used {_SIZE} of {_SIZE} hbm", message)
  if temporaries:
    out["temp_bytes"] = size(*temporaries.group(1, 2))
    out["hbm_bytes"] = size(*temporaries.group(3, 4))
    out["shortfall_bytes"] = out["temp_bytes"] - out["hbm_bytes"]
  elif used:
    out["total_bytes"] = size(*used.group(1, 2))
    out["hbm_bytes"] = size(*used.group(3, 4))
    out["shortfall_bytes"] = out["total_bytes"] - out["hbm_bytes"]
  return out


def depth_factor(config: ml_collections.ConfigDict) -> float:
  """(training FLOPs of all layers) / (FLOPs with one layer of each scanned kind), from the
  analytic counts: the factor that undoes cost analysis counting a scan body once."""
  task = task_lib.get(config)
  one = copy.deepcopy(config)
  model = one.model
  period = int(model.get("moe_every", 1) or 1)
  if model.get("moe_layers") or model.get("moe_last_n"):
    return float("nan")  # several scanned stages of different lengths: not corrected
  with one.unlocked():
    model.num_layers = max(period, 1)  # moe_every 0: a dense model, one kind of layer
  per_token = lambda c: task.counts(c)["train_flops_per_token"]
  return per_token(config) / per_token(one)


def disable_persistent_cache() -> None:
  """Compile-only TPU executables cannot be read back from jax's persistent compilation cache
  ("PjRtCompiler must be constructed with a Client"), so planners keep them out of it. Takes
  effect only before the process's first compilation (jax checks the setting once)."""
  jax.config.update("jax_enable_compilation_cache", False)


def plan_run(config: ml_collections.ConfigDict, topology: Topology,
             mesh: dict[str, int] | None = None, microbatches: int | None = None,
             hlo_path: str | None = None) -> dict:
  """Compiles ``config``'s train step for ``topology`` and returns the plan's figures
  (``hlo_path``: also write the compiled program's HLO text there)."""
  config, sizes = prepare_config(config, topology, mesh, microbatches)
  task = task_lib.get(config)
  counts = task.counts(config)
  chip, chips = topology.chip, topology.num_chips
  tokens = task.tokens_per_batch(config)
  model_flops = counts["train_flops_per_token"] * tokens
  out = {"name": counts.get("name"), "topology": topology.name, "chips": chips,
         "mesh": {k: v for k, v in sizes.items()}, "microbatches": microbatches_of(config),
         "dtype": config.model.get("dtype"), "remat": config.model.get("remat"),
         "tokens_per_step": tokens, "hbm_bytes": chip.hbm_bytes,
         "model_flops_per_step": model_flops}
  mesh_ = sharding.make_mesh(sizes, devices=compile_only_devices(topology))
  lowered, out["lower_s"] = lower_train_step(config, mesh_)
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError)
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    out["compile_s"] = time.perf_counter() - start
    out.update(fits=False, **_shortfall(str(e)))
    return out
  out["compile_s"] = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  total = (memory.argument_size_in_bytes + memory.temp_size_in_bytes +
           memory.output_size_in_bytes - memory.alias_size_in_bytes +
           memory.generated_code_size_in_bytes)
  # Cost analysis counts a loop body once: the scanned layers (depth_factor) and, with
  # gradient accumulation, the scan over microbatches (the optimizer update outside it is then
  # over-counted M times, a small share of the step).
  depth = depth_factor(config)
  factor = depth * microbatches_of(config)
  hlo_text = compiled.as_text()
  if hlo_path:
    with open(hlo_path, "w") as f:
      f.write(hlo_text)
  comm = hlo_comm.collective_bytes(hlo_text)
  hlo_flops = float(cost.get("flops", 0.0)) * factor
  hbm_traffic = float(cost.get("bytes accessed", 0.0)) * factor
  times = {"compute_s": hlo_flops / chip.peak_bf16_flops,
           "hbm_s": hbm_traffic / chip.hbm_bytes_per_s,
           "ici_s": comm["total"] / chip.ici_bytes_per_s}
  step_s = max(times.values())
  out.update(
      fits=total <= chip.hbm_bytes, argument_bytes=memory.argument_size_in_bytes,
      temp_bytes=memory.temp_size_in_bytes, total_bytes=total,
      hlo_flops_per_chip=hlo_flops, depth_factor=depth, hbm_traffic_bytes=hbm_traffic,
      collective_bytes=comm, **times, step_s=step_s,
      mfu=model_flops / chips / (step_s * chip.peak_bf16_flops) if step_s > 0 else 0.0)
  return out


def _gib(n) -> str:
  return "-" if n is None else f"{n / GIB:,.1f} GiB"


def format_plan(p: dict) -> str:
  """The plan as a few human-readable lines (the JSON line carries the same figures)."""
  mesh = " x ".join(f"{k} {v}" for k, v in p["mesh"].items() if v > 1) or "1 device"
  lines = [f"{p['name']} on {p['topology']} ({p['chips']} chips), mesh {mesh}, "
           f"{p['microbatches']} microbatch(es), {p['dtype']}, remat {p['remat']}; "
           f"compiled in {p['compile_s']:.0f} s (lowered in {p['lower_s']:.0f} s)"]
  if not p["fits"] and "argument_bytes" not in p:
    lines.append(f"  DOES NOT FIT: {p.get('error')}")
    if "shortfall_bytes" in p:
      need = p.get("total_bytes", p.get("temp_bytes"))
      what = "in all" if "total_bytes" in p else "of temporaries alone"
      lines.append(f"  per chip: needs {_gib(need)} {what} against {_gib(p['hbm_bytes'])} of "
                   f"HBM: short by at least {_gib(p['shortfall_bytes'])}")
    return "\n".join(lines)
  comm = p["collective_bytes"]
  lines += [
      f"  per chip: arguments {_gib(p['argument_bytes'])} + temporaries {_gib(p['temp_bytes'])}"
      f" -> total {_gib(p['total_bytes'])} of {_gib(p['hbm_bytes'])} HBM: "
      f"{'fits' if p['fits'] else 'DOES NOT FIT'}",
      f"  FLOPs per step: model {p['model_flops_per_step']:.3e} "
      f"({p['model_flops_per_step'] / p['chips']:.3e} per chip); compiled "
      f"{p['hlo_flops_per_chip']:.3e} per chip (scan body x {p['depth_factor']:.2f} layers "
      f"x {p['microbatches']} microbatch(es))",
      f"  collectives per chip per step: {_gib(comm['total'])} "
      f"({', '.join(f'{k} {_gib(v)}' for k, v in comm.items() if k != 'total' and v)})",
      f"  roofline step {p['step_s']:.2f} s (compute {p['compute_s']:.2f}, HBM "
      f"{p['hbm_s']:.2f}, ICI {p['ici_s']:.2f}); MFU estimate {100 * p['mfu']:.0f}%"]
  return "\n".join(lines)
