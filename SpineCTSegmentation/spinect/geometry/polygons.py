"""2D polygons in the image plane: shoelace area, contours of a field, signed distance to a
polygon, and the largest inscribed circle.

Coordinates are image-plane (u, v) in mm (see :mod:`spinect.geometry.frame`). Fields are (H, W)
arrays with rows along v and columns along u, sampled at pixel centres ``v_mm[i]``, ``u_mm[j]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import optimize
from skimage import measure

__all__ = [
    "shoelace_area_mm2",
    "field_contours_mm",
    "contours_area_mm2",
    "polygon_signed_distance_mm",
    "clip_polygon_halfplane",
    "clip_polygon_convex",
    "Circle",
    "inscribed_circle",
    "outlines_signed_distance_mm",
    "outlines_inscribed_circle",
    "triangle_inradius_mm",
]


def shoelace_area_mm2(polygon_uv_mm: np.ndarray) -> float:
    """Signed area of a simple polygon by the shoelace formula (positive when counter-clockwise).

    Args:
        polygon_uv_mm: (N, 2) vertices (u, v) in mm; the closing vertex may be repeated or not.

    Returns:
        Signed area, mm².
    """
    p = np.asarray(polygon_uv_mm, float)
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def field_contours_mm(
    field: np.ndarray, u_mm: np.ndarray, v_mm: np.ndarray, *, level: float = 0.0
) -> list[np.ndarray]:
    """Closed contours of ``{field ≥ level}`` by marching squares (skimage ``find_contours``).

    The field is padded with a value below ``level`` so every contour closes. Outer outlines run
    counter-clockwise in (u, v) and hole outlines clockwise, so summing their shoelace areas
    gives the region's area (:func:`contours_area_mm2`).

    Args:
        field: (H, W) float field on the pixel grid.
        u_mm: (W,) pixel-centre u coordinates (uniform); v_mm: (H,) v coordinates (uniform).
        level: iso-value.

    Returns:
        List of (N, 2) float64 closed polygons (u, v) in mm, first vertex repeated at the end.
    """
    padded = np.pad(np.asarray(field, float), 1, constant_values=level - 1.0)
    contours = measure.find_contours(padded, level, positive_orientation="high")
    du = float(u_mm[1] - u_mm[0]) if len(u_mm) > 1 else 1.0
    dv = float(v_mm[1] - v_mm[0]) if len(v_mm) > 1 else 1.0
    out = []
    for rc in contours:
        u = u_mm[0] + (rc[:, 1] - 1.0) * du
        v = v_mm[0] + (rc[:, 0] - 1.0) * dv
        poly = np.stack([u, v], axis=1)
        # skimage orients in (row, col); (u, v) = (col, row) swaps handedness: flip to CCW outers
        out.append(poly[::-1] if du * dv > 0 else poly)
    return out


def contours_area_mm2(contours: list[np.ndarray]) -> float:
    """Area enclosed by outer contours minus holes (sum of signed shoelace areas), mm²."""
    return float(max(sum(shoelace_area_mm2(c) for c in contours), 0.0))


def clip_polygon_halfplane(polygon_uv_mm: np.ndarray, normal: np.ndarray, offset: float) -> np.ndarray:
    """Part of a polygon in the half-plane ``p·normal ≥ offset`` (Sutherland–Hodgman, one edge).

    Works for non-convex polygons (the result may hold zero-width bridges, which add no area) and
    keeps the orientation, so clipped holes still subtract.

    Args:
        polygon_uv_mm: (N, 2) vertices (closing vertex repeated or not).
        normal: (2,) half-plane normal (pointing into the kept side).
        offset: the line is ``p·normal = offset``.

    Returns:
        (M, 2) clipped vertices, not repeated (M = 0 when nothing is left).
    """
    p = np.asarray(polygon_uv_mm, float)
    if len(p) > 1 and np.allclose(p[0], p[-1]):
        p = p[:-1]
    if len(p) == 0:
        return p.reshape(0, 2)
    s = p @ np.asarray(normal, float) - offset
    q, sq = np.roll(p, -1, axis=0), np.roll(s, -1)
    out = []
    for k in range(len(p)):
        if s[k] >= 0:
            out.append(p[k])
        if (s[k] >= 0) != (sq[k] >= 0):
            out.append(p[k] + (q[k] - p[k]) * (s[k] / (s[k] - sq[k])))
    return np.asarray(out, float).reshape(-1, 2)


def clip_polygon_convex(polygon_uv_mm: np.ndarray, convex_uv_mm: np.ndarray, *, inset_mm: float = 0.0) -> np.ndarray:
    """Part of a polygon inside a convex polygon (either orientation), orientation kept.

    ``inset_mm`` > 0 clips to the convex polygon shrunk by that distance (each edge moved inward).
    """
    convex = np.asarray(convex_uv_mm, float)
    sign = 1.0 if shoelace_area_mm2(convex) >= 0 else -1.0
    out = np.asarray(polygon_uv_mm, float)
    for a, b in zip(convex, np.roll(convex, -1, axis=0)):
        edge = b - a
        inward = sign * np.array([-edge[1], edge[0]]) / max(float(np.linalg.norm(edge)), 1e-30)
        out = clip_polygon_halfplane(out, inward, float(inward @ a) + inset_mm)
        if len(out) == 0:
            break
    return out


def polygon_signed_distance_mm(points_uv_mm: np.ndarray, polygon_uv_mm: np.ndarray) -> np.ndarray:
    """Signed distance from points to a simple polygon's outline (positive inside).

    Args:
        points_uv_mm: (..., 2) query points (u, v), mm.
        polygon_uv_mm: (K, 2) vertices, either orientation, not repeated.

    Returns:
        (...) float64 signed distance, mm.
    """
    pts = np.asarray(points_uv_mm, float)
    return outlines_signed_distance_mm(pts.reshape(-1, 2), [polygon_uv_mm]).reshape(pts.shape[:-1])


def triangle_inradius_mm(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    """Inradius of a triangle (any dimension): 2·area / perimeter, mm."""
    a, b, c = (np.asarray(p, float) for p in (a, b, c))
    ab, ac = b - a, c - a
    if len(a) == 2:
        area = 0.5 * abs(ab[0] * ac[1] - ab[1] * ac[0])
    else:
        area = 0.5 * float(np.linalg.norm(np.cross(ab, ac)))
    perimeter = np.linalg.norm(ab) + np.linalg.norm(ac) + np.linalg.norm(c - b)
    return float(2.0 * area / perimeter) if perimeter > 0 else 0.0


@dataclass(frozen=True)
class Circle:
    """A circle in the image plane: centre (u, v) mm and radius mm (≤ 0: none fits)."""

    centre_uv_mm: np.ndarray
    radius_mm: float


def inscribed_circle(
    field: np.ndarray,
    u_mm: np.ndarray,
    v_mm: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    exact: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Circle:
    """Largest inscribed circle of ``{field ≥ 0}`` where the field is a distance to the outline.

    For a clearance field (distance to the nearest obstacle, positive inside the window) the
    maximum is the radius of the largest circle that fits and its argmax the centre. The best
    pixel is refined by Nelder–Mead on ``exact`` (the field evaluated off-grid, e.g. rays cast at
    any (u, v)), so the result is not limited to the pixel size.

    Args:
        field: (H, W) float field (mm).
        u_mm, v_mm: pixel-centre coordinates.
        mask: (H, W) bool, pixels allowed to hold the centre (default all).
        exact: maps (N, 2) points (u, v) to (N,) field values; None keeps the best pixel.

    Returns:
        The :class:`Circle` (radius −inf when the mask is empty).
    """
    values = np.where(mask, field, -np.inf) if mask is not None else np.asarray(field, float)
    if not np.isfinite(values).any():
        return Circle(np.array([np.nan, np.nan]), float("-inf"))
    i, j = np.unravel_index(int(np.argmax(values)), values.shape)
    best = np.array([u_mm[j], v_mm[i]], float)
    radius = float(values[i, j])
    if exact is None or radius <= 0:
        return Circle(best, radius)
    step = float(abs(u_mm[1] - u_mm[0])) if len(u_mm) > 1 else 0.25
    simplex = np.array([best, best + [step, 0.0], best + [0.0, step]])
    reach = 2.0 * step  # stay by the best pixel: a far jump could land in another region

    def objective(p: np.ndarray) -> float:
        return -float(exact(p[None, :])[0]) + 10.0 * max(0.0, float(np.linalg.norm(p - best)) - reach)

    res = optimize.minimize(
        objective,
        best,
        method="Nelder-Mead",
        options={"initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-4, "maxiter": 200},
    )
    if -res.fun > radius:
        return Circle(np.asarray(res.x, float), float(-res.fun))
    return Circle(best, radius)


def _outline_edges(outlines_uv_mm: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points (E, 2) of every edge of a set of closed outlines (closure included)."""
    starts, ends = [], []
    for poly in outlines_uv_mm:
        p = np.asarray(poly, float)
        if len(p) > 1 and np.allclose(p[0], p[-1]):
            p = p[:-1]
        if len(p) < 2:
            continue
        starts.append(p)
        ends.append(np.roll(p, -1, axis=0))
    if not starts:
        return np.zeros((0, 2)), np.zeros((0, 2))
    return np.concatenate(starts), np.concatenate(ends)


