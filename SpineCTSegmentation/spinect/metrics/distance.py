"""Surface distances of one class in millimetres: HD95 and ASSD, through MONAI.

Both use MONAI's surface model: the surface of a mask is its voxels that binary erosion removes
(voxel centres, not sub-voxel meshes), and a distance is the Euclidean distance in mm between
surface voxel centres with the anisotropic ``spacing_zyx_mm`` applied per axis.

* ``hd95_mm`` = ``monai.metrics.compute_hausdorff_distance(percentile=95)``: the larger of the two
  directed 95th percentiles (prediction -> truth, truth -> prediction; linear interpolation).
* ``assd_mm`` = ``monai.metrics.compute_average_surface_distance(symmetric=True)``: the mean of all
  surface distances of both directions pooled together.

MONAI returns NaN or inf (with a warning) when a mask is empty; this wrapper decides instead
(documented convention): both empty -> 0 mm; exactly one empty -> NaN ("undefined"; a missed
structure has no surface to measure). :mod:`spinect.metrics.summary` leaves NaN out of means and
counts it. The masks are cropped to their joint bounding box plus one empty voxel first, which
changes no distance (erosion sees the same zero border) and keeps a full CT cheap. MONAI
computes in float32, so distances carry float32 precision (about 1e-7 relative).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

__all__ = ["SurfaceDistances", "surface_distances_mm"]


@dataclass(frozen=True)
class SurfaceDistances:
    """Surface distances of one binary prediction to its truth, in millimetres.

    Attributes:
        hd95_mm: 95th-percentile symmetric Hausdorff distance (mm); NaN if exactly one mask is empty.
        assd_mm: average symmetric surface distance (mm); NaN if exactly one mask is empty.
    """

    hd95_mm: float
    assd_mm: float


def surface_distances_mm(
    pred_mask: np.ndarray,
    true_mask: np.ndarray,
    *,
    spacing_zyx_mm: Sequence[float],
    percentile: float = 95.0,
) -> SurfaceDistances:
    """HD95 and ASSD between two 3D binary masks on the same grid (see module docstring).

    Args:
        pred_mask: predicted mask, shape (Z, Y, X), bool or 0/1 integers.
        true_mask: true mask, shape (Z, Y, X).
        spacing_zyx_mm: voxel size (z, y, x) in mm, in the arrays' axis order.
        percentile: Hausdorff percentile; 95 gives HD95, 100 the classic Hausdorff distance.

    Returns:
        The two distances in mm (0 when both masks are empty, NaN when exactly one is).

    Raises:
        ValueError: shapes differ, the masks are not 3D, or a spacing is not positive.
    """
    pred = np.asarray(pred_mask, dtype=bool)
    true = np.asarray(true_mask, dtype=bool)
    spacing = tuple(float(s) for s in spacing_zyx_mm)
    _check_inputs(pred, true, spacing)
    pred_any, true_any = bool(pred.any()), bool(true.any())
    if not pred_any and not true_any:
        return SurfaceDistances(0.0, 0.0)
    if not (pred_any and true_any):
        return SurfaceDistances(float("nan"), float("nan"))
    box = _joint_box(pred, true)
    # (batch=1, channel=1, Z, Y, X): one class, so include_background must be True.
    y_pred = torch.from_numpy(pred[box][None, None].copy())
    y = torch.from_numpy(true[box][None, None].copy())
    with warnings.catch_warnings():
        # MONAI 1.6 warns about its own deprecated internal argument on every call.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        hd = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=percentile, spacing=spacing)
        asd = compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True, spacing=spacing)
    return SurfaceDistances(hd95_mm=float(hd[0, 0]), assd_mm=float(asd[0, 0]))


def _check_inputs(pred: np.ndarray, true: np.ndarray, spacing: tuple[float, ...]) -> None:
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {true.shape}")
    if pred.ndim != 3:
        raise ValueError(f"masks must be 3D (Z, Y, X), got {pred.ndim}D shape {pred.shape}")
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise ValueError(f"spacing_zyx_mm must be 3 positive numbers, got {spacing}")


def _joint_box(pred: np.ndarray, true: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``pred | true`` grown by one voxel per side (clipped to the array)."""
    union = pred | true
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(hits[0] - 1, 0), min(hits[-1] + 2, union.shape[axis])))
    return tuple(box)
