"""The ViT-MoE image sparsity study (V-MoE, Riquelme et al. 2021) on Fashion-MNIST, offline.

  python -m experiments.reproduce_vmoe --preset=tiny --workdir=runs/vmoe

Trains the sweep ``configs/sweeps/vmoe.py:PRESET`` (finished runs are skipped), then measures
accuracy against total parameters at fixed active parameters, the inference capacity curve
with and without Batch Prioritized Routing, expert specialisation by class and task-conditioned
routing; writes DIR/report.md, DIR/summary.json and DIR/figures/ (moejax/study/vmoe.py).
"""

import json

from experiments import cli
from moejax.study.vmoe import run_study

_RUN_STUDY = cli.run_image_study(run_study)


def main(argv):
  del argv
  summary = _RUN_STUDY()
  print(json.dumps({"spearman_accuracy_total_params": summary["spearman_accuracy_total_params"],
                    "task_accuracy": {k: v["accuracy"]
                                      for k, v in summary["task_routing"].items()},
                    "wall_time_s": summary["wall_time_s"]}))


if __name__ == "__main__":
  cli.run(main)
