"""Intensity normalisation: HU clipping, then z-score with the training set's statistics.

SPINECT (on-line appendix, "Intensity normalization"): zero mean and unit variance, with scale
and bias computed on the training dataset and reused in every phase. The statistics travel in
the model plan (:class:`spinect.plan.ModelPlan`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["normalise_hu", "intensity_statistics"]


def normalise_hu(image_hu: np.ndarray, *, hu_window: Sequence[float], mean: float, std: float) -> np.ndarray:
    """Clip to ``hu_window`` then z-score.

    Args:
        image_hu: CT array in HU, any shape (typically (z, y, x)).
        hu_window: (low, high) HU clipping bounds.
        mean, std: statistics of the clipped training images, HU.

    Returns:
        float32 array of the same shape: ``(clip(image_hu) - mean) / std``.
    """
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std}")
    low, high = float(hu_window[0]), float(hu_window[1])
    out = np.clip(image_hu.astype(np.float32, copy=False), low, high)
    out -= np.float32(mean)
    out /= np.float32(std)
    return out


def intensity_statistics(images_hu: Sequence[np.ndarray], *, hu_window: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation (HU) of the clipped voxels of all ``images_hu`` together.

    Computed in float64 over every voxel, as SPINECT's "statistical computing from the training
    dataset".
    """
    low, high = float(hu_window[0]), float(hu_window[1])
    total = 0.0
    total_sq = 0.0
    count = 0
    for image in images_hu:
        clipped = np.clip(np.asarray(image, dtype=np.float64), low, high)
        total += float(clipped.sum())
        total_sq += float(np.square(clipped).sum())
        count += clipped.size
    if count == 0:
        raise ValueError("no voxels to compute statistics from")
    mean = total / count
    variance = max(total_sq / count - mean * mean, 1e-12)
    return mean, float(np.sqrt(variance))
