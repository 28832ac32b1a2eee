"""Plan runs on TPU slices by compiling their train step ahead of time (no TPU needed).

One config on one slice (per-chip memory, FLOPs, roofline step time and MFU, whether it fits,
then one JSON line):

  python -m experiments.plan --config=configs/lm_moe.py:paper --config.model.d_model=2048 \
      --config.model.moe.num_experts=128 --config.model.moe.top_k=16 --topology=v5p:4x4x4 \
      [--mesh=data=1,fsdp=64] [--microbatches=N]

A sweep (for each model the smallest slice and mesh from a candidate list that fits; a table,
a CSV and one JSON line):

  python -m experiments.plan --sweep=configs/sweeps/optimal_sparsity.py:paper --chip=v5p \
      [--models=REGEX] [--max_chips=1024] [--csv=plan.csv]   # resumes from an existing CSV

Needs libtpu (requirements-tpu.txt; scripts/setup.sh installs it with MOEJAX_TPU_COMPILER=1).
"""

import json

from absl import flags

from experiments import cli
from experiments.flags import CONFIG
from moejax.planning import chips, plan, sweep

_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice, e.g. v5p:4x4x4 (64 chips).")
_MESH = flags.DEFINE_string("mesh", None, "Mesh axis sizes, e.g. data=2,fsdp=32 (replaces "
                            "config.mesh; axes left out get size 1; one may be -1).")
_MICROBATCHES = flags.DEFINE_integer("microbatches", None, "config.train.microbatches.")
_DUMP_HLO = flags.DEFINE_string("dump_hlo", None, "Write the compiled program's HLO text here.")
_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file and preset: plan every run.")
_CHIP = flags.DEFINE_string("chip", "v5p", f"Sweep: chip kind, one of {sorted(chips.CHIPS)}.")
_MODELS = flags.DEFINE_string("models", None, "Sweep: only runs whose name matches this regex.")
_MAX_CHIPS = flags.DEFINE_integer("max_chips", 1024, "Sweep: largest slice tried.")
_CSV = flags.DEFINE_string("csv", "plan.csv", "Sweep: the table as CSV.")


def _mesh(text):
  if not text:
    return None
  try:
    return {k.strip(): int(v) for k, v in (part.split("=") for part in text.split(","))}
  except ValueError:
    raise cli.ConfigError(f"--mesh={text!r}: expected AXIS=SIZE[,AXIS=SIZE...], "
                          "e.g. data=2,fsdp=32") from None


def main(argv):
  del argv
  plan.disable_persistent_cache()
  if _SWEEP.value:
    rows = cli.run_or_exit(lambda: sweep.plan_sweep(
        _SWEEP.value, chip=_CHIP.value, models=_MODELS.value, max_chips=_MAX_CHIPS.value,
        microbatches=_MICROBATCHES.value, csv_path=_CSV.value))
    print(sweep.format_table(rows))
    print(json.dumps({"sweep": _SWEEP.value, "csv": _CSV.value, "rows": rows}))
    return
  if not _TOPOLOGY.value:
    raise SystemExit("error: give --topology=CHIP:AxBxC (e.g. v5p:4x4x4) or --sweep=FILE:PRESET")
  topology = cli.run_or_exit(lambda: chips.parse_topology(_TOPOLOGY.value))
  figures = cli.run_or_exit(lambda: plan.plan_run(CONFIG.value, topology, mesh=_mesh(_MESH.value),
                                                  microbatches=_MICROBATCHES.value,
                                                  hlo_path=_DUMP_HLO.value))
  print(plan.format_plan(figures))
  print(json.dumps(figures))


if __name__ == "__main__":
  cli.run(main)
