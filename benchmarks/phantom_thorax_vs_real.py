"""Figure docs/phantom_thorax_vs_real.png: a "chest" phantom next to a real contrast chest CT.

Axial (mid-thorax), coronal and sagittal slices, soft-tissue (W400/L40) and bone (W1500/L300)
windows; the phantom's bone label is outlined. Usage:
``python benchmarks/phantom_thorax_vs_real.py [--seed 0] [--out docs/phantom_thorax_vs_real.png] [--spacing 1.5]``
(the real CT is read from ``~/.cache/spinect/real_ct/chest/cxr_ct.nii.gz`` when present).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from scipy import ndimage  # noqa: E402

from spinect.phantom import generate_case  # noqa: E402

REAL = Path.home() / ".cache/spinect/real_ct/chest/cxr_ct.nii.gz"


def _iso(image: sitk.Image, step: float) -> np.ndarray:
    """Array (z, y, x) resampled to ``step`` mm cubes, LPS identity direction."""
    image = sitk.DICOMOrient(image, "LPS")
    size = [int(round(n * s / step)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (step,) * 3,
                        image.GetDirection(), -1024.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _slices(vol: np.ndarray, z: int, y: int, x: int):
    # radiological convention: the patient's left (+x in LPS) on the image right, anterior up
    ax = vol[z]
    co = vol[:, y, :][::-1]
    sa = vol[:, :, x][::-1]
    return ax, co, sa


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spacing", type=float, default=1.5)
    ap.add_argument("--out", default="docs/phantom_thorax_vs_real.png")
    ap.add_argument("--no-real", action="store_true")
    args = ap.parse_args()
    step = args.spacing
    shape = (int(300 / step), int(260 / step), int(360 / step))
    case = generate_case(args.seed, shape_zyx=shape, spacing_zyx_mm=(step,) * 3, field="chest", window_tables=False,
                         appearance_overrides={"iv_contrast": True})
    ct = sitk.GetArrayFromImage(case.ct).astype(np.float32)
    lab = sitk.GetArrayFromImage(case.labels)
    st = sitk.GetArrayFromImage(case.structures)
    # axial through the heart, coronal through the vertebral bodies' front, sagittal at the midline
    zc = int(np.argmax((st == 128).sum(axis=(1, 2)))) if np.any(st == 128) else shape[0] // 2
    xc = shape[2] // 2
    spine = np.argwhere(st[:, :, xc] == 14)
    yc = int(np.median(spine[:, 1])) - int(25 / step) if len(spine) else shape[1] // 2
    rows = [("phantom", ct, lab, (zc, yc, xc))]
    if REAL.exists() and not args.no_real:
        real = _iso(sitk.ReadImage(str(REAL)), step)
        rl = REAL.parent / "cxr_labels.nii.gz"
        rlab = None
        if rl.exists():
            r = sitk.ReadImage(str(rl))
            r = sitk.Resample(sitk.DICOMOrient(r, "LPS"), [int(round(n * s / step)) for n, s in zip(sitk.DICOMOrient(r, "LPS").GetSize(), r.GetSpacing())],
                              sitk.Transform(), sitk.sitkNearestNeighbor, sitk.DICOMOrient(r, "LPS").GetOrigin(), (step,) * 3,
                              sitk.DICOMOrient(r, "LPS").GetDirection(), 0, sitk.sitkUInt8)
            rlab = sitk.GetArrayFromImage(r)
        if rlab is not None and rlab.shape == real.shape:
            heart = rlab == 51
            rz = int(np.argmax(heart.sum(axis=(1, 2)))) if heart.any() else real.shape[0] // 2
            vert = np.isin(rlab, list(range(29, 47)))
            rx = int(np.median(np.argwhere(vert)[:, 2])) if vert.any() else real.shape[2] // 2
            ry = int(np.median(np.argwhere(vert)[:, 1])) - int(25 / step) if vert.any() else real.shape[1] // 2
            bone = (np.isin(rlab, list(range(25, 51)) + list(range(92, 117)))).astype(np.uint8)
        else:
            rz, ry, rx = (n // 2 for n in real.shape)
            bone = None
        rows.append(("real chest CT", real, bone, (rz, ry, rx)))
    fig, axes = plt.subplots(2 * len(rows), 3, figsize=(15, 10 * len(rows)), facecolor="black")
    for r, (name, vol, bone, (z, y, x)) in enumerate(rows):
        for w, (width, level) in enumerate(((400, 40), (1500, 300))):
            views = _slices(vol, z, y, x)
            outl = _slices(bone, z, y, x) if bone is not None else (None,) * 3
            for c, (img, title) in enumerate(zip(views, ("axial", "coronal", "sagittal"))):
                a = axes[2 * r + w, c]
                a.imshow(img, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, interpolation="nearest")
                if outl[c] is not None and w == 1:
                    a.contour(outl[c] > 0, levels=[0.5], colors="orange", linewidths=0.5)
                a.set_title(f"{name} {title} W{width}/L{level}", color="white", fontsize=9)
                a.axis("off")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=70, facecolor="black")
    print(args.out)


if __name__ == "__main__":
    main()
