"""Median smoothing of a multi-class label map with a kernel given in mm (Slicer's rule).

Slicer's Segment Editor "Smoothing → Median" turns a kernel size in mm into an odd voxel count
per axis: ``round((mm / spacing + 1) / 2) * 2 - 1``. So 1.5 mm smooths a 0.7 mm grid (3 voxels)
and leaves a 1 mm grid unchanged (1 voxel). Like Slicer, each segment is smoothed as a binary
mask (a voxel belongs to class c when more than half of its kernel neighbourhood does); with
disjoint inputs at most one class can hold a strict majority, so outputs stay disjoint.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["median_kernel_voxels", "median_smooth_labels"]


def median_kernel_voxels(kernel_mm: float, spacing_zyx_mm: Sequence[float]) -> tuple[int, ...]:
    """Odd kernel size in voxels per axis for a ``kernel_mm`` median (Slicer's rule)."""
    if kernel_mm < 0:
        raise ValueError(f"kernel_mm must be >= 0, got {kernel_mm}")
    sizes = []
    for spacing in spacing_zyx_mm:
        # Python's round (half to even), exactly as Slicer's SegmentEditorSmoothingEffect.
        sizes.append(max(1, int(round((kernel_mm / float(spacing) + 1.0) / 2.0)) * 2 - 1))
    return tuple(sizes)


def median_smooth_labels(
    labels_zyx: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    *,
    kernel_mm: float = 1.5,
    num_classes: int = 3,
) -> np.ndarray:
    """Median-smooth each foreground class of ``labels_zyx`` (0 = background).

    Args:
        labels_zyx: (z, y, x) integer label map with values in ``range(num_classes)``.
        spacing_zyx_mm: voxel size (z, y, x), mm.
        kernel_mm: median kernel size, mm (SPINECT / Slicer default 1.5).
        num_classes: number of classes including background.

    Returns:
        uint8 (z, y, x) label map; identical to the input when the kernel is one voxel.
    """
    kernel = median_kernel_voxels(kernel_mm, spacing_zyx_mm)
    labels = np.asarray(labels_zyx)
    if all(k == 1 for k in kernel):
        return labels.astype(np.uint8, copy=True)
    out = np.zeros(labels.shape, dtype=np.uint8)
    for cls in range(1, num_classes):
        mask = labels == cls
        if not mask.any():
            continue
        box = _bounding_box(mask, margin=[k // 2 + 1 for k in kernel])
        # Share of the kernel neighbourhood in this class; > 1/2 is the binary median.
        share = ndimage.uniform_filter(mask[box].astype(np.float32), size=kernel, mode="nearest")
        out[box][share > 0.5] = cls
    return out


def _bounding_box(mask: np.ndarray, *, margin: Sequence[int]) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask grown by ``margin`` voxels per axis (clipped).

    Found from ``any`` projections onto each axis, not ``np.nonzero`` (which lists every voxel).
    """
    box = []
    for axis, (m, n) in enumerate(zip(margin, mask.shape)):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(0, int(present[0]) - m), min(n, int(present[-1]) + m + 1)))
    return tuple(box)
