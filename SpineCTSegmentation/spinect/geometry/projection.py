"""Signed distance maps of bone and nerve, and the projected free window along a line of sight.

The free window seen along d (triangles-research.md §3.2) is computed from signed distance maps
ψ (mm; negative inside a structure, positive outside), not by counting 1 mm voxels: a ~9 mm²
safe triangle is only ~3 voxels wide. ψ is sampled by trilinear interpolation on a grid aligned
with the view (default 0.25 mm in-plane) and its minimum is taken along depth over a range that
ends just past the target. The minimum over a ray of the distance to a set equals the in-plane
distance from the ray to the set's projection, so the result, the *clearance* c(u, v), is

* > 0 on free rays: the 2D distance (mm) to the nearest projected bone or nerve outline
  (the radius of the widest needle along that ray that touches nothing);
* < 0 on rays that cross bone or nerve within the depth range.

Its 0-level contour is the outline of the free window and its maximum is the inscribed circle.
Samples outside the label volume count as free.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from spinect.errors import InputError
from spinect.geometry.distance import FAR_MM, subvoxel_signed_distance_mm, voxel_signed_distance_mm
from spinect.geometry.frame import View

if TYPE_CHECKING:  # SimpleITK only for the image entry point; the core is numpy/scipy/skimage
    import SimpleITK as sitk

__all__ = [
    "ObstacleFields",
    "ProjectedWindow",
    "ray_clearance_mm",
    "project_window",
    "volume_depth_range_mm",
]

_FAR_MM = FAR_MM  # clearance given to samples outside the volume (free)
INACTIVE_MM = -1.0  #: clearance of pixels whose rays were not cast (project_window's ``active``)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 6-neighbour outside it (the volume's border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


@dataclass(frozen=True)
class ObstacleFields:
    """Signed distance maps (mm) of bone and nerve on one grid, with its LPS geometry.

    Attributes:
        bone_mm: (Z, Y, X) float32 signed distance to bone (negative inside).
        nerve_mm: (Z, Y, X) float32 signed distance to nerve.
        index_to_lps: (4, 4) affine mapping (x, y, z, 1) voxel index (SimpleITK order) to LPS mm.
        ct_hu: (Z, Y, X) float32 CT on the same grid, or None (used to find the skin).
        surface_lps_mm: (N, 3) LPS points on the bone and nerve surfaces: sub-voxel iso-surface
            vertices, or the centres of boundary voxels (``subvoxel=False``).
        surface_offset_mm: subtracted from distances to those points (half a voxel for voxel
            centres, 0 for iso-surface vertices).
    """

    bone_mm: np.ndarray
    nerve_mm: np.ndarray
    index_to_lps: np.ndarray
    ct_hu: np.ndarray | None = None
    surface_lps_mm: np.ndarray | None = None
    surface_offset_mm: float = 0.0

    @classmethod
    def from_arrays(
        cls,
        labels_zyx: np.ndarray,
        spacing_zyx_mm: tuple[float, float, float],
        *,
        origin_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
        direction: np.ndarray | None = None,
        bone_label: int = 1,
        nerve_label: int = 2,
        ct_hu_zyx: np.ndarray | None = None,
        subvoxel: bool = True,
    ) -> ObstacleFields:
        """Fields from a (Z, Y, X) label array; geometry as SimpleITK gives it (x, y, z order).

        Args:
            labels_zyx: (Z, Y, X) integer labels.
            spacing_zyx_mm: voxel size (z, y, x), mm.
            origin_lps_mm: LPS position of voxel (0, 0, 0) (x, y, z order, as SimpleITK).
            direction: (3, 3) or (9,) direction cosines (SimpleITK order); identity by default.
            bone_label, nerve_label: label values of bone and nerve.
            ct_hu_zyx: (Z, Y, X) CT on the same grid, HU (for the skin entry), or None.
            subvoxel: signed distances to a sub-voxel surface (:mod:`spinect.geometry.distance`)
                rather than to voxel faces.
        """
        labels = np.asarray(labels_zyx)
        if labels.ndim != 3:
            raise InputError(f"label map must be 3D; got shape {labels.shape}")
        direction = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = direction @ np.diag(np.asarray(spacing_zyx_mm, float)[::-1])
        affine[:3, 3] = origin_lps_mm
        masks = (labels == bone_label, labels == nerve_label)
        spacing = np.asarray(spacing_zyx_mm, float)
        if subvoxel:
            (bone, bone_pts), (nerve, nerve_pts) = (subvoxel_signed_distance_mm(m, spacing_zyx_mm) for m in masks)
            surface_zyx, offset = np.concatenate([bone_pts, nerve_pts]) / spacing, 0.0
        else:
            bone, nerve = (voxel_signed_distance_mm(m, spacing_zyx_mm) for m in masks)
            surface_zyx = np.argwhere(_surface(masks[0]) | _surface(masks[1])).astype(float)
            offset = 0.5 * float(spacing.min())
        return cls(
            bone_mm=bone,
            nerve_mm=nerve,
            index_to_lps=affine,
            ct_hu=None if ct_hu_zyx is None else np.asarray(ct_hu_zyx, np.float32),
            surface_lps_mm=surface_zyx[:, ::-1] @ affine[:3, :3].T + affine[:3, 3],
            surface_offset_mm=offset,
        )

    @classmethod
    def from_image(
        cls,
        labels: sitk.Image,
        *,
        ct: sitk.Image | None = None,
        bone_label: int = 1,
        nerve_label: int = 2,
        subvoxel: bool = True,
    ) -> ObstacleFields:
        """Fields from a SimpleITK label image (0/1/2); the CT, if given, is resampled onto it."""
        import SimpleITK as sitk

        ct_array = None
        if ct is not None:
            ct_on_grid = sitk.Resample(ct, labels, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
            ct_array = sitk.GetArrayFromImage(ct_on_grid)
        return cls.from_arrays(
            sitk.GetArrayViewFromImage(labels),
            tuple(labels.GetSpacing()[::-1]),
            origin_lps_mm=labels.GetOrigin(),
            direction=np.asarray(labels.GetDirection()),
            bone_label=bone_label,
            nerve_label=nerve_label,
            ct_hu_zyx=ct_array,
            subvoxel=subvoxel,
        )

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(self.bone_mm.shape)

    def lps_to_index_zyx(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """(N, 3) LPS mm → (3, N) continuous voxel index in (z, y, x) order."""
        inverse = np.linalg.inv(self.index_to_lps)
        pts = np.asarray(points_lps_mm, float).reshape(-1, 3)
        xyz = pts @ inverse[:3, :3].T + inverse[:3, 3]
        return xyz[:, ::-1].T

    def corners_lps_mm(self) -> np.ndarray:
        """(8, 3) LPS positions of the volume's corner voxel centres."""
        z, y, x = (np.array([0, n - 1]) for n in self.shape_zyx)
        grid = np.array(np.meshgrid(x, y, z, indexing="ij")).reshape(3, -1).T
        return grid @ self.index_to_lps[:3, :3].T + self.index_to_lps[:3, 3]

    def sample(self, points_lps_mm: np.ndarray, which: str = "both", *, outside: float | None = None) -> np.ndarray:
        """Trilinear samples of a field at points.

        Args:
            points_lps_mm: (..., 3) points, LPS mm.
            which: ``"bone"``, ``"nerve"``, ``"both"`` (min of the two = distance to either) or
                ``"ct"`` (HU).
            outside: value for points outside the volume (default: free, 1000 mm; −1000 HU for CT).

        Returns:
            (...) float32 values.
        """
        return self.sample_many(points_lps_mm, (which,), outside=outside)[0]

    def sample_many(
        self, points_lps_mm: np.ndarray, names: tuple[str, ...], *, outside: float | None = None
    ) -> np.ndarray:
        """Like :meth:`sample` for several fields at once: (len(names), ...) float32."""
        pts = np.asarray(points_lps_mm, float)
        index = self.lps_to_index_zyx(pts.reshape(-1, 3))
        return self.sample_index(index, names, outside=outside).reshape((len(names),) + pts.shape[:-1])

    def sample_index(self, index_zyx: np.ndarray, names: tuple[str, ...], *, outside: float | None = None) -> np.ndarray:
        """Fields at (3, N) continuous voxel indices (z, y, x): (len(names), N) float32."""
        shape = np.array(self.shape_zyx)[:, None]
        inside = np.all((index_zyx >= -0.5) & (index_zyx <= shape - 0.5), axis=0)
        out = np.empty((len(names), index_zyx.shape[1]), np.float32)
        for row, name in enumerate(names):
            fill = outside if outside is not None else (-1000.0 if name == "ct" else _FAR_MM)
            out[row] = np.where(inside, self._interp(self._array(name), index_zyx), fill)
        return out

    def lps_to_index_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(A, b) with index_zyx = A @ p_lps + b: (3, 3) and (3,)."""
        inverse = np.linalg.inv(self.index_to_lps)
        return inverse[:3, :3][::-1], inverse[:3, 3][::-1]

    @cached_property
    def both_mm(self) -> np.ndarray:
        """(Z, Y, X) float32 signed distance to bone or nerve (the minimum of the two)."""
        return np.minimum(self.bone_mm, self.nerve_mm)

    def _array(self, name: str) -> np.ndarray:
        if name == "both":
            return self.both_mm
        if name == "bone":
            return self.bone_mm
        if name == "nerve":
            return self.nerve_mm
        if name == "ct":
            if self.ct_hu is None:
                raise InputError("no CT was given; the skin entry point needs the CT (--ct)")
            return self.ct_hu
        raise InputError(f"field {name!r} is not one of bone, nerve, both, ct")

    @staticmethod
    def _interp(field: np.ndarray, index_zyx: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(field, index_zyx, order=1, mode="nearest", prefilter=False)


@dataclass(frozen=True)
class ProjectedWindow:
    """Clearance image of one view (see module docstring).

    Attributes:
        view: the viewing direction and image axes.
        origin_lps_mm: (3,) plane origin: image (0, 0) and depth 0.
        u_mm: (W,) pixel-centre coordinates along u; v_mm: (H,) along v (mm).
        clearance_mm: (H, W) float32, min over depth of the signed distance to bone or nerve.
        bone_mm, nerve_mm: (H, W) float32, the same for bone alone and nerve alone.
        depth_start_mm, depth_end_mm: (H, W) float32 depth range used on each ray.
    """

    view: View
    origin_lps_mm: np.ndarray
    u_mm: np.ndarray
    v_mm: np.ndarray
    clearance_mm: np.ndarray
    bone_mm: np.ndarray
    nerve_mm: np.ndarray
    depth_start_mm: np.ndarray
    depth_end_mm: np.ndarray

    @property
    def pixel_mm(self) -> float:
        return float(self.u_mm[1] - self.u_mm[0]) if len(self.u_mm) > 1 else 0.0

    def grid_uv(self) -> tuple[np.ndarray, np.ndarray]:
        """(H, W) u and v coordinates of every pixel (mm)."""
        uu, vv = np.meshgrid(self.u_mm, self.v_mm)
        return uu, vv


def volume_depth_range_mm(fields: ObstacleFields, view: View, origin_lps_mm: np.ndarray) -> tuple[float, float]:
    """Depths (along d, from the plane origin) of the volume's nearest and farthest corners."""
    _, depths = view.project(fields.corners_lps_mm(), origin_lps_mm)
    return float(depths.min()), float(depths.max())


