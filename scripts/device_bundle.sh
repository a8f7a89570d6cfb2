#!/usr/bin/env bash
# Pack what the lent GPU machine lacks (MONAI, SimpleITK, slicerio, pynrrd; it has torch, numpy, scipy,
# scikit-image, matplotlib, rich, tqdm) into .device/ (ignored by git), for `run(carry=[".device"])`.
# A device run takes the working tree plus carried paths up to 64 MiB: the tree is ~15 MB and SimpleITK's
# wheel alone 53 MB, so SimpleITK travels unpacked and xz-compressed (29 MB). scripts/device_setup.sh
# unpacks everything on the device. Run once here, in any folder:  bash scripts/device_bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
rm -rf .device && mkdir -p .device/wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .device/wheels \
  monai==1.6.1 SimpleITK==2.5.7 slicerio==1.4 pynrrd==1.1.3
sitk=$(ls .device/wheels/simpleitk-*.whl)
unpacked=$(mktemp -d)
python3 -m zipfile -e "$sitk" "$unpacked"
tar -C "$unpacked" -cJf .device/simpleitk.tar.xz .
rm -rf "$unpacked" "$sitk"
tree_bytes=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
carry_bytes=$(du -sb .device | cut -f1)
echo "tree $((tree_bytes / 1048576)) MiB + .device $((carry_bytes / 1048576)) MiB = $(((tree_bytes + carry_bytes) / 1048576)) MiB (a device run takes 64 MiB)"
[ $((tree_bytes + carry_bytes)) -lt $((64 * 1048576)) ] || { echo "too large for a device run" >&2; exit 1; }
