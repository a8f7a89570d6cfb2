"""Endplate frame and viewing directions: the coordinate system every triangle number is given in.

All points and vectors are in world coordinates, LPS mm (SimpleITK's convention: +x patient left,
+y posterior, +z superior).

The frame (triangles-research.md §3.1) is built on the lower vertebra's superior endplate:

* ``o`` = endplate centre, ``n`` = endplate normal, pointing cranially;
* ``l`` = patient left-right axis made perpendicular to ``n``, pointing to the patient's left;
* ``a = l × n`` = posterior→anterior axis in the endplate plane.

A viewing direction (the line of sight, which is also the needle direction for a "down the beam"
approach: from the skin towards the target) is

    d(θ, φ) = cos φ · (cos θ · a − s · sin θ · l) + sin φ · n,

with ``s = +1`` for a left-sided target and ``s = −1`` for a right-sided one:

* θ (obliquity, degrees): 0 = straight posterior-anterior (PA); θ > 0 rotates the line of sight so
  that it enters posterolaterally on the target's side and runs anteromedially (ipsilateral oblique,
  the "Scotty dog" view).
* φ (cranio-caudal tilt, degrees): 0 = the endplate is "squared" (d ⟂ n, the endplate projects to
  a line); φ > 0 = the line of sight runs cranially as it goes anteriorly (entry caudal to target).

Image axes of a view: ``v`` = the part of ``n`` perpendicular to ``d`` (image "up" = cranial),
``u = d × v`` (image "right" for a viewer looking along d, as on the fluoroscopy monitor of a
prone patient seen from behind: at θ = 0, u points to the patient's right). A point x projects to
((x−c)·u, (x−c)·v) with depth (x−c)·d, for a chosen plane origin c.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spinect.errors import InputError

__all__ = [
    "EndplateFrame",
    "View",
    "Side",
    "side_sign",
    "fit_plane",
    "frame_from_plane",
    "frame_from_endplate_points",
]

Side = str  #: "left" or "right"
_SIDES = {"left": 1, "right": -1}
_PATIENT_LEFT = np.array([1.0, 0.0, 0.0])  # LPS +x
_SUPERIOR = np.array([0.0, 0.0, 1.0])  # LPS +z


def side_sign(side: Side) -> int:
    """+1 for ``"left"``, −1 for ``"right"``.

    Raises:
        InputError: any other value.
    """
    try:
        return _SIDES[str(side).lower()]
    except KeyError:
        raise InputError(f"side {side!r} is not valid; use 'left' or 'right'") from None


@dataclass(frozen=True)
class View:
    """One viewing direction and its image axes (unit vectors, LPS).

    Attributes:
        theta_deg: obliquity θ (degrees, 0 = PA).
        phi_deg: cranio-caudal tilt φ (degrees, 0 = endplate squared).
        side: ``"left"`` or ``"right"``.
        direction: d, (3,) float64, line of sight from skin towards target.
        u: (3,) image horizontal axis (viewer's right); v: (3,) image vertical axis (cranial).
    """

    theta_deg: float
    phi_deg: float
    side: Side
    direction: np.ndarray
    u: np.ndarray
    v: np.ndarray

    def project(self, points_lps_mm: np.ndarray, origin_lps_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Orthographic projection of points onto the image plane through ``origin_lps_mm``.

        Args:
            points_lps_mm: (N, 3) or (3,) points, LPS mm.
            origin_lps_mm: (3,) plane origin, LPS mm.

        Returns:
            (uv_mm, depth_mm): (N, 2) image coordinates and (N,) depths along d (mm), or (2,)
            and a scalar for a single point.
        """
        rel = np.asarray(points_lps_mm, float) - np.asarray(origin_lps_mm, float)
        uv = np.stack([rel @ self.u, rel @ self.v], axis=-1)
        return uv, rel @ self.direction

    def unproject(self, uv_mm: np.ndarray, origin_lps_mm: np.ndarray, depth_mm: float | np.ndarray = 0.0) -> np.ndarray:
        """Points of the image plane (or at a given depth) back in LPS mm.

        Args:
            uv_mm: (N, 2) or (2,) image coordinates, mm.
            origin_lps_mm: (3,) plane origin used by :meth:`project`.
            depth_mm: depth along d, scalar or (N,).

        Returns:
            (N, 3) or (3,) points, LPS mm.
        """
        uv = np.asarray(uv_mm, float)
        depth = np.asarray(depth_mm, float)[..., None]
        return np.asarray(origin_lps_mm, float) + uv[..., :1] * self.u + uv[..., 1:2] * self.v + depth * self.direction

    def to_dict(self) -> dict[str, object]:
        return {
            "theta_deg": float(self.theta_deg),
            "phi_deg": float(self.phi_deg),
            "side": self.side,
            "direction_lps": [float(x) for x in self.direction],
            "image_u_lps": [float(x) for x in self.u],
            "image_v_lps": [float(x) for x in self.v],
        }


@dataclass(frozen=True)
class EndplateFrame:
    """The lower vertebra's superior endplate frame (see module docstring).

    Attributes:
        centre_lps_mm: o, (3,) endplate centre.
        normal: n, (3,) unit endplate normal, cranial.
        left: l, (3,) unit, ⟂ n, towards patient left.
        anterior: a = l × n, (3,) unit.
    """

    centre_lps_mm: np.ndarray
    normal: np.ndarray
    left: np.ndarray
    anterior: np.ndarray

    def direction(self, theta_deg: float, phi_deg: float, side: Side) -> np.ndarray:
        """Line of sight d(θ, φ) for a target on ``side``, (3,) unit vector (LPS)."""
        s = side_sign(side)
        th, ph = np.radians(theta_deg), np.radians(phi_deg)
        horizontal = np.cos(th) * self.anterior - s * np.sin(th) * self.left
        return np.cos(ph) * horizontal + np.sin(ph) * self.normal

    def view(self, theta_deg: float, phi_deg: float, side: Side) -> View:
        """The :class:`View` for (θ, φ) on ``side``; |φ| must stay below 90°."""
        d = self.direction(theta_deg, phi_deg, side)
        v = self.normal - np.dot(self.normal, d) * d
        norm = np.linalg.norm(v)
        if norm < 1e-6:
            raise InputError(f"tilt φ={phi_deg}° looks along the endplate normal; use |φ| < 90°")
        v = v / norm
        return View(float(theta_deg), float(phi_deg), str(side).lower(), d, np.cross(d, v), v)

    def angles_of(self, direction: np.ndarray, side: Side) -> tuple[float, float]:
        """Inverse of :meth:`direction`: (θ, φ) in degrees of a line of sight."""
        d = np.asarray(direction, float) / np.linalg.norm(direction)
        s = side_sign(side)
        phi = np.degrees(np.arcsin(np.clip(d @ self.normal, -1.0, 1.0)))
        theta = np.degrees(np.arctan2(-s * (d @ self.left), d @ self.anterior))
        return float(theta), float(phi)

    def to_dict(self) -> dict[str, object]:
        return {
            "centre_lps_mm": [float(x) for x in self.centre_lps_mm],
            "normal_lps": [float(x) for x in self.normal],
            "left_lps": [float(x) for x in self.left],
            "anterior_lps": [float(x) for x in self.anterior],
        }


def frame_from_plane(centre_lps_mm: np.ndarray, normal: np.ndarray) -> EndplateFrame:
    """Build the frame from an endplate centre and normal (either sign: made cranial).

    Args:
        centre_lps_mm: (3,) endplate centre, LPS mm.
        normal: (3,) endplate normal (any length, any sign).

    Raises:
        InputError: zero normal, or a normal along the left-right axis (the frame is undefined).
    """
    n = np.asarray(normal, float)
    if not np.all(np.isfinite(n)) or np.linalg.norm(n) < 1e-9:
        raise InputError(f"endplate normal {normal} is not a direction; give a non-zero vector")
    n = n / np.linalg.norm(n)
    if n @ _SUPERIOR < 0:
        n = -n
    left = _PATIENT_LEFT - (_PATIENT_LEFT @ n) * n
    if np.linalg.norm(left) < 0.2:
        raise InputError(
            f"endplate normal {n.round(3).tolist()} points left-right; an endplate normal should point "
            "cranially: check the endplate points or level labels"
        )
    left /= np.linalg.norm(left)
    return EndplateFrame(np.asarray(centre_lps_mm, float).copy(), n, left, np.cross(left, n))


def fit_plane(points_lps_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares plane through points (SVD of the centred points).

    Args:
        points_lps_mm: (N, 3), N ≥ 3, LPS mm.

    Returns:
        (centroid (3,), unit normal (3,), RMS distance of the points to the plane in mm).

    Raises:
        InputError: fewer than 3 points, or collinear points.
    """
    pts = np.asarray(points_lps_mm, float).reshape(-1, 3)
    if len(pts) < 3:
        raise InputError(f"a plane needs at least 3 points; got {len(pts)}")
    centroid = pts.mean(axis=0)
    _, sing, vt = np.linalg.svd(pts - centroid, full_matrices=False)
    if sing[1] < 1e-6 * max(sing[0], 1e-12):
        raise InputError("the endplate points are collinear; give points spread over the endplate")
    rms = float(sing[2] / np.sqrt(len(pts))) if len(sing) > 2 else 0.0
    return centroid, vt[-1], rms


def frame_from_endplate_points(
    points_lps_mm: np.ndarray,
    *,
    inlier_mm: float = 1.5,
    iterations: int = 200,
    seed: int = 0,
) -> EndplateFrame:
    """Frame from points on the endplate (surface voxels or clicks), robust to outliers (RANSAC).

    RANSAC on 3-point samples keeps the plane with the most points within ``inlier_mm``, then
    refits by least squares on those inliers; the centre is the inliers' centroid.

    Args:
        points_lps_mm: (N, 3) endplate points, LPS mm.
        inlier_mm: distance below which a point supports a plane.
        iterations: RANSAC samples.
        seed: random seed (results are reproducible).

    Returns:
        The :class:`EndplateFrame`.
    """
    pts = np.asarray(points_lps_mm, float).reshape(-1, 3)
    centroid, normal, _ = fit_plane(pts)
    if len(pts) > 3:
        rng = np.random.default_rng(seed)
        best = np.abs((pts - centroid) @ normal) <= inlier_mm
        for _ in range(iterations):
            a, b, c = pts[rng.choice(len(pts), 3, replace=False)]
            cand = np.cross(b - a, c - a)
            if np.linalg.norm(cand) < 1e-9:
                continue
            inliers = np.abs((pts - a) @ (cand / np.linalg.norm(cand))) <= inlier_mm
            if inliers.sum() > best.sum():
                best = inliers
        if best.sum() >= 3:
            centroid, normal, _ = fit_plane(pts[best])
    return frame_from_plane(centroid, normal)
