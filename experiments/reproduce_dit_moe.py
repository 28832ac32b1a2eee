"""The tiny DiT-MoE study (Fei et al. 2024) on Fashion-MNIST 28x28 in pixel space, offline.

  python -m experiments.reproduce_dit_moe --preset=tiny --workdir=runs/dit

Trains the sweep ``configs/sweeps/dit_moe.py:PRESET`` (finished runs are skipped): dense DiT vs
DiT-MoE at matched active FFN FLOPs, E = 4, 8, 16, shared expert on/off; scores samples with the
in-repo feature classifier (FD-CNN, its floor, conditional accuracy); analyses routing by
timestep, class and position; writes DIR/report.md, DIR/summary.json and DIR/figures/
(moejax/study/dit.py).
"""

import json

from experiments import cli
from moejax.study.dit import run_study

_RUN_STUDY = cli.run_image_study(run_study)


def main(argv):
  del argv
  summary = _RUN_STUDY()
  print(json.dumps({"models": [{k: m.get(k) for k in ("name", "fd_cnn", "conditional_accuracy")}
                               for m in summary["models"]],
                    "fd_cnn_floor": summary["fd_cnn_floor"],
                    "wall_time_s": summary["wall_time_s"]}))


if __name__ == "__main__":
  cli.run(main)
