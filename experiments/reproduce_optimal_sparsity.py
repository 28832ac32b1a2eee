"""Reproduce the reasoning-vs-memorization study of optimal MoE sparsity at small scale.

  python -m experiments.reproduce_optimal_sparsity --preset=tiny --workdir=runs/study
  python -m experiments.reproduce_optimal_sparsity --preset=small --workdir=runs/small \
      --processes=2    # all seven findings: + iso-FLOP and lr / init sweeps, >= 2 seeds
                       # (configs/sweeps/optimal_sparsity.py:SMALL: ~1 hour on 2 cores)

Trains the sweep ``configs/sweeps/optimal_sparsity.py:PRESET`` (finished runs are skipped),
evaluates every model on the memorization and reasoning suites, fits the routed scaling law,
draws the figures and writes DIR/report.md and DIR/summary.json. Ends with a JSON line of the
verdicts, a table of the seven verdicts (finding, verdict, one line of numbers) and the path of
report.md.

  --grpo   also post-trains every finished model with GRPO on the reasoning suite and evaluates it
           again (grpo_* columns, DIR/sweep/runs/NAME/grpo.json; finished ones are reused).
           Settings: configs/grpo.py (``smoke`` for --preset=smoke, else ``tiny``), or e.g.
           --grpo_config=configs/grpo.py:tiny --grpo_config.steps=60.
"""

import os

# Before any library import: TensorFlow (pulled in by the data pipeline) prints CUDA and oneDNN
# start-up messages otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import json  # noqa: E402  (after the environment is set)

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from configs import grpo as grpo_configs  # noqa: E402
from configs.sweeps import optimal_sparsity  # noqa: E402
from experiments import cli  # noqa: E402
from moejax.study import report  # noqa: E402
from moejax.study.pipeline import run_study  # noqa: E402

_PRESET = flags.DEFINE_enum("preset", "tiny",
                            [p for p in optimal_sparsity.PRESETS if p != "paper"],
                            "Sweep preset (configs/sweeps/optimal_sparsity.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Study directory.", required=True)
_PROCESSES = flags.DEFINE_integer("processes", 1, "Runs trained at a time (child processes).")
_BACKEND = flags.DEFINE_enum("backend", "local", ["local", "ray"], "Where runs execute.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "Per-run config override, a.b=value.")
_GRPO = flags.DEFINE_bool("grpo", False, "Also post-train every finished model with GRPO.")
_GRPO_CONFIG = config_flags.DEFINE_config_file(
    "grpo_config", None, "GRPO config, e.g. configs/grpo.py:tiny (default: by --preset).")


# The smoke sweep trains on synthetic tokens; the smoke *study* points it at the smoke build of
# the data suites so that every stage (evaluation, self-consistency at n = 1, 2, 4 included)
# runs, in about a minute per run.
PRESET_OVERRIDES = {
    "smoke": ("data.source=suites", "data.preset=smoke", "data.seq_len=128",
              "model.vocab_size=256", "eval.max_items=32", "eval.batch_size=32",
              "eval.sc_samples=4", "eval.sc_ns=[1,2,4]"),
}


def main(argv):
  del argv
  overrides = PRESET_OVERRIDES.get(_PRESET.value, ()) + tuple(_OVERRIDE.value)
  grpo = None
  if _GRPO.value:
    grpo = _GRPO_CONFIG.value or grpo_configs.get_config(
        "smoke" if _PRESET.value == "smoke" else "tiny")
  summary = cli.run_or_exit(lambda: run_study(
      f"configs/sweeps/optimal_sparsity.py:{_PRESET.value}", _WORKDIR.value,
      preset=_PRESET.value, processes=_PROCESSES.value, backend=_BACKEND.value,
      overrides=overrides, grpo=grpo))
  print(json.dumps({"memorization_spearman_total_params":
                    summary["memorization_spearman_total_params"],
                    "verdicts": {v["finding"]: v["verdict"] for v in summary["verdicts"]},
                    **({"grpo_reason_accuracy": {
                        name: [row.get("reason_accuracy"), row.get("grpo_reason_accuracy")]
                        for name, row in summary["grpo"].items()}} if "grpo" in summary else {})}))
  print(f"\nFindings (Nakamura et al. 2025; details in the report):\n"
        f"{report.verdict_table(summary['verdicts'])}\n\n"
        f"Report: {os.path.abspath(os.path.join(_WORKDIR.value, 'report.md'))}")


if __name__ == "__main__":
  cli.run(main)
