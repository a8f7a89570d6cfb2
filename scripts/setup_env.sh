#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install spinect with its
# pinned dependencies. Safe to run again: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels.
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[test]"
