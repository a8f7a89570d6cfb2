#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, generate a sample lumbosacral CT (phantom),
# segment it with the shipped default model, write the segmentation + an overlay PNG, print Dice.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
python scripts/demo.py "$@"
