"""Preview picture of a phantom case: axial, sagittal and coronal slices through the L5/S1
foramen, CT (bone and soft-tissue windows) with the bone/nerve labels overlaid."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spinect.io.atomic import atomic_output

__all__ = ["save_preview"]

_COLOURS = {1: (0.95, 0.84, 0.57), 2: (1.0, 0.85, 0.0)}


def _views(volume: np.ndarray, centre: tuple[int, int, int]) -> list[tuple[str, np.ndarray]]:
    z, y, x = centre
    # Radiological display: axial with anterior up and patient left on the right, sagittal with
    # anterior on the left, coronal seen from the front; superior up.
    return [("axial", volume[z]), ("sagittal", volume[:, :, x][::-1]), ("coronal", volume[:, y, :][::-1])]


def save_preview(ct_hu: np.ndarray, labels: np.ndarray, spacing_zyx_mm, centre_zyx: tuple[int, int, int],
                 path: str | os.PathLike, *, title: str = "", marks_zyx: np.ndarray | None = None) -> Path:
    """Write a 2 x 3 PNG: top row CT (soft-tissue window), bottom row CT with label overlay.

    Args:
        ct_hu: (Z, Y, X) CT in HU. labels: (Z, Y, X) uint8 (1 bone, 2 nerve).
        spacing_zyx_mm: voxel size, used for the aspect ratio.
        centre_zyx: voxel the three slices go through (the L5/S1 foramen).
        marks_zyx: optional (N, 3) voxel positions (landmarks) drawn on slices they lie near.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sz, sy, sx = (float(v) for v in spacing_zyx_mm)
    aspects = {"axial": sy / sx, "sagittal": sz / sy, "coronal": sz / sx}
    axes_of = {"axial": (1, 2, 0), "sagittal": (0, 1, 2), "coronal": (0, 2, 1)}  # (row axis, col axis, normal)
    fig, axs = plt.subplots(2, 3, figsize=(13, 8.5))
    for col, ((name, img), (_, lab)) in enumerate(zip(_views(ct_hu, centre_zyx), _views(labels, centre_zyx))):
        for row in range(2):
            ax = axs[row, col]
            window = (-250, 350) if row == 0 else (-400, 1200)
            ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspects[name], interpolation="nearest")
            if row == 1:
                overlay = np.zeros(lab.shape + (4,))
                for value, rgb in _COLOURS.items():
                    overlay[lab == value] = (*rgb, 0.5)
                ax.imshow(overlay, aspect=aspects[name], interpolation="nearest")
                if marks_zyx is not None:
                    _draw_marks(ax, np.asarray(marks_zyx), axes_of[name], centre_zyx, img.shape, name)
            ax.set_title(f"{name}{' + labels' if row else ''}")
            ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


def _draw_marks(ax, marks: np.ndarray, axes: tuple[int, int, int], centre, shape, name: str) -> None:
    r, c, n = axes
    near = np.abs(marks[:, n] - centre[n]) < 6
    rows = marks[near, r]
    if name in ("sagittal", "coronal"):
        rows = shape[0] - 1 - rows
    ax.plot(marks[near, c], rows, "c+", markersize=9, markeredgewidth=1.5)
