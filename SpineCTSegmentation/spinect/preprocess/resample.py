"""Resampling between the scanner grid and the network's isotropic grid (SimpleITK).

Both directions preserve world (LPS mm) positions whatever the input's orientation. The network's
grid is, in addition, put in LPS axis order (``orient_lps``): the models learn from axial (z =
superior) volumes, and a CT stored sagittally or coronally (e.g. a PIR NIfTI) would otherwise
reach the network with its axes swapped. Reorienting only permutes and flips axes (no
interpolation of its own), and the labels go back to the input's own grid by world position.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import SimpleITK as sitk

__all__ = ["resample_to_spacing", "resample_to_reference", "lps_axis_order", "lps_axis_permutation", "ImageGrid", "INTERPOLATORS"]

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
    pixel_type: int | None = None,
    orient_lps: bool = False,
) -> sitk.Image:
    """Resample ``image`` onto a grid of ``spacing_xyz_mm`` covering the same physical extent.

    The new grid shares the origin (centre of voxel 0) and direction of ``image``; its size is
    ``round(size * spacing / new_spacing)`` per axis (at least 1), so the field of view is kept
    to within half a new voxel. With ``orient_lps`` the image's axes are first permuted and
    flipped into LPS order (:func:`lps_axis_order`; as ``sitk.DICOMOrient(image, "LPS")`` without
    copying the voxels), so that the result's z axis is the patient's cranio-caudal one and
    ``spacing_xyz_mm`` applies to the L, P and S axes.

    Args:
        image: 3D image (any pixel type, any direction cosines).
        spacing_xyz_mm: new spacing in SimpleITK's (x, y, z) order, mm.
        interpolation: ``linear`` (CT intensities) or ``nearest`` (labels; SPINECT used nearest
            for both).
        default_value: value outside the input (HU of air for CT; 0 for labels).
        pixel_type: SimpleITK pixel type of the result (default: ``image``'s). ITK interpolates
            in double and casts the result, so an integer CT resampled to ``sitkFloat32`` equals,
            bit for bit, the same CT cast to float32 first and resampled (tested), without the
            float32 copy of the CT.

    Returns:
        The resampled image, of ``pixel_type``.
    """
    if interpolation not in INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATORS)}, got {interpolation!r}")
    size, spacing, origin, direction = image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    if orient_lps:
        size, spacing, origin, direction = lps_axis_order(image)
    new_spacing = [float(s) for s in spacing_xyz_mm]
    new_size = [max(1, int(round(n * s / t))) for n, s, t in zip(size, spacing, new_spacing)]
    return sitk.Resample(
        image,
        new_size,
        sitk.Transform(),
        INTERPOLATORS[interpolation],
        origin,
        new_spacing,
        direction,
        default_value,
        image.GetPixelID() if pixel_type is None else pixel_type,
    )


def lps_axis_order(image: "sitk.Image | ImageGrid") -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """The grid of ``image`` with its axes permuted and flipped into LPS order.

    Each world axis (L, P, S) takes the image axis whose direction cosine points most along it,
    flipped when it points the other way; the voxels' world positions do not change (the same
    grid, listed in another order). An axial LPS image comes back unchanged.

    Returns:
        (size, spacing (mm), origin (LPS mm, centre of the new first voxel), direction (9 cosines,
        SimpleITK's row-major order)), each in SimpleITK's (x, y, z) order.
    """
    size = np.asarray(image.GetSize(), int)
    spacing = np.asarray(image.GetSpacing(), float)
    d = np.asarray(image.GetDirection(), float).reshape(3, 3)  # column k: world direction of index axis k
    order = lps_axis_permutation(image.GetDirection())
    signs = np.array([np.sign(d[w, k]) or 1.0 for w, k in enumerate(order)])
    new_d = d[:, order] * signs
    first = np.array([(size[k] - 1) if s < 0 else 0 for k, s in zip(order, signs)], float)
    index = np.zeros(3)
    index[order] = first
    origin = np.asarray(image.GetOrigin(), float) + d @ (index * spacing)
    return (tuple(int(size[k]) for k in order), tuple(float(spacing[k]) for k in order), tuple(origin),
            tuple(new_d.ravel()))


def resample_to_reference(image: sitk.Image, reference: "sitk.Image | ImageGrid", *, interpolation: str = "nearest", default_value: float = 0.0) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid (size, spacing, origin, direction).

    Used to bring the 1 mm label map back to the input CT's grid (nearest neighbour, so labels
    stay labels). ``reference`` may be an :class:`ImageGrid` (the same result).
    """
    if interpolation not in INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATORS)}, got {interpolation!r}")
    if isinstance(reference, ImageGrid):
        return sitk.Resample(image, reference.size, sitk.Transform(), INTERPOLATORS[interpolation],
                             reference.GetOrigin(), reference.GetSpacing(), reference.GetDirection(), default_value,
                             image.GetPixelID())
    return sitk.Resample(image, reference, sitk.Transform(), INTERPOLATORS[interpolation], default_value, image.GetPixelID())


