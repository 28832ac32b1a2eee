"""The ViT-MoE image sparsity study (V-MoE, Riquelme et al. 2021) on Fashion-MNIST, offline.

  python -m experiments.reproduce_vmoe --preset=tiny --workdir=runs/vmoe

Trains the sweep ``configs/sweeps/vmoe.py:PRESET`` (finished runs are skipped), then measures
accuracy against total parameters at fixed active parameters, the inference capacity curve
with and without Batch Prioritized Routing, expert specialisation by class and task-conditioned
routing; writes DIR/report.md, DIR/summary.json and DIR/figures/ (moejax/study/vmoe.py).
"""

import json

from absl import flags

from experiments import cli
from moejax.study.vmoe import run_study

_PRESET = flags.DEFINE_enum("preset", "tiny", ["tiny", "smoke"], "Sweep preset.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Study directory.", required=True)
_PROCESSES = flags.DEFINE_integer("processes", 2, "Runs trained at a time (child processes).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "Per-run config override, a.b=value.")


def main(argv):
  del argv
  summary = cli.run_or_exit(lambda: run_study(
      _WORKDIR.value, preset=_PRESET.value, processes=_PROCESSES.value,
      overrides=tuple(_OVERRIDE.value)))
  print(json.dumps({"spearman_accuracy_total_params": summary["spearman_accuracy_total_params"],
                    "task_accuracy": {k: v["accuracy"]
                                      for k, v in summary["task_routing"].items()},
                    "wall_time_s": summary["wall_time_s"]}))


if __name__ == "__main__":
  cli.run(main)
