"""Compare labelled-bone HU of phantom appearance modes with a real lumbar CT crop.

Prints, per source, the HU percentiles (5, 25, 50, 75, 95) of labelled bone and the shares
below 100, 100-200 and above 200 HU; optionally saves a side-by-side picture (bone and
soft-tissue windows) of a mid-sagittal and axial phantom slice vs the real crop.

Run ``python benchmarks/phantom_appearance_vs_real.py [--seeds N] [--png docs/phantom_v2_vs_real.png]
[--chest ~/.cache/spinect/real_ct/chest]``. The phantom is rendered at the real crop's spacing (1.5 mm)
with its default anatomy (``--anatomy mesh``: real bone shapes) and only its L2-L4 bone is counted
(the crop holds L2-L4, VerSe labels 21-23). With ``--chest`` (a folder holding the real chest CT
fetched by ``validate_real_ct.py``), that CT's T12-L3 vertebrae are counted too and shown as a third
row of the picture.
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


#: Homogeneous-region HU bands of the noise measurement (after a 5 x 5 in-plane mean).
NOISE_BANDS = {"muscle": (20.0, 80.0), "fat": (-150.0, -60.0), "liver": (60.0, 140.0)}


def noise_figures(ct: np.ndarray, spacing, lo: float, hi: float, roi_mm: float = 20.0) -> dict[str, float] | None:
    """Noise of a CT in its homogeneous regions: square axial ROIs (``roi_mm``) lying wholly where
    the 5 x 5 in-plane mean is within [lo, hi] HU, each less its best-fitting plane.

    Args:
        ct: (z, y, x) HU. spacing: (z, y, x) mm.

    Returns:
        ``n_roi``; ``sd`` (HU, median over ROIs); ``nps_mean`` (cycles/mm, the power-weighted mean
        radial frequency of the in-plane noise power spectrum); ``acf_half_mm`` (in-plane lag where
        the autocorrelation falls to 1/2: the grain size). None without a fitting ROI.
    """
    from scipy import ndimage

    sy, sx = float(spacing[1]), float(spacing[2])
    n = max(8, int(round(roi_mm / sy)))
    sm = ndimage.uniform_filter(ct.astype(np.float32), (1, 5, 5))
    mask = (sm >= lo) & (sm <= hi)
    yy, xx = np.mgrid[:n, :n]
    design = np.stack([np.ones(n * n), yy.ravel(), xx.ravel()], 1)
    sds, power = [], np.zeros((n, n))
    for z in range(ct.shape[0]):
        if mask[z].sum() < n * n:
            continue
        for y in range(0, ct.shape[1] - n, n // 2):
            for x in range(0, ct.shape[2] - n, n // 2):
                if not mask[z, y:y + n, x:x + n].all():
                    continue
                roi = ct[z, y:y + n, x:x + n].astype(float).ravel()
                r = (roi - design @ np.linalg.lstsq(design, roi, rcond=None)[0]).reshape(n, n)
                sds.append(r.std())
                power += np.abs(np.fft.fft2(r)) ** 2
    if not sds:
        return None
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(n, sy), np.fft.fftfreq(n, sx), indexing="ij"))
    acf = np.real(np.fft.ifft2(power))
    acf /= acf[0, 0]
    r = 0.5 * (acf[0, : n // 2] + acf[: n // 2, 0])
    k = int(np.argmax(r < 0.5)) if np.any(r < 0.5) else n // 2 - 1
    half = (k - 1 + (r[k - 1] - 0.5) / (r[k - 1] - r[k])) * sy if k > 0 else 0.0
    return {"n_roi": len(sds), "sd": float(np.median(sds)), "nps_mean": float((f * power).sum() / power.sum()),
            "acf_half_mm": float(half)}


def _noise_row(name: str, ct: np.ndarray, spacing) -> str:
    parts = []
    for tissue, (lo, hi) in NOISE_BANDS.items():
        r = noise_figures(ct, spacing, lo, hi)
        if r is not None and r["n_roi"] >= 3:
            parts.append(f"{tissue}: SD {r['sd']:.0f} HU, NPS mean {r['nps_mean']:.2f} /mm, ACF 1/2 at {r['acf_half_mm']:.2f} mm "
                         f"({r['n_roi']} ROIs)")
    return f"noise {name:<38s} " + ("; ".join(parts) or "no homogeneous ROI")


def real_crop(*, with_l3: bool = False):
    """(ct, bone mask) of the real crop in LPS-like (z, y, x) order, and spacing (z, y, x) mm
    (``with_l3``: and the L3 mask, VerSe label 22, where the picture's axial slice is cut)."""
    ct = sitk.DICOMOrient(sitk.ReadImage(str(REAL / "sub-ct_label-22_ct.nii.gz")), "LPS")
    seg = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(next(REAL.glob("*seg-vert*")))), "LPS"))
    out = (sitk.GetArrayFromImage(ct).astype(np.float32), seg > 0, tuple(reversed(ct.GetSpacing())))
    return (*out, seg == 22) if with_l3 else out


