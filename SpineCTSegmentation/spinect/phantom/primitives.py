"""Implicit shapes: signed-distance functions of physical coordinates (mm).

Every primitive lives in its own orthonormal frame (``centre``, ``axes`` whose rows are the
local unit axes written in phantom-body coordinates) and returns a signed distance in mm
(negative inside). Exact for boxes and capsules; for ellipses and ellipsoids the value is the
first-order estimate f/|grad f|, exact on the surface and close within a few mm of it, which is
what labels (the sign) and partial-volume coverage (the value near 0) need.

Shapes are evaluated either on points ((N, 3) arrays) or on an index box of a voxel grid
(:class:`GridBox`), where local coordinates come from an affine map of the voxel indices so a
primitive costs a few vectorised operations on its own bounding box only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = [
    "BIG_MM",
    "smoothstep",
    "Primitive",
    "RoundBox",
    "Ellipsoid",
    "TubeSegment",
    "VertebralBody",
    "EllipticColumn",
    "GridBox",
    "frame_from_vectors",
    "tube_segments",
    "smooth_min",
]

#: Distance used for "far outside" (mm).
BIG_MM = 1.0e4


def frame_from_vectors(primary: Sequence[float], secondary: Sequence[float], *, primary_axis: int = 2) -> np.ndarray:
    """Orthonormal right-handed axes (rows) with row ``primary_axis`` along ``primary``.

    ``secondary`` fixes the rotation about the primary axis: the next axis (cyclically) is the
    part of ``secondary`` perpendicular to ``primary``. Falls back to another reference when the
    two are parallel.
    """
    p = np.asarray(primary, float)
    p = p / np.linalg.norm(p)
    s = np.asarray(secondary, float)
    s = s - (s @ p) * p
    if np.linalg.norm(s) < 1e-6:
        alt = np.eye(3)[np.argmin(np.abs(p))]
        s = alt - (alt @ p) * p
    s = s / np.linalg.norm(s)
    t = np.cross(p, s)
    axes = np.empty((3, 3))
    axes[primary_axis] = p
    axes[(primary_axis + 1) % 3] = s
    axes[(primary_axis + 2) % 3] = t
    return axes


def smoothstep(t):
    """Hermite step 3t^2 - 2t^3 of ``t`` clipped to [0, 1] (0 below 0, 1 above 1, flat at both ends)."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (fillet radius about ``k`` mm); plain minimum when k <= 0."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(k - np.abs(a - b), 0.0, None) / k
    return np.minimum(a, b) - (h * h) * (0.25 * k)


def _ellipse_sdf(terms: Sequence[tuple[np.ndarray, float | np.ndarray]]) -> np.ndarray:
    """First-order signed distance to the ellipse/ellipsoid sum((x_i / r_i)^2) = 1.

    Args:
        terms: (coordinate array, semi-axis) pairs; semi-axes may be arrays (tapering shapes).
    """
    q2 = None
    g2 = None
    r_min = None
    r_max = None
    for x, r in terms:
        u = x / r
        uu = u * u
        gg = uu / (r * r)
        q2 = uu if q2 is None else q2 + uu
        g2 = gg if g2 is None else g2 + gg
        r_min = r if r_min is None else np.minimum(r_min, r)
        r_max = r if r_max is None else np.maximum(r_max, r)
    q = np.sqrt(q2)
    grad = np.sqrt(g2) / np.maximum(q, 1e-6)
    grad = np.clip(grad, 1.0 / r_max, 1.0 / r_min)
    return (q - 1.0) / grad


