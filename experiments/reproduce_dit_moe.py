"""The tiny DiT-MoE study (Fei et al. 2024) on Fashion-MNIST 28x28 in pixel space, offline.

  python -m experiments.reproduce_dit_moe --preset=tiny --workdir=runs/dit

Trains the sweep ``configs/sweeps/dit_moe.py:PRESET`` (finished runs are skipped): dense DiT vs
DiT-MoE at matched active FFN FLOPs, E = 4, 8, 16, shared expert on/off; scores samples with the
in-repo feature classifier (FD-CNN, its floor, conditional accuracy); analyses routing by
timestep, class and position; writes DIR/report.md, DIR/summary.json and DIR/figures/
(moejax/study/dit.py).
"""

import json

from absl import flags

from experiments import cli
from moejax.study.dit import run_study

_PRESET = flags.DEFINE_enum("preset", "tiny", ["tiny", "smoke"], "Sweep preset.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Study directory.", required=True)
_PROCESSES = flags.DEFINE_integer("processes", 2, "Runs trained at a time (child processes).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "Per-run config override, a.b=value.")


def main(argv):
  del argv
  summary = cli.run_or_exit(lambda: run_study(
      _WORKDIR.value, preset=_PRESET.value, processes=_PROCESSES.value,
      overrides=tuple(_OVERRIDE.value)))
  print(json.dumps({"models": [{k: m.get(k) for k in ("name", "fd_cnn", "conditional_accuracy")}
                               for m in summary["models"]],
                    "fd_cnn_floor": summary["fd_cnn_floor"],
                    "wall_time_s": summary["wall_time_s"]}))


if __name__ == "__main__":
  cli.run(main)
