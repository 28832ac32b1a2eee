"""Bytes each chip exchanges per train step: measured from the compiled HLO against the analytic
count, for paper models on a TPU slice (compiled ahead of time; needs libtpu, not a TPU).

  python -m benchmarks.comm [--topology=v5p:4x4x4] [--models=REGEX] [--meshes="fsdp=64;..."] \
      [--seqs_per_chip=1]

Meshes default to the planner's candidates (moejax/planning/sweep.py): FSDP over the slice, and
expert parallelism once the sharding rules map experts to the mesh axis ``expert``; all-to-all
traffic is zero without it. The batch is ``seqs_per_chip`` sequences per chip (weight traffic
does not depend on it; all-to-all traffic grows with it), so the step compiles for models whose
paper batch does not fit. Measured: operand bytes of every collective in the compiled program,
loop bodies counted once per iteration (moejax/planning/hlo_comm.py). Analytic: the
parameter-by-parameter model in moejax/planning/comm_model.py. Prints a table and a JSON line.
"""

from __future__ import annotations

import json

from absl import flags

from experiments import cli
from moejax.planning import chips, comm_model, plan, sweep
from moejax.planning.chips import GIB
from moejax.sweeps import spec as sweep_spec

_TOPOLOGY = flags.DEFINE_string("topology", "v5p:4x4x4", "TPU slice.")
_SWEEP = flags.DEFINE_string("sweep", "configs/sweeps/optimal_sparsity.py:paper", "Sweep.")
_MODELS = flags.DEFINE_string("models", r"^(d512-E8-k2|d1024-E64-k8|d2048-E128-k16)-",
                              "Runs whose name matches this regex.")
_MESHES = flags.DEFINE_string("meshes", "", "';'-separated meshes (AXIS=SIZE,...); default: "
                              "the planner's candidates for the slice.")
_SEQS = flags.DEFINE_integer("seqs_per_chip", 1, "Sequences per chip in the compiled step.")

KINDS = ("all-to-all", "all-gather", "reduce-scatter", "all-reduce")


def measure(config, topology, mesh: dict[str, int]) -> dict:
  """The plan's figures, with the measured and the analytic bytes per collective kind."""
  figures = plan.plan_run(config, topology, mesh=mesh)
  prepared, sizes = plan.prepare_config(config, topology, mesh)
  row = {"name": figures["name"], "mesh": sizes, "fits": figures["fits"],
         "analytic": comm_model.analytic_bytes(prepared, sizes),
         "measured": figures.get("collective_bytes"), "compile_s": figures["compile_s"]}
  if row["measured"] is None:
    row["error"] = figures.get("error")
  return row


def _table(rows: list[dict]) -> str:
  head = f"{'model':28s} {'mesh':22s} " + " ".join(f"{k:>22s}" for k in KINDS) + "   ratio"
  lines = [head, " " * 52 + "  (GiB per chip per step: measured / analytic)"]
  for r in rows:
    mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items() if v > 1)
    if r["measured"] is None:
      lines.append(f"{r['name']:28s} {mesh:22s} compile failed: {r.get('error')}")
      continue
    cells = " ".join(f"{r['measured'][k] / GIB:10.2f} /{r['analytic'][k] / GIB:10.2f}"
                     for k in KINDS)
    ratio = r["measured"]["total"] / max(r["analytic"]["total"], 1.0)
    lines.append(f"{r['name']:28s} {mesh:22s} {cells}   {ratio:5.2f}")
  return "\n".join(lines)


def main(argv):
  del argv
  plan.disable_persistent_cache()
  topology = cli.run_or_exit(lambda: chips.parse_topology(_TOPOLOGY.value))
  runs = sweep_spec.select(sweep_spec.load_sweep(_SWEEP.value), _MODELS.value)
  rows = []
  for run in runs:
    config = run.config
    config.data.batch_size = _SEQS.value * topology.num_chips
    meshes = ([{k: int(v) for k, v in (p.split("=") for p in m.split(","))}
               for m in _MESHES.value.split(";")] if _MESHES.value
              else sweep.candidate_meshes(config, topology.num_chips))
    for mesh in meshes:
      rows.append(cli.run_or_exit(lambda: measure(config, topology, mesh)))  # pylint: disable=cell-var-from-loop
  print(_table(rows))
  print(json.dumps({"topology": topology.name, "seqs_per_chip": _SEQS.value, "rows": rows}))


if __name__ == "__main__":
  cli.run(main)
