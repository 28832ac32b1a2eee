#!/usr/bin/env bash
# Sets up .venv when needed, then runs the main job: the tiny study on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WORKDIR="${1:-runs/tiny}"
exec .venv/bin/python -m experiments.train --config=configs/lm_moe.py:tiny --workdir="$WORKDIR"