#: Chest CT label ids (structures.csv of the fetched case) of T12, L1, L2 and L3.
CHEST_LUMBAR_IDS = (32, 31, 30, 29)


def chest_ct(folder: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(ct, T12-L3 mask, spacing (z, y, x) mm) of the real chest CT in ``folder``, LPS (z, y, x)."""
    ct = sitk.DICOMOrient(sitk.ReadImage(str(folder / "cxr_ct.nii.gz")), "LPS")
    seg = sitk.DICOMOrient(sitk.ReadImage(str(folder / "cxr_labels.nii.gz")), "LPS")
    bone = np.isin(sitk.GetArrayFromImage(seg), CHEST_LUMBAR_IDS)
    return sitk.GetArrayFromImage(ct).astype(np.float32), bone, tuple(reversed(ct.GetSpacing()))


def phantom(seed: int, spacing, *, appearance: str = "ct", overrides=None, anatomy: str = "mesh", shape=(100, 110, 110)):
    """A 1.5 mm phantom around L2-L4: (ct, L2-L4 bone mask, case); ``shape``: grid (z, y, x)."""
    from spinect.phantom import STRUCTURE_CODES, generate_case

    case = generate_case(seed, shape_zyx=shape, spacing_zyx_mm=spacing, appearance=appearance,
                         appearance_overrides=overrides, window_tables=False, anatomy=anatomy)
    ct = sitk.GetArrayFromImage(case.ct).astype(np.float32)
    st = sitk.GetArrayFromImage(case.structures)
    return ct, np.isin(st, [STRUCTURE_CODES[n] for n in ("L2", "L3", "L4")]), case


def _row(name: str, s: dict) -> str:
    return (f"{name:<44s} p5/25/50/75/95 = {'/'.join(f'{v:.0f}' for v in s['p'])}   "
            f"<100: {100 * s['lt100']:4.1f} %  100-200: {100 * s['100_200']:4.1f} %  >200: {100 * s['gt200']:4.1f} %")


def picture(rows, out: Path) -> None:
    """Mid-sagittal and axial slices through each row's bone centroid, bone and soft-tissue windows.

    Args:
        rows: (ct (z, y, x) HU, bone mask (z, y, x), spacing (z, y, x) mm, title[, level mask]) per
            row; with a level mask (e.g. L3) the axial slice is cut through that vertebra's
            centroid (mid-body), not the bone centroid, which may fall on a disc and cut an
            endplate obliquely.
        out: PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = [(1500, 300), (400, 40)]
    fig, axes = plt.subplots(len(rows), 4, figsize=(16, 4.25 * len(rows)))
    for r, (ct, bone, spacing, name, *level) in enumerate(rows):
        cz, cy, cx = (int(v) for v in np.round(np.argwhere(bone).mean(axis=0)))
        if level and level[0] is not None and level[0].any():
            cz = int(np.round(np.argwhere(level[0])[:, 0].mean()))
        # the same field of view (about 150 mm) around the bone centroid in every row
        hz, hy, hx = (int(round(75.0 / s)) for s in spacing)
        sag = ct[max(cz - hz, 0):cz + hz, max(cy - hy, 0):cy + hy, cx][::-1]
        ax_ = ct[cz, max(cy - hy, 0):cy + hy, max(cx - hx, 0):cx + hx]
        for c, (w, lvl) in enumerate(windows):
            for k, (img, kind, aspect) in enumerate([(sag, "sagittal", spacing[0] / spacing[1]), (ax_, "axial", spacing[1] / spacing[2])]):
                a = axes[r, 2 * c + k]
                a.imshow(img, cmap="gray", vmin=lvl - w / 2, vmax=lvl + w / 2, interpolation="nearest", aspect=aspect)
                a.set_title(f"{name}\n{kind}, W {w} / L {lvl}", fontsize=9)
                a.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6, help="phantom cases per histogram row (0: only the picture)")
    parser.add_argument("--png", type=Path, default=None)
    parser.add_argument("--png-seed", type=int, default=1)
    parser.add_argument("--anatomy", choices=("mesh", "primitive"), default="mesh",
                        help="phantom skeleton: real bone shapes (default) or v1 primitives")
    parser.add_argument("--chest", type=Path, default=None,
                        help="folder with the real chest CT (cxr_ct.nii.gz, cxr_labels.nii.gz), e.g. validate_real_ct.py's cache")
    args = parser.parse_args()
    real_ct, real_bone, spacing, real_l3 = real_crop(with_l3=True)
    print(_row("real crop (label > 0)", bone_stats(real_ct[real_bone])))
    chest = chest_ct(args.chest) if args.chest else None
    if chest is not None:
        print(_row("real chest CT T12-L3 (model labels)", bone_stats(chest[0][chest[1]])))
    print(_noise_row("real crop (1.5 mm)", real_ct, spacing))
    if chest is not None:
        print(_noise_row("real chest CT (0.7 mm, 2.5 mm slices)", chest[0], chest[2]))
    # the real crop's body interior has a median of 51 HU: also show the ct mode with that marrow
    for mode, overrides in [("v1", None), ("ct", None), ("ct", {"age_years": 75}), ("ct", {"marrow_hu": (40, 70)})] * (args.seeds > 0):
        vals, ages = [], []
        for seed in range(args.seeds):
            ct, bone, case = phantom(seed, spacing, appearance=mode, overrides=overrides, anatomy=args.anatomy)
            vals.append(ct[bone])
            if mode == "ct" and not overrides:  # the phantom's noise, measured as on the real cases
                a = case.truth["appearance"]["ct"]
                print(_noise_row(f"phantom seed {seed} ({a['kernel']}, drawn SD {a['noise_sd_hu']:.0f})", ct, spacing))
            ages.append(case.truth["appearance"].get("ct", {}).get("age_years", float("nan")))
        label = f"phantom {args.anatomy} {mode}" + (f" {overrides}" if overrides else "") + f" ({args.seeds} cases)"
        ages_note = f"  ages {np.round(ages).astype(int).tolist()}" if mode == "ct" and not overrides else ""
        print(_row(label, bone_stats(np.concatenate(vals))), ages_note)
    if args.png:
        from spinect.phantom import STRUCTURE_CODES

        # a wider grid than the histogram's (the picture shows 150 mm around the bone)
        ct, bone, case = phantom(args.png_seed, spacing, appearance="ct", overrides={"age_years": 75}, anatomy=args.anatomy,
                                 shape=(100, 140, 140))
        l3 = sitk.GetArrayFromImage(case.structures) == STRUCTURE_CODES["L3"]
        a = case.truth["appearance"]["ct"]
        rows = [(ct, bone, spacing, f"phantom v2 ({args.anatomy} anatomy, ct mode)\nage {a['age_years']:.0f}, "
                                    f"marrow {a['marrow_hu']:.0f} HU, {a['kernel']} kernel)", l3),
                (real_ct, real_bone, spacing, "real lumbar crop (1.5 mm)", real_l3)]
        if chest is not None:
            rows.append((*chest, "real contrast chest CT, T12-L3\n(0.7 x 0.7 x 2.5 mm)"))
        picture(rows, args.png)
        print(f"saved {args.png}")


if __name__ == "__main__":
    main()
