"""Compare labelled-bone HU of phantom appearance modes with a real lumbar CT crop.

Prints, per source, the HU percentiles (5, 25, 50, 75, 95) of labelled bone and the shares
below 100, 100-200 and above 200 HU; optionally saves a side-by-side picture (bone and
soft-tissue windows) of a mid-sagittal and axial phantom slice vs the real crop.

Run ``python benchmarks/phantom_appearance_vs_real.py [--seeds N] [--png docs/phantom_v2_vs_real.png]``.
The phantom is rendered at the real crop's spacing (1.5 mm) and only its L2-L4 bone is counted
(the crop holds L2-L4, VerSe labels 21-23).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

REAL = Path("/work/shared/data/lumbar_ct_crop")
PCTS = (5, 25, 50, 75, 95)


def bone_stats(values: np.ndarray) -> dict[str, object]:
    """Percentiles and shares (< 100, 100-200, > 200 HU) of bone HU values."""
    v = np.asarray(values, float)
    return {"p": [round(float(x), 1) for x in np.percentile(v, PCTS)], "lt100": float((v < 100).mean()),
            "100_200": float(((v >= 100) & (v <= 200)).mean()), "gt200": float((v > 200).mean()), "n": int(v.size)}


def real_crop() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(ct, bone mask) of the real crop in LPS-like (z, y, x) order, and spacing (z, y, x) mm."""
    ct = sitk.DICOMOrient(sitk.ReadImage(str(REAL / "sub-ct_label-22_ct.nii.gz")), "LPS")
    seg = sitk.DICOMOrient(sitk.ReadImage(str(next(REAL.glob("*seg-vert*")))), "LPS")
    return sitk.GetArrayFromImage(ct).astype(np.float32), sitk.GetArrayFromImage(seg) > 0, tuple(reversed(ct.GetSpacing()))


def phantom(seed: int, spacing, *, appearance: str = "ct", overrides=None):
    """A 1.5 mm phantom around L2-L4: (ct, L2-L4 bone mask, case)."""
    from spinect.phantom import STRUCTURE_CODES, generate_case

    case = generate_case(seed, shape_zyx=(100, 110, 110), spacing_zyx_mm=spacing, appearance=appearance,
                         appearance_overrides=overrides, window_tables=False)
    ct = sitk.GetArrayFromImage(case.ct).astype(np.float32)
    st = sitk.GetArrayFromImage(case.structures)
    return ct, np.isin(st, [STRUCTURE_CODES[n] for n in ("L2", "L3", "L4")]), case


def _row(name: str, s: dict) -> str:
    return (f"{name:<44s} p5/25/50/75/95 = {'/'.join(f'{v:.0f}' for v in s['p'])}   "
            f"<100: {100 * s['lt100']:4.1f} %  100-200: {100 * s['100_200']:4.1f} %  >200: {100 * s['gt200']:4.1f} %")


def picture(real_ct, real_bone, ph_ct, ph_bone, out: Path, title: str) -> None:
    """Mid-sagittal and axial slices through the bone centroid, bone and soft-tissue windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = [(1500, 300), (400, 40)]
    fig, axes = plt.subplots(2, 4, figsize=(16, 8.5))
    for r, (ct, bone, name) in enumerate([(ph_ct, ph_bone, title), (real_ct, real_bone, "real lumbar crop (1.5 mm)")]):
        cz, cy, cx = (int(v) for v in np.round(np.argwhere(bone).mean(axis=0)))
        sag = ct[::-1, :, cx]
        ax_ = ct[cz]
        for c, (w, lvl) in enumerate(windows):
            for k, (img, kind) in enumerate([(sag, "sagittal"), (ax_, "axial")]):
                a = axes[r, 2 * c + k]
                a.imshow(img, cmap="gray", vmin=lvl - w / 2, vmax=lvl + w / 2, interpolation="nearest")
                a.set_title(f"{name}\n{kind}, W {w} / L {lvl}", fontsize=9)
                a.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--png", type=Path, default=None)
    parser.add_argument("--png-seed", type=int, default=1)
    args = parser.parse_args()
    real_ct, real_bone, spacing = real_crop()
    print(_row("real crop (label > 0)", bone_stats(real_ct[real_bone])))
    # the real crop's body interior has a median of 51 HU: also show the ct mode with that marrow
    for mode, overrides in [("v1", None), ("ct", None), ("ct", {"age_years": 75}), ("ct", {"marrow_hu": (40, 70)})]:
        vals, ages = [], []
        for seed in range(args.seeds):
            ct, bone, case = phantom(seed, spacing, appearance=mode, overrides=overrides)
            vals.append(ct[bone])
            ages.append(case.truth["appearance"].get("ct", {}).get("age_years", float("nan")))
        label = f"phantom {mode}" + (f" {overrides}" if overrides else "") + f" ({args.seeds} cases)"
        ages_note = f"  ages {np.round(ages).astype(int).tolist()}" if mode == "ct" and not overrides else ""
        print(_row(label, bone_stats(np.concatenate(vals))), ages_note)
    if args.png:
        ct, bone, case = phantom(args.png_seed, spacing, appearance="ct", overrides={"age_years": 75})
        a = case.truth["appearance"]["ct"]
        picture(real_ct, real_bone, ct, bone, args.png,
                f"phantom ct mode (age {a['age_years']:.0f}, marrow {a['marrow_hu']:.0f} HU, {a['kernel']} kernel)")
        print(f"saved {args.png}")


if __name__ == "__main__":
    main()
