"""A bounded free window in one view: the clearance image plus the lines or triangle that bound it.

:class:`BoundedWindow` joins the projected clearance (:mod:`spinect.geometry.projection`) with
2D bounds in the image plane (a projected triangle, or half-planes such as the endplate line)
and answers the questions every measurement mode asks: the free outline, its area, and the
largest inscribed circle, found exactly on that outline's polygons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from spinect.geometry.frame import View
from spinect.geometry.polygons import (
    Circle,
    clip_polygon_convex,
    clip_polygon_halfplane,
    field_contours_mm,
    inscribed_circle,
    outlines_inscribed_circle,
    polygon_signed_distance_mm,
    shoelace_area_mm2,
)
from spinect.geometry.projection import ObstacleFields, ProjectedWindow, project_window, ray_clearance_mm

__all__ = ["HalfPlane", "WindowSettings", "BoundedWindow", "ANATOMICAL_DEPTH_MM"]

#: With ``bounded_rays_only``, rays are cast this many pixels beyond the bounds (marching squares
#: and the seed region's growth look 2 pixels outside).
BOUND_MARGIN_PX = 3

#: Depth range before the target of the "anatomical" window (triangles-research.md §3.2), mm.
ANATOMICAL_DEPTH_MM = 15.0


@dataclass(frozen=True)
class HalfPlane:
    """Image-plane half-plane ``p·normal ≥ offset`` (u, v in mm), with a name for reports."""

    normal: tuple[float, float]
    offset: float
    name: str = ""

    def distance_mm(self, uv_mm: np.ndarray) -> np.ndarray:
        """Signed distance (positive on the kept side) of (..., 2) points."""
        n = np.asarray(self.normal, float)
        return (np.asarray(uv_mm, float) @ n - self.offset) / np.linalg.norm(n)


@dataclass(frozen=True)
class WindowSettings:
    """How a window is sampled (defaults follow triangles-research.md §3.2–3.3).

    Attributes:
        pixel_mm: in-plane sampling of the projection (≤ 0.25 mm).
        half_size_mm: the image spans ±half_size_mm around the target (the modes set it: the
            projected triangle plus 1 mm, or the guard radius plus 1 mm).
        depth_before_mm: depth range before the target; None = from the volume boundary (skin
            side): the "reachable" window.
        depth_after_mm: the range ends this far past the target.
        depth_step_mm: sampling along depth.
        instrument_radius_mm: ρ, radius of the needle or cannula (22 G ≈ 0.36 mm).
        guard_radius_mm: a seed region reaching this far from the seed is "unbounded".
        separate_structures: project bone and nerve separately too (pictures); the search turns
            it off to halve its work.
        bounded_rays_only: cast rays only for pixels within ``BOUND_MARGIN_PX`` pixels of the
            bounds (the rest of the image reads as blocked). Area, r* and the seed region are
            unchanged (they only look at pixels inside the bounds and their 2-pixel margin); the
            search turns it on, pictures need the whole image.
    """

    pixel_mm: float = 0.25
    half_size_mm: float = 18.0
    depth_before_mm: float | None = ANATOMICAL_DEPTH_MM
    depth_after_mm: float = 3.0
    depth_step_mm: float = 0.5
    instrument_radius_mm: float = 0.36
    guard_radius_mm: float = 15.0
    separate_structures: bool = True
    bounded_rays_only: bool = False

    def __post_init__(self) -> None:
        _check_range("pixel size (--pixel)", self.pixel_mm, 0.01, 5.0, "mm")
        _check_range("instrument radius (--instrument-radius)", self.instrument_radius_mm, 0.0, 10.0, "mm")
        _check_range("window half size", self.half_size_mm, 0.5, 200.0, "mm")
        _check_range("depth step", self.depth_step_mm, 0.01, 10.0, "mm")
        _check_range("depth after the target", self.depth_after_mm, 0.0, 200.0, "mm")
        _check_range("guard radius", self.guard_radius_mm, 0.5, 200.0, "mm")
        if self.depth_before_mm is not None:
            _check_range("depth before the target", self.depth_before_mm, 0.0, 500.0, "mm")

    @property
    def window_kind(self) -> str:
        return "reachable" if self.depth_before_mm is None else "anatomical"


def _check_range(name: str, value: float, lo: float, hi: float, unit: str) -> None:
    """Options are checked where they are defined: NaN, infinities and absurd values are refused."""
    from spinect.errors import InputError

    if isinstance(value, (str, bytes, bytearray, bool, np.bool_)):  # float("1.5") would pass, then fail deep inside
        raise InputError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range: far outside any range
        number = math.inf
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not (lo <= number <= hi):  # also False for NaN
        raise InputError(f"{name} must be within {lo:g}-{hi:g} {unit}, got {value!r}")


@dataclass
class BoundedWindow:
    """Clearance image of one view and the bounds that close the window.

    Attributes:
        fields: obstacle fields.
        view: the view.
        origin_lps_mm: (3,) image origin and depth 0.
        settings: sampling settings.
        triangle_uv_mm: (3, 2) projected triangle bounding the window, or None.
        triangle_plane: (point (3,), normal (3,)) of the 3D triangle; the target depth of each ray
            is where it meets this plane (clamped to the vertices' depths). None: depth 0.
        half_planes: extra bounds (endplate line, pedicle line...).
        depth_clamp_mm: (min, max) clamp of the per-ray target depth.
    """

    fields: ObstacleFields
    view: View
    origin_lps_mm: np.ndarray
    settings: WindowSettings
    triangle_uv_mm: np.ndarray | None = None
    triangle_plane: tuple[np.ndarray, np.ndarray] | None = None
    half_planes: list[HalfPlane] = field(default_factory=list)
    depth_clamp_mm: tuple[float, float] = (0.0, 0.0)
    _image: ProjectedWindow | None = field(default=None, repr=False)

    # --- sampling ---------------------------------------------------------------------------

    def target_depth_mm(self, uv_mm: np.ndarray) -> np.ndarray:
        """(...) depth along d of the target for rays at (..., 2) image points."""
        uv = np.asarray(uv_mm, float)
        if self.triangle_plane is None:
            return np.zeros(uv.shape[:-1])
        point, normal = self.triangle_plane
        dn = float(self.view.direction @ normal)
        if abs(dn) < 1e-3:
            return np.full(uv.shape[:-1], 0.5 * sum(self.depth_clamp_mm))
        rel0 = (np.asarray(self.origin_lps_mm) - point) @ normal
        depth = -(rel0 + uv[..., 0] * (self.view.u @ normal) + uv[..., 1] * (self.view.v @ normal)) / dn
        return np.clip(depth, *self.depth_clamp_mm)

    @property
    def image(self) -> ProjectedWindow:
        """The clearance image (computed on first use)."""
        if self._image is None:
            s = self.settings
            count = int(round(2 * s.half_size_mm / s.pixel_mm)) + 1
            axis = (np.arange(count) - (count - 1) / 2) * s.pixel_mm
            uu, vv = np.meshgrid(axis, axis)
            active = None
            ignore_above = None
            if s.bounded_rays_only and (self.triangle_uv_mm is not None or self.half_planes):
                bound = self.bound_mm(np.stack([uu, vv], -1))
                active = bound >= -BOUND_MARGIN_PX * s.pixel_mm
                # the search reads min(clearance, bound) and the clearance's 0 and instrument levels:
                # clearances beyond the largest bound distance (plus a pixel) are never used exactly
                if np.isfinite(bound).all():
                    ignore_above = float(bound.max()) + max(s.pixel_mm, s.instrument_radius_mm) + 1.0
            self._image = project_window(
                self.fields,
                self.view,
                self.origin_lps_mm,
                half_size_mm=s.half_size_mm,
                pixel_mm=s.pixel_mm,
                depth_before_mm=s.depth_before_mm,
                depth_after_mm=s.depth_after_mm,
                target_depth_mm=self.target_depth_mm(np.stack([uu, vv], -1)),
                depth_step_mm=s.depth_step_mm,
                separate=s.separate_structures,
                active=active,
                ignore_above_mm=ignore_above,
            )
        return self._image

    def bound_mm(self, uv_mm: np.ndarray) -> np.ndarray:
        """(...) signed distance to the bounds (positive inside all of them; +inf if none)."""
        uv = np.asarray(uv_mm, float)
        out = np.full(uv.shape[:-1], np.inf)
        if self.triangle_uv_mm is not None:
            out = np.minimum(out, polygon_signed_distance_mm(uv, self.triangle_uv_mm))
        for plane in self.half_planes:
            out = np.minimum(out, plane.distance_mm(uv))
        return out

    def clearance_at(self, uv_mm: np.ndarray) -> np.ndarray:
        """(N,) clearance (mm) of rays cast at (N, 2) arbitrary image points (off-grid)."""
        uv = np.asarray(uv_mm, float).reshape(-1, 2)
        target = self.target_depth_mm(uv)
        end = target + self.settings.depth_after_mm
        if self.settings.depth_before_mm is None:
            start = np.minimum(self.image.depth_start_mm.min(), end)
        else:
            start = target - self.settings.depth_before_mm
        return ray_clearance_mm(
            self.fields, self.view, self.origin_lps_mm, uv, start, end, depth_step_mm=self.settings.depth_step_mm
        )

    def field_mm(self) -> np.ndarray:
        """(H, W) min(clearance, bound distance): ≥ 0 inside the bounded free window."""
        uu, vv = self.image.grid_uv()
        return np.minimum(self.image.clearance_mm, self.bound_mm(np.stack([uu, vv], -1)))

    # --- answers ----------------------------------------------------------------------------

    def free_outlines_uv(self, region: np.ndarray | None = None, *, inset_mm: float = 0.0) -> list[np.ndarray]:
        """Outlines (u, v mm) of the free window inside the bounds.

        The free set's contours come from the smooth clearance image and are then clipped by the
        triangle and half-planes exactly (no pixel rounding of the triangle's corners).

        Args:
            region: (H, W) bool pixels to keep (a connected component); None keeps all.
            inset_mm: erode the window by this distance (the instrument radius ρ gives the
                set where the instrument's centre can pass).
        """
        clearance = self.image.clearance_mm
        if region is not None:
            # the region is pixel-exact only where it was cut from other free space; elsewhere its
            # edge is the clearance's 0-level, which a 2-pixel margin leaves to marching squares
            grown = ndimage.binary_dilation(region, iterations=2)
            clearance = np.where(grown, clearance, np.minimum(clearance, inset_mm - self.settings.pixel_mm))
        outlines = []
        for poly in field_contours_mm(clearance, self.image.u_mm, self.image.v_mm, level=inset_mm):
            if self.triangle_uv_mm is not None:
                poly = clip_polygon_convex(poly, self.triangle_uv_mm, inset_mm=inset_mm)
            for plane in self.half_planes:
                n = np.asarray(plane.normal, float)
                poly = clip_polygon_halfplane(poly, n, plane.offset + inset_mm * float(np.linalg.norm(n)))
            if len(poly) >= 3 and abs(shoelace_area_mm2(poly)) > 1e-9:
                outlines.append(poly)
        return outlines

    def inscribed_circle(self, region: np.ndarray | None = None, outlines: list[np.ndarray] | None = None) -> Circle:
        """Largest circle inside the bounded free window (r* and its centre).

        Found exactly on the window's outline polygons (:func:`outlines_inscribed_circle`), i.e.
        on the clearance's 0-contour clipped by the bounds, the same outline the free area is
        measured on: the interpolated clearance inside the window flattens the ridge r* sits on,
        and distances to discrete surface points overshoot between them.

        Args:
            region: (H, W) bool pixels to keep (a connected component); None keeps all.
            outlines: the free outlines of that region, if already computed.
        """
        if outlines is None:
            outlines = self.free_outlines_uv(region)
        values = self.field_mm()
        mask = values >= 0 if region is None else region & (values >= 0)
        start = inscribed_circle(values, self.image.u_mm, self.image.v_mm, mask=mask)
        if not outlines or not np.isfinite(start.radius_mm) or start.radius_mm <= 0:
            return start
        return outlines_inscribed_circle(outlines, start_uv_mm=start.centre_uv_mm)

    def to_lps(self, uv_mm: np.ndarray, depth_mm: float | np.ndarray = 0.0) -> np.ndarray:
        """Image points (and depths) back to LPS mm."""
        return self.view.unproject(uv_mm, self.origin_lps_mm, depth_mm)