@dataclass
class Primitive:
    """Base class: a shape in a local frame.

    Attributes:
        centre: (3,) origin of the local frame in body coordinates (mm).
        axes: (3, 3) rows = local unit axes in body coordinates.
    """

    centre: np.ndarray
    axes: np.ndarray

    def local_sdf(self, l0: np.ndarray, l1: np.ndarray, l2: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def local_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) corners of a local axis-aligned box containing the shape."""
        raise NotImplementedError

    def body_bounds(self, pad_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of an axis-aligned body-coordinate box containing the shape, padded."""
        cached = self.__dict__.get("_bounds")
        if cached is None:
            lo, hi = self.local_bounds()
            corners = np.array([[c0, c1, c2] for c0 in (lo[0], hi[0]) for c1 in (lo[1], hi[1]) for c2 in (lo[2], hi[2])])
            body = self.centre + corners @ self.axes
            cached = (body.min(axis=0), body.max(axis=0))
            self.__dict__["_bounds"] = cached
        return cached[0] - pad_mm, cached[1] + pad_mm

    def local_inside(self, l0: np.ndarray, l1: np.ndarray, l2: np.ndarray) -> np.ndarray:
        """Boolean inside test (same sign as :meth:`local_sdf`, often cheaper)."""
        return self.local_sdf(l0, l1, l2) < 0

    def sdf_points(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (mm) at (N, 3) body-coordinate points."""
        local = (np.asarray(points, float) - self.centre) @ self.axes.T
        return self.local_sdf(local[:, 0], local[:, 1], local[:, 2])


@dataclass
class RoundBox(Primitive):
    """Box with half sizes ``half`` (local axes) and edges rounded by ``radius`` (exact SDF)."""

    half: np.ndarray = field(default_factory=lambda: np.ones(3))
    radius: float = 0.0

    def local_sdf(self, l0, l1, l2):
        # Python floats keep float32 arrays float32 (NumPy 2 promotes with NumPy scalars).
        r = float(min(self.radius, float(np.min(self.half))))
        h0, h1, h2 = (float(v) - r for v in self.half)
        q0, q1, q2 = np.abs(l0) - h0, np.abs(l1) - h1, np.abs(l2) - h2
        inside = np.minimum(np.maximum(np.maximum(q0, q1), q2), 0.0)
        outside = np.sqrt(np.maximum(q0, 0) ** 2 + np.maximum(q1, 0) ** 2 + np.maximum(q2, 0) ** 2)
        return outside + inside - r

    def local_bounds(self):
        return -np.asarray(self.half, float), np.asarray(self.half, float)


@dataclass
class Ellipsoid(Primitive):
    """Ellipsoid with semi-axes ``radii`` along the local axes."""

    radii: np.ndarray = field(default_factory=lambda: np.ones(3))

    def local_sdf(self, l0, l1, l2):
        r = [float(v) for v in self.radii]
        return _ellipse_sdf(((l0, r[0]), (l1, r[1]), (l2, r[2])))

    def local_inside(self, l0, l1, l2):
        r = [float(v) for v in self.radii]
        return (l0 / r[0]) ** 2 + (l1 / r[1]) ** 2 + (l2 / r[2]) ** 2 < 1.0

    def local_bounds(self):
        return -np.asarray(self.radii, float), np.asarray(self.radii, float)


@dataclass
class TubeSegment(Primitive):
    """One segment of a tube with elliptic cross-section and rounded (capsule-like) ends.

    Local frame: origin at the segment start, axis 2 along the segment (``length`` mm), axis 0
    the "lateral" semi-axis (``a0`` -> ``a1``), axis 1 the other (``b0`` -> ``b1``), linearly
    tapering. With a = b it is an exact capsule (a tapered one to first order).
    """

    length: float = 1.0
    a0: float = 1.0
    b0: float = 1.0
    a1: float = 1.0
    b1: float = 1.0

    def __post_init__(self) -> None:
        for name in ("length", "a0", "b0", "a1", "b1"):
            setattr(self, name, float(getattr(self, name)))

    def local_inside(self, l0, l1, l2):
        h = np.clip(l2, 0.0, self.length)
        t = h / self.length
        a = self.a0 + (self.a1 - self.a0) * t
        b = self.b0 + (self.b1 - self.b0) * t
        w = l2 - h
        c = np.minimum(a, b)
        return (l0 / a) ** 2 + (l1 / b) ** 2 + (w / c) ** 2 < 1.0

    def local_sdf(self, l0, l1, l2):
        h = np.clip(l2, 0.0, self.length)
        if self.a0 == self.b0 and self.a1 == self.b1:  # circular: exact (tapered) capsule
            w = l2 - h
            r = self.a0 + (self.a1 - self.a0) / self.length * h
            return np.sqrt(l0 * l0 + l1 * l1 + w * w) - r
        t = h / self.length
        a = self.a0 + (self.a1 - self.a0) * t
        b = self.b0 + (self.b1 - self.b0) * t
        c = np.minimum(a, b)
        return _ellipse_sdf(((l0, a), (l1, b), (l2 - h, c)))

    def local_bounds(self):
        a, b = max(self.a0, self.a1), max(self.b0, self.b1)
        c = min(a, b)
        return np.array([-a, -b, -c]), np.array([a, b, self.length + c])


@dataclass
class VertebralBody(Primitive):
    """Elliptic cylinder with a waist and a flattened posterior wall, cut by two end planes.

    Local frame: axis 0 lateral, axis 1 posterior, axis 2 cranial. End planes are given in local
    coordinates as (unit normal pointing outwards, offset): inside where n . l <= offset. Used for
    vertebral bodies and (without waist) intervertebral discs.
    """

    a: float = 20.0
    b: float = 15.0
    half_height: float = 12.0
    waist: float = 0.0
    posterior_flat: float = 1.0
    post_shift: float = 0.25
    plane_low: tuple[np.ndarray, float] = (np.array([0.0, 0.0, -1.0]), 12.0)
    plane_high: tuple[np.ndarray, float] = (np.array([0.0, 0.0, 1.0]), 12.0)

    def __post_init__(self) -> None:
        for name in ("a", "b", "half_height", "waist", "posterior_flat", "post_shift"):
            setattr(self, name, float(getattr(self, name)))
        self.plane_low = (tuple(float(v) for v in self.plane_low[0]), float(self.plane_low[1]))
        self.plane_high = (tuple(float(v) for v in self.plane_high[0]), float(self.plane_high[1]))

    def local_sdf(self, l0, l1, l2):
        shift = self.post_shift * self.b
        y = l1 - shift
        bb = self.b + shift
        if self.waist > 0:
            w = 1.0 - self.waist * np.clip(1.0 - (l2 / self.half_height) ** 2, 0.0, 1.0)
            d = _ellipse_sdf(((l0, self.a * w), (y, bb * w)))
        else:
            d = _ellipse_sdf(((l0, self.a), (y, bb)))
        d = np.maximum(d, l1 - self.b * self.posterior_flat)
        for normal, offset in (self.plane_low, self.plane_high):
            d = np.maximum(d, normal[0] * l0 + normal[1] * l1 + normal[2] * l2 - offset)
        return d

    def local_bounds(self):
        h = self.half_height * 1.6 + 2.0  # planes are tilted: generous height
        return np.array([-self.a, -self.b, -h]), np.array([self.a, self.b, h])


@dataclass
class EllipticColumn(Primitive):
    """Vertical elliptic column (body outline): semi-axes vary linearly with local axis 2 and
    the posterior side (local axis 1) is flattened at ``flat_1``; height ``half_height``."""

    rx0: float = 150.0
    ry0: float = 110.0
    rx_slope: float = 0.0
    ry_slope: float = 0.0
    flat_1: float = 1.0e3
    half_height: float = 1.0e3

    def __post_init__(self) -> None:
        for name in ("rx0", "ry0", "rx_slope", "ry_slope", "flat_1", "half_height"):
            setattr(self, name, float(getattr(self, name)))

    def local_sdf(self, l0, l1, l2):
        rx = self.rx0 + self.rx_slope * l2
        ry = self.ry0 + self.ry_slope * l2
        d = _ellipse_sdf(((l0, rx), (l1, ry)))
        d = np.maximum(d, l1 - self.flat_1)
        return np.maximum(d, np.abs(l2) - self.half_height)

    def local_inside(self, l0, l1, l2):
        rx = self.rx0 + self.rx_slope * l2
        ry = self.ry0 + self.ry_slope * l2
        q = (l0 / rx) ** 2
        q += (l1 / ry) ** 2
        return (q < 1.0) & (l1 < self.flat_1) & (np.abs(l2) < self.half_height)

    def local_bounds(self):
        h = self.half_height
        rx = self.rx0 + abs(self.rx_slope) * h
        ry = self.ry0 + abs(self.ry_slope) * h
        return np.array([-rx, -ry, -h]), np.array([rx, min(ry, self.flat_1), h])


def tube_segments(
    points: np.ndarray,
    semi_a: np.ndarray,
    semi_b: np.ndarray | None = None,
    *,
    lateral: Sequence[float] = (1.0, 0.0, 0.0),
) -> list[TubeSegment]:
    """Segments of a tube along a polyline.

    Args:
        points: (N, 3) centreline vertices, body coordinates (mm).
        semi_a: (N,) semi-axis along ``lateral`` (projected perpendicular to each segment).
        semi_b: (N,) other semi-axis; default ``semi_a`` (circular tube).
        lateral: reference direction of the ``a`` semi-axis.
    """
    points = np.asarray(points, float)
    semi_a = np.asarray(semi_a, float)
    semi_b = semi_a if semi_b is None else np.asarray(semi_b, float)
    segments = []
    for i in range(len(points) - 1):
        d = points[i + 1] - points[i]
        length = float(np.linalg.norm(d))
        if length < 1e-6:
            continue
        axes = frame_from_vectors(d, lateral, primary_axis=2)
        segments.append(
            TubeSegment(points[i].copy(), axes, length=length, a0=semi_a[i], b0=semi_b[i], a1=semi_a[i + 1], b1=semi_b[i + 1])
        )
    return segments


class GridBox:
    """A box of voxel indices of a grid, with the affine map voxel index -> body coordinates.

    Body point of voxel (iz, iy, ix): ``origin + iz * step[0] + iy * step[1] + ix * step[2]``.

    Args:
        origin: (3,) body coordinates of voxel (0, 0, 0) of the whole grid.
        step: (3, 3) rows = body displacement of one voxel along z, y, x indices.
        lo, hi: (3,) int index bounds (z, y, x) of this box, hi exclusive.
    """

    def __init__(self, origin: np.ndarray, step: np.ndarray, lo: Sequence[int], hi: Sequence[int], _inverse=None) -> None:
        self.origin = np.asarray(origin, float)
        self.step = np.asarray(step, float)
        self.lo = np.asarray(lo, int)
        self.hi = np.asarray(hi, int)
        self._inverse = np.linalg.inv(self.step.T) if _inverse is None else _inverse

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.hi - self.lo)

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Slices of this box in the whole grid's array."""
        return tuple(slice(int(a), int(b)) for a, b in zip(self.lo, self.hi))

    def slices_in(self, parent: "GridBox") -> tuple[slice, slice, slice]:
        """Slices of this box inside ``parent``'s array."""
        return tuple(slice(int(a - p), int(b - p)) for a, b, p in zip(self.lo, self.hi, parent.lo))

    def sub_many(self, body_lo: np.ndarray, body_hi: np.ndarray) -> list["GridBox | None"]:
        """Boxes covering each of P body-coordinate AABBs ((P, 3) lo and hi); None where empty."""
        body_lo, body_hi = np.atleast_2d(body_lo), np.atleast_2d(body_hi)
        sel = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1], [1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1]])
        both = np.stack([body_lo, body_hi], axis=1)  # (P, 2, 3)
        corners = np.stack([both[:, sel[:, k], k] for k in range(3)], axis=-1)  # (P, 8, 3)
        idx = (corners - self.origin) @ self._inverse.T
        lo = np.maximum(np.floor(idx.min(axis=1)).astype(int), self.lo)
        hi = np.minimum(np.ceil(idx.max(axis=1)).astype(int) + 1, self.hi)
        ok = np.all(hi > lo, axis=1)
        return [GridBox(self.origin, self.step, lo[i], hi[i], self._inverse) if ok[i] else None for i in range(len(ok))]

    def sub(self, body_lo: np.ndarray, body_hi: np.ndarray) -> "GridBox | None":
        """The part of this box covering the body-coordinate AABB (None when empty)."""
        return self.sub_many(body_lo, body_hi)[0]

    def local(self, prim: Primitive) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Local coordinates of ``prim`` at this box's voxel centres: three (Z, Y, X) float32 arrays."""
        iz, iy, ix = (np.arange(a, b, dtype=np.float64) for a, b in zip(self.lo, self.hi))
        out = []
        for r in range(3):
            coef = self.step @ prim.axes[r]  # d(local r)/d(index z, y, x)
            off = float(prim.axes[r] @ (self.origin - prim.centre))
            plane = (coef[1] * iy)[:, None] + (coef[2] * ix)[None, :]
            col = coef[0] * iz + off
            out.append(plane.astype(np.float32)[None, :, :] + col.astype(np.float32)[:, None, None])
        return out[0], out[1], out[2]
