"""Viewing geometry for the 3D view: LPS <-> RAS and the camera of a triangle view (θ, φ).

Plain numpy, no Slicer: the widget moves the camera while a slider changes, without running the
backend. The conventions are the backend's (``spinect/geometry/frame.py``, docs/triangles.md):
the endplate frame (o, n, l, a) comes from the ``spinect triangles`` JSON in LPS mm, and

    d(θ, φ) = cos φ · (cos θ · a − s · sin θ · l) + sin φ · n,     s = +1 left, −1 right

is the line of sight from the skin towards the target. The image "up" v is n made perpendicular
to d. A test checks both against the backend's ``EndplateFrame.view``. The backend's geometry
package is not imported here: it needs scikit-image, which Slicer does not ship.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "LPS_TO_RAS",
    "lps_to_ras",
    "ras_to_lps",
    "view_direction_lps",
    "view_up_lps",
    "CameraParameters",
    "camera_for_view",
]

#: LPS <-> RAS: negate x and y (the matrix is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def lps_to_ras(points_lps: Sequence[float] | np.ndarray) -> np.ndarray:
    """Points or vectors (…, 3) from LPS to RAS: (−x, −y, z)."""
    return np.asarray(points_lps, float) * np.array([-1.0, -1.0, 1.0])


def ras_to_lps(points_ras: Sequence[float] | np.ndarray) -> np.ndarray:
    """Points or vectors (…, 3) from RAS to LPS: (−x, −y, z)."""
    return np.asarray(points_ras, float) * np.array([-1.0, -1.0, 1.0])


def _frame_vectors(frame: Mapping[str, Sequence[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, l, a) unit vectors (LPS) of the JSON frame (``normal_lps``, ``left_lps``, ``anterior_lps``)."""
    return tuple(np.asarray(frame[k], float) for k in ("normal_lps", "left_lps", "anterior_lps"))


def view_direction_lps(frame: Mapping[str, Sequence[float]], theta_deg: float, phi_deg: float, side: str) -> np.ndarray:
    """Line of sight d(θ, φ) (3,) unit vector, LPS, for the endplate frame of a JSON report.

    Args:
        frame: the report's ``measurement.frame`` (``normal_lps``, ``left_lps``, ``anterior_lps``).
        theta_deg: obliquity θ (0 = PA); phi_deg: cranio-caudal tilt φ (0 = endplate squared).
        side: ``"left"`` or ``"right"`` (the target's side).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    n, l, a = _frame_vectors(frame)
    s = 1.0 if side == "left" else -1.0
    th, ph = math.radians(theta_deg), math.radians(phi_deg)
    d = math.cos(ph) * (math.cos(th) * a - s * math.sin(th) * l) + math.sin(ph) * n
    return d / np.linalg.norm(d)


def view_up_lps(frame: Mapping[str, Sequence[float]], direction_lps: np.ndarray) -> np.ndarray:
    """Image "up" v (3,) LPS: the endplate normal made perpendicular to d (cranial is up).

    Raises:
        ValueError: d is along the normal (|φ| = 90°): "up" is undefined.
    """
    n = _frame_vectors(frame)[0]
    d = np.asarray(direction_lps, float)
    v = n - (n @ d) * d
    norm = np.linalg.norm(v)
    if norm < 1e-6:
        raise ValueError("the view looks along the endplate normal; use |phi| < 90 degrees")
    return v / norm


@dataclass(frozen=True)
class CameraParameters:
    """A 3D-view camera in RAS mm, orthographic.

    Attributes:
        position_ras: (3,) camera position = focal point − distance · d.
        focal_point_ras: (3,) the point looked at (the target).
        view_up_ras: (3,) unit, image "up" (cranial).
        direction_ras: (3,) unit line of sight d.
        parallel_scale_mm: half the view's height in mm (orthographic zoom).
    """

    position_ras: np.ndarray
    focal_point_ras: np.ndarray
    view_up_ras: np.ndarray
    direction_ras: np.ndarray
    parallel_scale_mm: float


def camera_for_view(
    frame: Mapping[str, Sequence[float]],
    theta_deg: float,
    phi_deg: float,
    side: str,
    *,
    focal_point_ras: Sequence[float],
    distance_mm: float = 300.0,
    parallel_scale_mm: float = 40.0,
) -> CameraParameters:
    """Camera that looks along d(θ, φ) at ``focal_point_ras``, cranial up.

    Args:
        frame: the report's endplate frame (LPS unit vectors).
        theta_deg, phi_deg, side: the view (see :func:`view_direction_lps`).
        focal_point_ras: (3,) RAS mm, e.g. the needle tip or the window's plane origin.
        distance_mm: camera distance from the focal point (orthographic: only clipping depends on it).
        parallel_scale_mm: half the view's height in mm.
    """
    d = view_direction_lps(frame, theta_deg, phi_deg, side)
    up = view_up_lps(frame, d)
    focal = np.asarray(focal_point_ras, float)
    d_ras = lps_to_ras(d)
    return CameraParameters(focal - float(distance_mm) * d_ras, focal, lps_to_ras(up), d_ras, float(parallel_scale_mm))
