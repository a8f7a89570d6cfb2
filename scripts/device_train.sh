#!/usr/bin/env bash
# One prepared training run on a lent GPU (default model v2 issue): the carried packages, phantom data made
# on every core (scripts/make_training_mix.py), `spinect train` on the GPU within a time budget
# (--time-limit-min: checkpointed, resumable), and only the run folder back under $OUT.
#   here, once:  bash scripts/device_bundle.sh
#   then:        run(command="bash scripts/device_train.sh", carry=[".device"], timeout_s=600)
# A second call continues the same run: RESUME=1 with the first call's run folder carried back as runs/device_run.
# Then pick a checkpoint here with benchmarks/validate_real_ct.py (real CT decides), and ship it only as
# scripts/ship_default_model.py allows. Settings (environment): N_CASES (64), SEED (9600), TRAIN_MIN (6),
# INIT (default; "none" trains from scratch with BASE_WIDTH), BASE_WIDTH (16), ITERATIONS (20000: the
# schedule's length, the budget stops it earlier), BATCH (8), LR (1e-4 from a model, 1e-3 from scratch),
# VAL_EVERY (250), PRECISION (fp32: bfloat16 gave non-finite steps with the small network), DEVICE (cuda;
# cpu for a dry run), WORKERS (every core), RERENDER (0: off; e.g. 0.5 paints half the patches anew from their
# structure maps on the GPU, docs/phantom.md "Re-rendering from the structure map").
set -euo pipefail
OUT=${OUT:-runs/device_out}
DATA=${DATA:-/tmp/spinect_device_data}
DEVICE=${DEVICE:-cuda}
INIT=${INIT:-default}
started=$(date +%s)
source scripts/device_setup.sh
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 scripts/make_training_mix.py "$DATA" --n "${N_CASES:-64}" --seed "${SEED:-9600}" --workers "${WORKERS:-$(nproc)}" | tail -n 3
echo "data ready after $(( $(date +%s) - started )) s"
if [ "$INIT" = none ]; then
  model=(--base-width "${BASE_WIDTH:-16}"); lr=${LR:-1e-3}
else
  model=(--init "$INIT"); lr=${LR:-1e-4}
fi
resume=()
if [ "${RESUME:-0}" = 1 ]; then resume=(--resume); fi
run_dir=runs/device_run
python3 -m spinect train "$DATA" --out "$run_dir" "${model[@]}" "${resume[@]}" --device "$DEVICE" \
  --iterations "${ITERATIONS:-20000}" --time-limit-min "${TRAIN_MIN:-6}" --val-every "${VAL_EVERY:-250}" \
  --max-val-cases 4 --batch-size "${BATCH:-8}" --lr "$lr" --precision "${PRECISION:-fp32}" --early-nerve-weight 2 \
  --seed "${SEED:-9600}" --rerender "${RERENDER:-0}" --no-progress
mkdir -p "$OUT"
cp -r "$run_dir" "$OUT/"
echo "done after $(( $(date +%s) - started )) s; run folder in $OUT/$(basename "$run_dir")"
