"""Measure a Kambin or safe triangle in one view, bounded by three points or grown from a seed.

Two of the three bounding modes of triangles-research.md §3.3 (the third, automatic from level
labels, is :func:`spinect.geometry.landmarks.measure_auto`, which finds the points and calls
:func:`measure_points`):

* :func:`measure_points`: vertices A (exiting root meets SAP / pedicle), B, C as a user clicks
  them → projected triangle area, the free area inside it, true 3D area, r*.
* :func:`measure_seed`: one point in the window → the free region around it; gaps narrower than
  the instrument radius ρ do not connect it to other free space (:func:`seed_region`), clipped by the
  endplate line (and a pedicle line when given); "unbounded" when it reaches the guard radius.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from spinect.errors import InputError
from spinect.geometry.frame import EndplateFrame, View
from spinect.geometry.polygons import shoelace_area_mm2, triangle_inradius_mm
from spinect.geometry.projection import ObstacleFields
from spinect.geometry.results import Quantity, TriangleMeasurement
from spinect.geometry.window import BoundedWindow, HalfPlane, WindowSettings

__all__ = [
    "measure_points",
    "measure_seed",
    "points_window",
    "seed_window",
    "seed_region",
    "reaches_guard",
    "TRIANGLES",
    "LEVELS",
    "check_choice",
]

TRIANGLES: tuple[str, ...] = ("kambin", "safe")
#: level -> (upper vertebra, lower vertebra, exiting root, traversing root)
LEVELS: dict[str, tuple[str, str, str, str]] = {
    "L4L5": ("L4", "L5", "L4", "L5"),
    "L5S1": ("L5", "S1", "L5", "S1"),
}


def check_choice(name: str, value: str, choices) -> str:
    """``value`` if it is one of ``choices`` (case-insensitive for strings), else InputError."""
    for choice in choices:
        if str(value).lower() == str(choice).lower():
            return choice
    raise InputError(f"{name} {value!r} is not valid; use one of: {', '.join(map(str, choices))}")


def measure_points(
    fields: ObstacleFields,
    frame: EndplateFrame,
    points_lps_mm: np.ndarray,
    *,
    triangle: str = "kambin",
    level: str = "L5S1",
    side: str = "left",
    theta_deg: float = 0.0,
    phi_deg: float = 0.0,
    settings: WindowSettings | None = None,
) -> TriangleMeasurement:
    """Triangle given by its three vertices, seen along d(θ, φ).

    The target depth of each ray is where it meets the plane of A, B, C (clamped to the vertices'
    depth range); the window takes bone and nerve from ``depth_before_mm`` in front of that to
    ``depth_after_mm`` behind it.

    Args:
        fields: signed distance fields of bone and nerve.
        frame: the lower vertebra's superior endplate frame.
        points_lps_mm: (3, 3) vertices A, B, C (rows), LPS mm.
        triangle, level, side: what is measured (recorded; ``side`` also sets the oblique).
        theta_deg, phi_deg: obliquity and cranio-caudal tilt.
        settings: window sampling (defaults: 0.25 mm pixels, anatomical 15 mm depth).

    Returns:
        The :class:`TriangleMeasurement` (``mode="points"``).

    Raises:
        InputError: not three finite 3D points, or a degenerate (collinear) triangle.
    """
    triangle, level = _check_what(triangle, level)
    settings = settings or WindowSettings()
    pts = _check_points(points_lps_mm)
    view = frame.view(theta_deg, phi_deg, side)
    window = points_window(fields, view, pts, settings)
    uv = window.triangle_uv_mm
    outlines = window.free_outlines_uv()
    usable = window.free_outlines_uv(inset_mm=settings.instrument_radius_mm)
    circle = window.inscribed_circle(outlines=outlines)
    quantities = {
        "projected_triangle_area_mm2": Quantity.of("projected_triangle_area_mm2", abs(shoelace_area_mm2(uv))),
        "true_triangle_area_mm2": Quantity.of(
            "true_triangle_area_mm2", 0.5 * float(np.linalg.norm(np.cross(pts[1] - pts[0], pts[2] - pts[0])))
        ),
        "triangle_inradius_mm": Quantity.of("triangle_inradius_mm", triangle_inradius_mm(*uv)),
        "free_area_mm2": Quantity.of("free_area_mm2", _area(outlines)),
        "usable_area_mm2": Quantity.of("usable_area_mm2", _area(usable)),
        "inscribed_radius_mm": Quantity.of("inscribed_radius_mm", max(circle.radius_mm, 0.0)),
    }
    return _result(window, frame, "points", triangle, level, side, quantities, outlines, circle, triangle_lps=pts)


def measure_seed(
    fields: ObstacleFields,
    frame: EndplateFrame,
    seed_lps_mm: np.ndarray,
    *,
    triangle: str = "kambin",
    level: str = "L5S1",
    side: str = "left",
    theta_deg: float = 0.0,
    phi_deg: float = 0.0,
    upper_line_lps_mm: np.ndarray | None = None,
    settings: WindowSettings | None = None,
    snap_mm: float = 2.0,
) -> TriangleMeasurement:
    """Free region around one seed point, seen along d(θ, φ).

    Bounds: the endplate line below (where the endplate plane meets the seed's depth; the region
    is kept cranial of it) and, if ``upper_line_lps_mm`` is given, a line parallel to it through
    that point's projection (the pedicle's lowest point) above. The region is the connected
    component of the free set opened by ρ that holds the seed (moved to the nearest free pixel
    within ``snap_mm`` if it sits on bone or nerve), with the narrower free slivers that hang on it
    (:func:`seed_region`). If that component reaches the guard radius, the window is open (it
    leaks through an unsegmented gap): ``bounded`` is False and the areas are None; place three
    points instead.

    Args:
        fields: signed distance fields of bone and nerve.
        frame: the lower vertebra's superior endplate frame.
        seed_lps_mm: (3,) a point inside the window, at the target depth, LPS mm.
        triangle, level, side: what is measured.
        theta_deg, phi_deg: obliquity and cranio-caudal tilt.
        upper_line_lps_mm: (3,) a point on the upper bound (pedicle's inferior margin), or None.
        settings: window sampling; ``instrument_radius_mm`` opens the free set,
            ``guard_radius_mm`` decides "unbounded".
        snap_mm: how far the seed may be moved to reach free space.

    Returns:
        The :class:`TriangleMeasurement` (``mode="seed"``).
    """
    triangle, level = _check_what(triangle, level)
    settings = settings or WindowSettings()
    seed = _check_points(np.reshape(seed_lps_mm, (1, 3)), count=1)[0]
    view = frame.view(theta_deg, phi_deg, side)
    window = seed_window(fields, frame, view, seed, settings, upper_line_lps_mm=upper_line_lps_mm)
    region, notes = seed_region(window, snap_mm)
    bounded = region is not None and not reaches_guard(window, region)
    if region is not None and not bounded:
        notes.append(
            f"the free region around the seed reaches the {settings.guard_radius_mm:g} mm guard radius "
            "(it leaks through a gap that is not segmented): no area is reported; place the three "
            "vertices instead"
        )
    outlines = window.free_outlines_uv(region) if bounded else []
    usable = window.free_outlines_uv(region, inset_mm=settings.instrument_radius_mm) if bounded else []
    circle = window.inscribed_circle(region, outlines=outlines) if bounded else None
    quantities = {
        "free_area_mm2": Quantity.of("free_area_mm2", _area(outlines) if bounded else None),
        "usable_area_mm2": Quantity.of("usable_area_mm2", _area(usable) if bounded else None),
        "inscribed_radius_mm": Quantity.of(
            "inscribed_radius_mm", max(circle.radius_mm, 0.0) if circle is not None else None
        ),
    }
    return _result(window, frame, "seed", triangle, level, side, quantities, outlines, circle, notes=notes, bounded=bounded)


def points_window(
    fields: ObstacleFields, view: View, points_lps_mm: np.ndarray, settings: WindowSettings
) -> BoundedWindow:
    """The window bounded by the projected triangle A, B, C (origin at its centroid).

    The target depth of each ray is where it meets the triangle's plane, clamped to the
    vertices' depths; the image just covers the projected triangle.
    """
    pts = np.asarray(points_lps_mm, float)
    centroid = pts.mean(axis=0)
    normal = np.cross(pts[1] - pts[0], pts[2] - pts[0])
    uv, depth = view.project(pts, centroid)
    # the image only needs to cover the triangle (everything outside it is clipped)
    settings = _replace(settings, half_size_mm=float(np.abs(uv).max()) + 1.0)
    return BoundedWindow(
        fields, view, centroid, settings,
        triangle_uv_mm=uv,
        triangle_plane=(centroid, normal / np.linalg.norm(normal)),
        depth_clamp_mm=(float(depth.min()), float(depth.max())),
    )


def seed_window(
    fields: ObstacleFields,
    frame: EndplateFrame,
    view: View,
    seed_lps_mm: np.ndarray,
    settings: WindowSettings,
    *,
    upper_line_lps_mm: np.ndarray | None = None,
) -> BoundedWindow:
    """The window around a seed (origin), bounded by the endplate line and an optional upper line."""
    seed = np.asarray(seed_lps_mm, float)
    # the guard circle must fit, and nothing beyond it matters
    settings = _replace(settings, half_size_mm=settings.guard_radius_mm + 1.0)
    planes = [_endplate_line(frame, view, seed)]
    if upper_line_lps_mm is not None:
        uv_top, _ = view.project(np.asarray(upper_line_lps_mm, float), seed)
        planes.append(HalfPlane((0.0, -1.0), -float(uv_top[1]), "pedicle line"))
    return BoundedWindow(fields, view, seed, settings, half_planes=planes)


# --- helpers ----------------------------------------------------------------------------------


def _check_what(triangle: str, level: str) -> tuple[str, str]:
    return check_choice("triangle", triangle, TRIANGLES), check_choice("level", level, tuple(LEVELS))


def _check_points(points: np.ndarray, count: int = 3) -> np.ndarray:
    pts = np.asarray(points, float)
    if pts.shape != (count, 3) or not np.all(np.isfinite(pts)):
        raise InputError(f"expected {count} finite 3D points (LPS mm); got an array of shape {pts.shape}")
    if count == 3 and np.linalg.norm(np.cross(pts[1] - pts[0], pts[2] - pts[0])) < 1e-6:
        raise InputError("the three points are collinear (or repeated); place A, B, C at the triangle's corners")
    return pts


def _replace(settings: WindowSettings, **changes) -> WindowSettings:
    from dataclasses import replace

    return replace(settings, **changes)


def _area(outlines: list[np.ndarray]) -> float:
    return float(max(sum(shoelace_area_mm2(p) for p in outlines), 0.0))


def _endplate_line(frame: EndplateFrame, view, origin: np.ndarray) -> HalfPlane:
    """Keep points cranial of the endplate plane at the origin's depth: v ≥ v_E."""
    vn = float(view.v @ frame.normal)  # > 0: v is n's part ⟂ d
    v_e = -float((origin - frame.centre_lps_mm) @ frame.normal) / vn
    return HalfPlane((0.0, 1.0), v_e, "endplate line")


def seed_region(window: BoundedWindow, snap_mm: float = 2.0) -> tuple[np.ndarray | None, list[str]]:
    """The free region of the window that holds the seed (image (0, 0)).

    The free set within the bounds is opened by ρ: its instrument-wide parts are the connected
    components of the opened set, so gaps narrower than the instrument do not connect regions.
    Every free pixel then goes to the instrument-wide part it is reached from through free space,
    and a narrow channel between two parts is split at its narrowest point (a watershed of the
    clearance from those parts). The seed's region is therefore its instrument-wide part plus the
    slivers and corners that hang on it, and the free area no longer jumps by whole slivers whose
    width is close to 2ρ (they used to be dropped beyond a 2-pixel margin, so a 0.1 mm change in a
    sliver's width moved the area by square millimetres). Narrow parts that reach the guard radius
    (cracks through which the window leaks) are left out.

    Returns:
        ((H, W) bool region or None when there is no free space near the seed, notes). The region
        reaches the guard radius only if the seed's instrument-wide part does (:func:`reaches_guard`).
    """
    from skimage.segmentation import watershed

    image = window.image
    px = image.pixel_mm
    rho = window.settings.instrument_radius_mm
    values = window.field_mm()
    free = values >= 0
    eroded = values >= rho
    opened = ndimage.distance_transform_edt(~eroded, sampling=px) <= rho if eroded.any() else eroded
    opened &= free
    centre = np.array(values.shape) // 2
    notes: list[str] = []
    if not opened[tuple(centre)]:
        rows, cols = np.nonzero(opened)
        if rows.size == 0:
            return None, [f"no free space of radius {rho:g} mm in this view; the window is closed"]
        dist = np.hypot(rows - centre[0], cols - centre[1]) * px
        k = int(np.argmin(dist))
        if dist[k] > snap_mm:
            return None, [
                f"the seed lies on bone or nerve in this view and free space is {dist[k]:.1f} mm away; "
                "move the seed into the window"
            ]
        notes.append(f"the seed was on bone or nerve in this view; moved {dist[k]:.2f} mm to free space")
        centre = np.array([rows[k], cols[k]])
    parts, _ = ndimage.label(opened)
    seed_part = parts[tuple(centre)]
    # flooding -clearance from the parts meets in the middle of each channel's narrowest point
    region = watershed(-np.where(free, values, 0.0), parts, mask=free) == seed_part
    # a crack that leaks out to the guard radius is not part of the window (as before: cut 2 pixels
    # past the instrument-wide part by the outlines' margin)
    cracks, _ = ndimage.label(region & (parts != seed_part))
    uu, vv = image.grid_uv()
    leaking = np.unique(cracks[(cracks > 0) & (np.hypot(uu, vv) >= window.settings.guard_radius_mm)])
    return region & ~np.isin(cracks, leaking), notes


def reaches_guard(window: BoundedWindow, region: np.ndarray) -> bool:
    uu, vv = window.image.grid_uv()
    return bool(np.any(region & (np.hypot(uu, vv) >= window.settings.guard_radius_mm)))


def _result(
    window: BoundedWindow,
    frame: EndplateFrame,
    mode: str,
    triangle: str,
    level: str,
    side: str,
    quantities: dict[str, Quantity],
    outlines: list[np.ndarray],
    circle,
    *,
    triangle_lps: np.ndarray | None = None,
    notes: list[str] | None = None,
    bounded: bool = True,
) -> TriangleMeasurement:
    projected = None
    if triangle_lps is not None:
        uv, _ = window.view.project(triangle_lps, window.origin_lps_mm)
        projected = window.to_lps(uv)
    centre = target = None
    if circle is not None and np.isfinite(circle.radius_mm) and circle.radius_mm > 0:
        centre = window.to_lps(circle.centre_uv_mm)
        target = window.to_lps(circle.centre_uv_mm, float(window.target_depth_mm(circle.centre_uv_mm)))
    return TriangleMeasurement(
        triangle=triangle,
        level=level,
        side=window.view.side,
        mode=mode,
        view=window.view,
        frame=frame,
        settings=window.settings,
        plane_origin_lps_mm=np.asarray(window.origin_lps_mm, float),
        bounded=bounded,
        quantities=quantities,
        outlines_lps_mm=[window.to_lps(p) for p in outlines],
        triangle_lps_mm=triangle_lps,
        triangle_projected_lps_mm=projected,
        inscribed_centre_lps_mm=centre,
        target_lps_mm=target,
        notes=tuple(notes or ()),
    )