def ray_clearance_mm(
    fields: ObstacleFields,
    view: View,
    origin_lps_mm: np.ndarray,
    uv_mm: np.ndarray,
    depth_start_mm: np.ndarray | float,
    depth_end_mm: np.ndarray | float,
    *,
    depth_step_mm: float = 0.5,
    which: str = "both",
) -> np.ndarray:
    """Minimum of a signed distance field along rays (parallel to d) over a depth range.

    Samples every ``depth_step_mm`` back from each ray's end (so the end is always sampled) and
    once at its start.

    Args:
        fields: the obstacle fields.
        view: viewing direction and image axes.
        origin_lps_mm: (3,) plane origin.
        uv_mm: (..., 2) ray positions in the image plane, mm.
        depth_start_mm, depth_end_mm: scalar or (...) depth limits (start ≤ end), mm.
        depth_step_mm: sampling step along depth.
        which: ``"both"``, ``"bone"`` or ``"nerve"``.

    Returns:
        (...) float32 minimum along each ray (mm).
    """
    return _ray_minima(fields, view, origin_lps_mm, uv_mm, depth_start_mm, depth_end_mm, (which,), depth_step_mm)[0]


def _ray_minima(
    fields: ObstacleFields,
    view: View,
    origin_lps_mm: np.ndarray,
    uv_mm: np.ndarray,
    depth_start_mm: np.ndarray | float,
    depth_end_mm: np.ndarray | float,
    names: tuple[str, ...],
    depth_step_mm: float,
    chunk_points: int = 2_000_000,
    ignore_above_mm: float | None = None,
) -> np.ndarray:
    """(len(names), ...) minima along rays; batches of depth samples bound the memory.

    With ``ignore_above_mm`` (distance fields only), a ray's minimum is exact wherever it is below
    that value, and some value at least that large elsewhere: see :func:`_ray_minima_skipping`.
    """
    uv = np.asarray(uv_mm, float)
    shape = uv.shape[:-1]
    start = np.broadcast_to(np.asarray(depth_start_mm, float), shape).ravel()
    end = np.broadcast_to(np.asarray(depth_end_mm, float), shape).ravel()
    # rays in voxel index space: index = base + depth · step_index (one affine map per view)
    to_index, offset = fields.lps_to_index_affine()
    base = view.unproject(uv.reshape(-1, 2), origin_lps_mm, 0.0) @ to_index.T + offset
    along = to_index @ view.direction
    length = np.maximum(end - start, 0.0)
    steps = int(np.ceil(length.max() / depth_step_mm)) if length.size else 0
    if ignore_above_mm is not None and "ct" not in names and steps >= 2 * _SKIP_STRIDE:
        result = _ray_minima_skipping(fields, base, along, start, end, steps, names, depth_step_mm, chunk_points,
                                      float(ignore_above_mm))
        return result.reshape((len(names),) + shape)
    result = np.full((len(names), base.shape[0]), np.inf, np.float32)
    chunk = max(1, chunk_points // max(base.shape[0], 1))
    for first in range(0, steps + 1, chunk):
        ks = np.arange(first, min(first + chunk, steps + 1))
        # k < steps: end − k·h (clamped at the start); k == steps: exactly the start
        depths = np.where(ks[None, :] < steps, end[:, None] - ks[None, :] * depth_step_mm, start[:, None])
        depths = np.maximum(depths, start[:, None])
        index = (base[:, None, :] + depths[..., None] * along).reshape(-1, 3).T
        values = fields.sample_index(index, names).reshape(len(names), base.shape[0], -1)
        result = np.minimum(result, values.min(axis=2))
    return result.reshape((len(names),) + shape)


#: Depth samples per stretch that :func:`_ray_minima_skipping` tests as a whole.
_SKIP_STRIDE = 4
#: Lipschitz bound of the sampled distance fields: trilinear interpolation of voxel distances
#: (1-Lipschitz between voxel centres) changes by at most sqrt(3) mm per mm.
_FIELD_LIPSCHITZ = float(np.sqrt(3.0))


def _ray_minima_skipping(fields, base, along, start, end, steps, names, depth_step_mm, chunk_points,
                         ignore_above_mm) -> np.ndarray:
    """Ray minima on the same depth lattice, skipping stretches that cannot go below a level.

    Every ``_SKIP_STRIDE``-th depth sample is taken first. Between two such samples, every lattice
    sample lies within half a stretch of one of them, so where both are at least ``ignore_above_mm``
    + L·stretch/2 (L: the fields' Lipschitz bound) no sample between them is below
    ``ignore_above_mm``, and the stretch is skipped. The rest is sampled as usual. Minima below
    ``ignore_above_mm`` are therefore exactly those of the full lattice; the others are the
    minimum of the samples taken (at least ``ignore_above_mm``). Two thirds of a search's depth
    samples lie more than 12 mm from bone and nerve (the back muscles on the way from the skin),
    where a window bounded by a triangle a few mm across cannot use the exact value.
    """
    n = base.shape[0]
    k_coarse = np.unique(np.r_[np.arange(0, steps + 1, _SKIP_STRIDE), steps])

    def sample(rays: np.ndarray, ks: np.ndarray) -> np.ndarray:
        """(len(names), len(rays)) values at lattice sample ks of rays (flat, matching arrays)."""
        out = np.empty((len(names), len(rays)), np.float32)
        for first in range(0, len(rays), chunk_points):
            r, k = rays[first : first + chunk_points], ks[first : first + chunk_points]
            depth = np.maximum(np.where(k < steps, end[r] - k * depth_step_mm, start[r]), start[r])
            index = (base[r] + depth[:, None] * along).T
            out[:, first : first + chunk_points] = fields.sample_index(index, names)
        return out

    rays = np.repeat(np.arange(n), len(k_coarse))
    coarse = sample(rays, np.tile(k_coarse, n)).reshape(len(names), n, len(k_coarse))
    result = coarse.min(axis=2)
    level = ignore_above_mm + _FIELD_LIPSCHITZ * 0.5 * _SKIP_STRIDE * depth_step_mm
    low = coarse.min(axis=0) < level  # (n, C)
    need = low[:, :-1] | low[:, 1:]  # stretch j runs from k_coarse[j] to k_coarse[j + 1]
    ray_idx, stretch = np.nonzero(need)
    if ray_idx.size == 0:
        return result
    offsets = np.arange(1, _SKIP_STRIDE)
    ks = k_coarse[stretch][:, None] + offsets[None, :]  # (M, stride - 1)
    valid = ks < k_coarse[stretch + 1][:, None]
    values = np.full((len(names),) + ks.shape, np.inf, np.float32)
    values[:, valid] = sample(np.broadcast_to(ray_idx[:, None], ks.shape)[valid], ks[valid])
    for row in range(len(names)):
        np.minimum.at(result[row], ray_idx, values[row].min(axis=1))
    return result


def project_window(
    fields: ObstacleFields,
    view: View,
    origin_lps_mm: np.ndarray,
    *,
    half_size_mm: float = 15.0,
    pixel_mm: float = 0.25,
    depth_before_mm: float | None = 15.0,
    depth_after_mm: float = 3.0,
    target_depth_mm: np.ndarray | float | None = 0.0,
    depth_step_mm: float = 0.5,
    separate: bool = True,
    active: np.ndarray | None = None,
    ignore_above_mm: float | None = None,
) -> ProjectedWindow:
    """Project bone and nerve along ``view`` onto a square image centred on the plane origin.

    Args:
        fields: the obstacle fields.
        view: viewing direction and image axes.
        origin_lps_mm: (3,) image centre and depth 0 (usually the target).
        half_size_mm: the image spans [−half, +half] mm along u and v.
        pixel_mm: in-plane sampling (≤ 0.25 mm for windows of a few mm²).
        depth_before_mm: the depth range starts this far before the target ("anatomical" window,
            15 mm); None starts at the volume boundary ("reachable" window: everything between the
            skin and the target, iliac crest included).
        depth_after_mm: the range ends this far past the target.
        target_depth_mm: target depth (mm): a scalar, or an (H, W) array with one depth per ray
            (e.g. where each ray meets a triangle's plane).
        depth_step_mm: sampling step along depth.
        separate: also project bone and nerve separately (for display); False projects only
            their union (half the work), and ``bone_mm``/``nerve_mm`` then hold the union too.
        active: (H, W) bool pixels whose rays are cast; the others get ``INACTIVE_MM``
            (blocked). None casts every ray.
        ignore_above_mm: clearances at or above this value are not needed exactly (a bounded
            window that uses min(clearance, distance to its bounds)): stretches of rays that
            cannot come closer are skipped, and those pixels get some value at least this large.

    Returns:
        The :class:`ProjectedWindow`.
    """
    if pixel_mm <= 0 or half_size_mm <= 0:
        raise InputError(f"pixel_mm ({pixel_mm}) and half_size_mm ({half_size_mm}) must be positive")
    count = int(round(2 * half_size_mm / pixel_mm)) + 1
    axis = (np.arange(count) - (count - 1) / 2) * pixel_mm
    uu, vv = np.meshgrid(axis, axis)
    uv = np.stack([uu, vv], axis=-1)
    target = np.broadcast_to(np.asarray(0.0 if target_depth_mm is None else target_depth_mm, float), uu.shape)
    end = target + depth_after_mm
    if depth_before_mm is None:
        entry, _ = volume_depth_range_mm(fields, view, origin_lps_mm)
        start = np.minimum(np.full(uu.shape, entry), end)
    else:
        start = target - depth_before_mm
    names = ("bone", "nerve") if separate else ("both",)
    if active is None:
        minima = _ray_minima(fields, view, origin_lps_mm, uv, start, end, names, depth_step_mm,
                             ignore_above_mm=ignore_above_mm)
    else:
        keep = np.asarray(active, bool)
        minima = np.full((len(names),) + uu.shape, INACTIVE_MM, np.float32)
        if keep.any():
            minima[:, keep] = _ray_minima(fields, view, origin_lps_mm, uv[keep], start[keep], end[keep], names,
                                          depth_step_mm, ignore_above_mm=ignore_above_mm)
    bone, nerve = (minima[0], minima[1]) if separate else (minima[0], minima[0])
    return ProjectedWindow(
        view=view,
        origin_lps_mm=np.asarray(origin_lps_mm, float),
        u_mm=axis,
        v_mm=axis.copy(),
        clearance_mm=np.minimum(bone, nerve),
        bone_mm=bone,
        nerve_mm=nerve,
        depth_start_mm=start.astype(np.float32),
        depth_end_mm=end.astype(np.float32),
    )
