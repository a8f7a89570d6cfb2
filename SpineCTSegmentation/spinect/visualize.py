"""Pictures of results: CT slices with the bone/nerve labels overlaid (PNG, matplotlib Agg)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinect.io.atomic import atomic_output

__all__ = ["save_overlay_png", "LABEL_COLOURS_RGB"]

#: Display colours (RGB 0..1) per label value: bone ivory, nerve yellow (as the .seg.nrrd writer).
LABEL_COLOURS_RGB = {1: (0.945, 0.839, 0.569), 2: (0.95, 0.85, 0.10)}

#: Overlay opacity per label value: nerves drawn nearly opaque so they stand out against bone.
_LABEL_ALPHA = {1: 0.35, 2: 0.85}
_LABEL_NAMES = {1: "bone", 2: "nerve"}


def save_overlay_png(
    ct: sitk.Image,
    labels: sitk.Image,
    path: str | os.PathLike,
    *,
    truth: sitk.Image | None = None,
    centre_zyx: tuple[int, int, int] | None = None,
    title: str = "",
) -> Path:
    """Axial, coronal and sagittal CT slices (bone window) with labels overlaid.

    Slices are resampled to 1 mm isotropic first so anisotropic scans are not distorted.
    With ``truth``, a second row shows the truth the same way.

    Args:
        ct: CT in HU; labels, truth: UInt8 label images on ``ct``'s grid.
        centre_zyx: voxel (on the 1 mm display grid) the slices go through; default: the
            centroid of the nerve label (else the volume centre).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spinect.preprocess import resample_to_spacing

    def iso(img: sitk.Image, interpolation: str, default: float) -> np.ndarray:
        return sitk.GetArrayFromImage(resample_to_spacing(img, (1.0, 1.0, 1.0), interpolation=interpolation, default_value=default))

    ct_arr = iso(ct, "linear", -1024.0)
    rows = [("prediction", iso(labels, "nearest", 0))]
    if truth is not None:
        rows.append(("truth", iso(truth, "nearest", 0)))
    if centre_zyx is None:
        nerve = np.argwhere(rows[0][1] == 2)
        centre_zyx = tuple(int(v) for v in (nerve.mean(axis=0) if len(nerve) else np.array(ct_arr.shape) / 2))
    z, y, x = centre_zyx
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 4.2 * len(rows)), squeeze=False)
    for r, (name, lab) in enumerate(rows):
        views = [("axial", ct_arr[z], lab[z]), ("coronal", ct_arr[:, y][::-1], lab[:, y][::-1]),
                 ("sagittal", ct_arr[:, :, x][::-1], lab[:, :, x][::-1])]
        for c, (view, img, lbl) in enumerate(views):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=-400, vmax=1200, interpolation="nearest")
            overlay = np.zeros(lbl.shape + (4,))
            for value, rgb in LABEL_COLOURS_RGB.items():
                overlay[lbl == value] = (*rgb, _LABEL_ALPHA[value])
            ax.imshow(overlay, interpolation="nearest")
            ax.set_title(f"{name}: {view}")
            ax.axis("off")
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=(*rgb, _LABEL_ALPHA[v]), edgecolor="black", label=_LABEL_NAMES[v])
               for v, rgb in LABEL_COLOURS_RGB.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return Path(path)
