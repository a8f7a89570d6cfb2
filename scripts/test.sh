#!/usr/bin/env bash
# The test command: sets up .venv (installing what it needs) and runs the pytest suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export CUDA_VISIBLE_DEVICES=""   # tests are CPU-only and must give the same results everywhere
python -m pytest Testing "$@"
