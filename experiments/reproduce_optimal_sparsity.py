"""Reproduce the reasoning-vs-memorization study of optimal MoE sparsity at small scale.

  python -m experiments.reproduce_optimal_sparsity --preset=tiny --workdir=runs/study

Trains the sweep ``configs/sweeps/optimal_sparsity.py:PRESET`` (finished runs are skipped),
evaluates every model on the memorization and reasoning suites, fits the routed scaling law,
draws the figures and writes DIR/report.md and DIR/summary.json.
"""

import json

from absl import flags

from experiments import cli
from moejax.study.pipeline import run_study

_PRESET = flags.DEFINE_enum("preset", "tiny", ["tiny", "smoke", "isoflop_tiny"], "Sweep preset.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Study directory.", required=True)
_PROCESSES = flags.DEFINE_integer("processes", 1, "Runs trained at a time (child processes).")
_BACKEND = flags.DEFINE_enum("backend", "local", ["local", "ray"], "Where runs execute.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "Per-run config override, a.b=value.")


# The smoke sweep trains on synthetic tokens; the smoke *study* points it at the smoke build of
# the data suites so that every stage (evaluation included) runs, in about a minute per run.
PRESET_OVERRIDES = {
    "smoke": ("data.source=suites", "data.preset=smoke", "data.seq_len=128",
              "model.vocab_size=256", "eval.max_items=32", "eval.batch_size=32"),
}


def main(argv):
  del argv
  overrides = PRESET_OVERRIDES.get(_PRESET.value, ()) + tuple(_OVERRIDE.value)
  summary = cli.run_or_exit(lambda: run_study(
      f"configs/sweeps/optimal_sparsity.py:{_PRESET.value}", _WORKDIR.value,
      preset=_PRESET.value, processes=_PROCESSES.value, backend=_BACKEND.value,
      overrides=overrides))
  print(json.dumps({"memorization_spearman_total_params":
                    summary["memorization_spearman_total_params"],
                    "verdicts": {v["finding"]: v["verdict"] for v in summary["verdicts"]}}))


if __name__ == "__main__":
  cli.run(main)