class ImageGrid:
    """An image's grid (size, spacing, origin, direction) without its voxels.

    What the pipeline keeps of the input CT once it is resampled (issue 17: on a 512×512×600 CT
    its float32 voxels were 600 MiB held to the end only for their geometry). Resampling onto it
    gives the same voxels as resampling onto the image itself.
    """

    def __init__(self, image: sitk.Image) -> None:
        self.size = tuple(int(n) for n in image.GetSize())
        # A one-voxel image with the same geometry: ITK's own index -> physical point arithmetic.
        self._point_image = sitk.Image([1] * image.GetDimension(), sitk.sitkUInt8)
        self._point_image.SetSpacing(image.GetSpacing())
        self._point_image.SetOrigin(image.GetOrigin())
        self._point_image.SetDirection(image.GetDirection())

    @classmethod
    def of(cls, image: "sitk.Image | ImageGrid") -> "ImageGrid":
        return image if isinstance(image, ImageGrid) else cls(image)

    def GetSize(self) -> tuple[int, ...]:  # noqa: N802 - SimpleITK's names, so a grid stands in for an image
        return self.size

    def GetSpacing(self) -> tuple[float, ...]:  # noqa: N802
        return self._point_image.GetSpacing()

    def GetOrigin(self) -> tuple[float, ...]:  # noqa: N802
        return self._point_image.GetOrigin()

    def GetDirection(self) -> tuple[float, ...]:  # noqa: N802
        return self._point_image.GetDirection()

    def TransformContinuousIndexToPhysicalPoint(self, index) -> tuple[float, ...]:  # noqa: N802
        return self._point_image.TransformContinuousIndexToPhysicalPoint(index)

    def stamp(self, image: sitk.Image) -> sitk.Image:
        """Give ``image`` (of this grid's size) this grid's spacing, origin and direction, like ``CopyInformation``."""
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"image of size {image.GetSize()} does not fit a grid of size {self.size}")
        image.SetSpacing(self.GetSpacing())
        image.SetOrigin(self.GetOrigin())
        image.SetDirection(self.GetDirection())
        return image


def physical_extent_mm(image: sitk.Image) -> tuple[float, ...]:
    """Extent of the voxel grid along each image axis (x, y, z), mm: size x spacing."""
    return tuple(n * s for n, s in zip(image.GetSize(), image.GetSpacing()))


def isclose_spacing(a: Sequence[float], b: Sequence[float], *, tolerance_mm: float = 1e-3) -> bool:
    """True when two spacings agree to ``tolerance_mm`` on every axis."""
    return all(math.isclose(x, y, abs_tol=tolerance_mm) for x, y in zip(a, b))


def lps_axis_permutation(direction: Sequence[float]) -> list[int]:
    """For each world axis (L, P, S), the image axis (SimpleITK x, y, z index) that points most along it.

    Args:
        direction: the 9 direction cosines (SimpleITK's row-major order).
    """
    d = np.asarray(direction, float).reshape(3, 3)
    order = [int(k) for k in np.argmax(np.abs(d), axis=1)]
    if sorted(order) != [0, 1, 2]:  # an oblique grid near 45 deg: a one-to-one greedy match instead
        order, free = [-1, -1, -1], [0, 1, 2]
        for w in np.argsort(-np.abs(d).max(axis=1)):
            k = max(free, key=lambda a: abs(d[w, a]))
            order[int(w)] = k
            free.remove(k)
    return order
