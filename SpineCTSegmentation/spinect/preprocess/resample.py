"""Resampling between the scanner grid and the network's isotropic grid (SimpleITK).

Both directions keep the image's origin and direction cosines, so world (LPS mm) positions are
preserved whatever the input's orientation: only the voxel size and count change.
"""

from __future__ import annotations

import math
from typing import Sequence

import SimpleITK as sitk

__all__ = ["resample_to_spacing", "resample_to_reference", "INTERPOLATORS"]

INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
}


def resample_to_spacing(
    image: sitk.Image,
    spacing_xyz_mm: Sequence[float],
    *,
    interpolation: str = "linear",
    default_value: float = -1024.0,
) -> sitk.Image:
    """Resample ``image`` onto a grid of ``spacing_xyz_mm`` covering the same physical extent.

    The new grid shares the origin (centre of voxel 0) and direction of ``image``; its size is
    ``round(size * spacing / new_spacing)`` per axis (at least 1), so the field of view is kept
    to within half a new voxel.

    Args:
        image: 3D image (any pixel type, any direction cosines).
        spacing_xyz_mm: new spacing in SimpleITK's (x, y, z) order, mm.
        interpolation: ``linear`` (CT intensities) or ``nearest`` (labels; SPINECT used nearest
            for both).
        default_value: value outside the input (HU of air for CT; 0 for labels).

    Returns:
        The resampled image, same pixel type as ``image``.
    """
    if interpolation not in INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATORS)}, got {interpolation!r}")
    new_spacing = [float(s) for s in spacing_xyz_mm]
    new_size = [
        max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), new_spacing)
    ]
    return sitk.Resample(
        image,
        new_size,
        sitk.Transform(),
        INTERPOLATORS[interpolation],
        image.GetOrigin(),
        new_spacing,
        image.GetDirection(),
        default_value,
        image.GetPixelID(),
    )


def resample_to_reference(image: sitk.Image, reference: sitk.Image, *, interpolation: str = "nearest", default_value: float = 0.0) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid (size, spacing, origin, direction).

    Used to bring the 1 mm label map back to the input CT's grid (nearest neighbour, so labels
    stay labels).
    """
    if interpolation not in INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATORS)}, got {interpolation!r}")
    return sitk.Resample(image, reference, sitk.Transform(), INTERPOLATORS[interpolation], default_value, image.GetPixelID())


def physical_extent_mm(image: sitk.Image) -> tuple[float, ...]:
    """Extent of the voxel grid along each image axis (x, y, z), mm: size x spacing."""
    return tuple(n * s for n, s in zip(image.GetSize(), image.GetSpacing()))


def isclose_spacing(a: Sequence[float], b: Sequence[float], *, tolerance_mm: float = 1e-3) -> bool:
    """True when two spacings agree to ``tolerance_mm`` on every axis."""
    return all(math.isclose(x, y, abs_tol=tolerance_mm) for x, y in zip(a, b))
