#!/usr/bin/env bash
# Sets up .venv when needed, then runs the main job: the tiny reasoning-vs-memorization study of
# optimal MoE sparsity on CPU (sweep, suite evaluation, law fits, figures, report). Re-running
# resumes: finished runs are skipped. Writes WORKDIR/report.md and WORKDIR/summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WORKDIR="${1:-runs/study}"
exec .venv/bin/python -m experiments.reproduce_optimal_sparsity --preset=tiny \
  --workdir="$WORKDIR" --processes=2
