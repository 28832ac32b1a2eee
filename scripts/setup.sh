#!/usr/bin/env bash
# Creates .venv (when missing) with the pinned requirements and moejax installed editable.
# Also installs Debian's dataset-fashion-mnist when apt-get is usable (optional: image studies),
# and the TPU compiler (requirements-tpu.txt, ~200 MB download) into .venv/tpu-compiler for
# ahead-of-time pod plans (experiments/plan.py); MOEJAX_TPU_COMPILER=0 skips it.
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
tpu_stamp=.venv/tpu-compiler/.moejax-requirements-tpu
if [ "${MOEJAX_TPU_COMPILER:-1}" != 0 ] && { [ ! -f "$tpu_stamp" ] \
    || ! cmp -s requirements-tpu.txt "$tpu_stamp"; }; then
  echo "[setup] installing the TPU compiler for pod plans (requirements-tpu.txt, ~200 MB)"
  if .venv/bin/python -m pip install -q --no-deps --upgrade --target .venv/tpu-compiler \
      -r requirements-tpu.txt; then
    cp requirements-tpu.txt "$tpu_stamp"
  else
    echo "[setup] note: libtpu not installed (only experiments/plan.py and its tests need it)"
  fi
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
    || echo "[setup] note: dataset-fashion-mnist not installed (only image studies need it)"
fi
