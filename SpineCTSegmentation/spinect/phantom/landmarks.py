"""Exact Kambin and safe triangles from the phantom's implicit geometry (body coordinates, mm).

Kambin triangle at level U/L (e.g. L5/S1), one side (SPINECT: Fan 2019; base = superior
endplate of L, height = SAP of L, hypotenuse = exiting root U):

* ``sap_endplate_corner`` B: the SAP's anterior (foraminal) face line, running cranially through
  the face centre, meets the plane of L's superior endplate.
* ``exiting_root_sap`` A: the point of the exiting root's surface nearest that SAP line.
* ``root_endplate_crossing`` C: where the exiting root's lower border reaches the endplate plane.

Safe triangle (Bogduk; a fluoroscopic construct) in the coronal plane of U through the root
where it passes under U's pedicle, in U's (lateral, cranial) coordinates:

* ``body_lateral_border``: corner where the horizontal line through the pedicle's lowest point
  meets the vertical line of U's body lateral border (the right angle).
* ``pedicle_inferior_margin``: where the root's upper border (projected) meets the pedicle line.
* ``exiting_root``: where the root's upper border meets the body's lateral border line.
"""

from __future__ import annotations

import numpy as np

from spinect.phantom.anatomy import Anatomy
from spinect.phantom.bones import SIDE_SIGN, pedicle

__all__ = ["triangle_area_mm2", "triangle_normal", "projected_triangle_area_mm2", "kambin_triangle", "safe_triangle",
           "LEVELS"]

#: Levels with triangle truth: name -> (upper vertebra = exiting root, lower vertebra).
LEVELS = {"L4L5": ("L4", "L5"), "L5S1": ("L5", "S1")}


def triangle_area_mm2(points: np.ndarray) -> float:
    """Area of the 3D triangle (3, 3) in mm^2: half the norm of the edge cross product."""
    p = np.asarray(points, float)
    return 0.5 * float(np.linalg.norm(np.cross(p[1] - p[0], p[2] - p[0])))


def triangle_normal(points: np.ndarray) -> np.ndarray:
    """Unit normal (3,) of a 3D triangle (right-hand rule on the vertex order)."""
    p = np.asarray(points, float)
    n = np.cross(p[1] - p[0], p[2] - p[0])
    return n / max(float(np.linalg.norm(n)), 1e-12)


def projected_triangle_area_mm2(points, direction) -> float:
    """Area of a 3D triangle seen along ``direction`` (orthographic projection): A * |n . d|.

    Args:
        points: (3, 3) vertices (mm). direction: (3,) viewing direction (any length).
    """
    d = np.asarray(direction, float)
    d = d / np.linalg.norm(d)
    p = np.asarray(points, float)
    return 0.5 * abs(float(np.cross(p[1] - p[0], p[2] - p[0]) @ d))


def _line_point_nearest(points: np.ndarray, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
    t = (points - origin) @ direction
    return origin + t[:, None] * direction


def kambin_triangle(anatomy: Anatomy, level: str, side: str) -> dict:
    """Kambin triangle vertices A, B, C (body mm) and facts about how they were found."""
    upper, lower = LEVELS[level]
    root = anatomy.roots[(upper, side)]
    pts, radii = root.segment("exiting")
    joint = anatomy.facets[(level, side)]
    plate = anatomy.frames[lower].superior
    o, n, up = plate.centre, plate.normal, joint.up
    f0 = joint.sap_face_centre
    b = f0 + up * float(n @ (o - f0)) / float(n @ up)
    height = (pts - o) @ n
    above = height > 0
    near = _line_point_nearest(pts, f0, up)
    dist = np.linalg.norm(pts - near, axis=1)
    i = int(np.argmin(np.where(above, dist, np.inf)))
    toward = (near[i] - pts[i]) / max(dist[i], 1e-9)
    a = pts[i] + radii[i] * toward
    lower_border = height - radii
    after = np.arange(len(pts)) >= i
    crossing = np.flatnonzero(after[1:] & (lower_border[:-1] > 0) & (lower_border[1:] <= 0))
    if crossing.size:
        k = int(crossing[0])
        w = lower_border[k] / (lower_border[k] - lower_border[k + 1])
        c = (1 - w) * (pts[k] - radii[k] * n) + w * (pts[k + 1] - radii[k + 1] * n)
        crosses = True
    else:
        k = int(np.argmin(np.where(after, lower_border, np.inf)))
        c = pts[k] - radii[k] * n
        c = c - n * float((c - o) @ n)
        crosses = False
    return {"points": {"exiting_root_sap": a, "sap_endplate_corner": b, "root_endplate_crossing": c},
            "root_crosses_endplate": crosses}


def _crossings(u: np.ndarray, value: float, along: np.ndarray) -> list[tuple[float, float]]:
    """Points (u-value, other coordinate) where the polyline (u, along) crosses u = value."""
    out = []
    for k in np.flatnonzero(np.diff(np.sign(u - value)) != 0):
        w = (value - u[k]) / (u[k + 1] - u[k])
        out.append((k + w, along[k] + w * (along[k + 1] - along[k])))
    return out


def safe_triangle(anatomy: Anatomy, level: str, side: str) -> dict:
    """Safe triangle vertices (body mm) in the coronal plane of the upper vertebra."""
    upper, _ = LEVELS[level]
    frame, vp = anatomy.frames[upper], anatomy.params.vertebrae[upper]
    s = SIDE_SIGN[side]
    ped = pedicle(frame, vp, side)
    root = anatomy.roots[(upper, side)]
    local = frame.local(root.points)
    x2, z2 = s * local[:, 0], local[:, 2]
    tang = np.gradient(np.stack([x2, z2], axis=1), axis=0)
    tang /= np.maximum(np.linalg.norm(tang, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-tang[:, 1], tang[:, 0]], axis=1)
    normal *= np.where(normal[:, 1:2] < 0, -1.0, 1.0)  # point cranially
    bx, bz = x2 + root.radii * normal[:, 0], z2 + root.radii * normal[:, 1]
    z_ped = ped.local_mid[2] - ped.half_height
    under = int(np.argmin(np.abs(x2 - ped.local_mid[0]) + 10.0 * (z2 > z_ped)))
    depth = float(local[under, 1])
    cand = [(k, x) for k, x in _crossings(bz, z_ped, bx) if x <= ped.local_mid[0] + ped.half_width]
    border = [(k, z) for k, z in _crossings(bx, vp.a, bz) if k > root.split - 5]
    valid = bool(cand) and bool(border)
    x_p = max(x for _, x in cand) if cand else ped.local_mid[0]
    z_b = border[0][1] if border else z_ped
    valid = valid and x_p < vp.a and z_b < z_ped
    corner = frame.point(s * vp.a, depth, z_ped)
    return {"points": {"pedicle_inferior_margin": frame.point(s * x_p, depth, z_ped), "body_lateral_border": corner,
                       "exiting_root": frame.point(s * vp.a, depth, z_b)},
            "plane_depth_mm": depth, "valid": valid, "plane_normal": frame.axes[1].copy()}
