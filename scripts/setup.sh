#!/usr/bin/env bash
# Creates .venv (when missing) with the pinned requirements and moejax installed editable.
# Also installs Debian's dataset-fashion-mnist when apt-get is usable (optional: image studies).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.moejax-requirements
if [ ! -f "$stamp" ] || ! cmp -s requirements.txt "$stamp"; then
  echo "[setup] installing requirements (first time: ~1-2 minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  cp requirements.txt "$stamp"
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
    || echo "[setup] note: dataset-fashion-mnist not installed (only image studies need it)"
fi
