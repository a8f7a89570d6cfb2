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
# The tested versions (torch 2.13.0 CPU build, monai 1.6.1) come from the constraints file: the
# package itself asks only for ranges (torch>=2.4.1) so that it keeps a user's own PyTorch.
# torch first: an unconstrained torch pulls gigabytes of CUDA wheels.
python -m pip install --quiet -c scripts/constraints.txt torch
python -m pip install --quiet -c scripts/constraints.txt -e ".[test,dicom,ray]"