def outlines_signed_distance_mm(
    points_uv_mm: np.ndarray, outlines_uv_mm: list[np.ndarray], *, chunk: int = 4_000_000
) -> np.ndarray:
    """Signed distance (mm, positive inside) from points to a region given by its outlines.

    The region is the even-odd interior of all outlines together (outer outlines and holes);
    the distance is the exact distance to the nearest edge segment.

    Args:
        points_uv_mm: (N, 2) query points (u, v), mm.
        outlines_uv_mm: closed polygons (K_i, 2), closing vertex repeated or not.
        chunk: bound on points × edges evaluated at once (memory).

    Returns:
        (N,) float64 signed distance; −inf everywhere when there are no edges.
    """
    pts = np.asarray(points_uv_mm, float).reshape(-1, 2)
    a, b = _outline_edges(outlines_uv_mm)
    if len(a) == 0:
        return np.full(len(pts), -np.inf)
    edge = b - a
    length2 = np.maximum(np.sum(edge * edge, axis=1), 1e-30)
    out = np.empty(len(pts))
    step = max(1, chunk // len(a))
    for first in range(0, len(pts), step):
        q = pts[first : first + step, None, :]  # (n, 1, 2)
        rel = q - a
        t = np.clip(np.sum(rel * edge, axis=-1) / length2, 0.0, 1.0)
        dist = np.sqrt(np.min(np.sum((rel - t[..., None] * edge) ** 2, axis=-1), axis=1))
        y = q[..., 1]
        crosses = (a[:, 1] > y) != (b[:, 1] > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = a[:, 0] + (y - a[:, 1]) * edge[:, 0] / edge[:, 1]
        inside = (np.sum(crosses & (q[..., 0] < x_cross), axis=1) % 2) == 1
        out[first : first + step] = np.where(inside, dist, -dist)
    return out


def outlines_inscribed_circle(
    outlines_uv_mm: list[np.ndarray], *, precision_mm: float = 0.005, start_uv_mm: np.ndarray | None = None
) -> Circle:
    """Largest circle inside a region given by its outlines (outer outlines and holes), exactly.

    The "pole of inaccessibility" search (polylabel, Agafonkin 2016) on the exact signed distance
    to the outline segments (:func:`outlines_signed_distance_mm`): square cells covering the
    region are split while a cell could still hold a centre better than the best found by more
    than ``precision_mm`` (a cell of half-size h cannot beat its centre's distance by more than
    h·√2). Unlike a distance transform on pixels, the radius is not rounded to the pixel size and
    interpolation does not flatten the ridge it sits on.

    Args:
        outlines_uv_mm: closed polygons (K_i, 2), (u, v) mm.
        precision_mm: the radius found is within this of the true maximum.
        start_uv_mm: (2,) an optional first guess (e.g. the best pixel).

    Returns:
        The :class:`Circle` (radius −inf, centre NaN when there is no outline).
    """
    a, _ = _outline_edges(outlines_uv_mm)
    if len(a) == 0:
        return Circle(np.array([np.nan, np.nan]), float("-inf"))
    lo, hi = a.min(axis=0), a.max(axis=0)
    half = 0.5 * float(min(hi[0] - lo[0], hi[1] - lo[1]))
    if half <= 0:
        return Circle(np.array([np.nan, np.nan]), 0.0)
    us = np.arange(lo[0] + half, hi[0] + half, 2 * half)
    vs = np.arange(lo[1] + half, hi[1] + half, 2 * half)
    cells = np.stack(np.meshgrid(us, vs), axis=-1).reshape(-1, 2)
    guesses = [0.5 * (lo + hi)] + ([np.asarray(start_uv_mm, float)] if start_uv_mm is not None else [])
    values = outlines_signed_distance_mm(np.array(guesses), outlines_uv_mm)
    best_value, best = float(values.max()), np.array(guesses[int(np.argmax(values))])
    while len(cells):
        d = outlines_signed_distance_mm(cells, outlines_uv_mm)
        k = int(np.argmax(d))
        if d[k] > best_value:
            best_value, best = float(d[k]), cells[k].copy()
        keep = d + half * np.sqrt(2.0) > best_value + precision_mm
        half *= 0.5
        offsets = np.array([[-half, -half], [half, -half], [-half, half], [half, half]])
        cells = (cells[keep][:, None, :] + offsets).reshape(-1, 2)
    return Circle(best, best_value)
