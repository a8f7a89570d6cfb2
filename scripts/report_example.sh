#!/usr/bin/env bash
# Make the example case report of docs/report_example.png: a primitive-anatomy phantom, segmented with the
# default model, its left and right L5/S1 Kambin triangles measured on that segmentation (right: best-view
# search with heat map and needle path), then `spinect report` (HTML, and PDF where Chromium is installed)
# and a headless-Chromium screenshot of the page. About 1 minute on 2 cores.
#   bash scripts/report_example.sh [OUT_DIR]      (default out/report_example)
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
OUT="${1:-out/report_example}"
mkdir -p "$OUT"
cd "$OUT"
spinect phantom . --n 1 --seed 0 --anatomy primitive --no-degeneration
spinect segment case_000_ct.nii.gz case_000.seg.nrrd --device cpu
spinect triangles case_000.seg.nrrd --ct case_000_ct.nii.gz --structures case_000_structures.nii.gz --auto \
    --level L5S1 --side right --optimize --json kambin_L5S1_right.json --heatmap kambin_L5S1_right.png
spinect triangles case_000.seg.nrrd --structures case_000_structures.nii.gz --auto \
    --level L5S1 --side left --theta 30 --json kambin_L5S1_left.json
CHROMIUM="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
PDF=()
[ -n "$CHROMIUM" ] && PDF=(--pdf case_000_report.pdf)
spinect report case_000_report.html --seg case_000.seg.nrrd --triangles kambin_L5S1_right.json kambin_L5S1_left.json \
    --case-id "phantom case_000 (synthetic)" "${PDF[@]}"
if [ -n "$CHROMIUM" ]; then
  PROFILE="$(mktemp -d)"
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
      --disable-component-update --disable-sync --disable-quic --user-data-dir="$PROFILE" --hide-scrollbars \
      --window-size=1000,3000 --screenshot="$PWD/case_000_report.png" "file://$PWD/case_000_report.html" 2>/dev/null
  rm -rf "$PROFILE"
  echo "screenshot: $OUT/case_000_report.png"
else
  echo "no Chromium: no PDF and no screenshot (Debian: apt-get install chromium)"
fi
