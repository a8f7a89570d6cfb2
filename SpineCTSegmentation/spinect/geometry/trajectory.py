"""Best oblique view and needle trajectory (triangles-research.md §3.4).

The objective J(θ, φ) is measured on the *reachable* window by default (bone and nerve from the
skin side of the volume to just past the target, iliac crest included), so J > 0 means a straight
needle along d reaches the target touching nothing:

* ``"radius"``: r*, the largest inscribed circle of the bounded window (mm; on the search's
  0.5 mm grid, so flat optima are located to a few degrees only);
* ``"free_area"``: area of the bounded free window (mm²; contour-based, smooth in θ, φ);
* ``"usable_area"``: area of the window eroded by the instrument radius ρ (mm²).

J is computed on a grid (θ ∈ [0°, 60°], φ ∈ [−25°, 25°], 2.5° steps), made robust to C-arm error
by taking the minimum over the ±``robust_deg`` neighbours (3 × 3), and refined on a 1.25° lattice
around the best grid view. The final view is measured at full resolution and the path checked:
skin entry E (CT > −300 HU, needs the CT), path length |T − E|, and the minimum distance from the
path's axis to nerve and to bone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from spinect.errors import InputError
from spinect.geometry.frame import EndplateFrame, View, side_sign
from spinect.geometry.polygons import shoelace_area_mm2
from spinect.geometry.projection import ObstacleFields
from spinect.geometry.results import TriangleMeasurement
from spinect.geometry.triangles import (
    measure_points,
    measure_seed,
    points_window,
    seed_region,
    seed_window,
)
from spinect.geometry.window import BoundedWindow, WindowSettings

__all__ = [
    "SearchSettings",
    "TrajectoryResult",
    "PathCheck",
    "view_objective",
    "search_trajectory",
    "check_path",
    "carm_angles",
    "SKIN_HU",
    "OBJECTIVES",
]

OBJECTIVES = ("radius", "free_area", "usable_area")
SKIN_HU = -300.0  #: the skin is where the CT first exceeds this along the path from outside
ProgressCallback = Callable[[int, int], None]  #: progress(done, total)


@dataclass(frozen=True)
class SearchSettings:
    """Angle search settings.

    Attributes:
        theta_range_deg, phi_range_deg: search box (θ obliquity, φ tilt).
        step_deg: coarse grid step.
        robust_deg: J_rob(θ, φ) = min J over θ ± robust_deg, φ ± robust_deg (3 × 3); 0 = off.
        refine_step_deg: step of the refinement lattice (0 = no refinement).
        objective: ``"radius"`` (r*), ``"free_area"`` or ``"usable_area"``.
        window: sampling of the objective's windows (coarser than a measurement's).
        reachable: measure J on the reachable window (skin to target) rather than the anatomical one.
    """

    theta_range_deg: tuple[float, float] = (0.0, 60.0)
    phi_range_deg: tuple[float, float] = (-25.0, 25.0)
    step_deg: float = 2.5
    robust_deg: float = 2.5
    refine_step_deg: float = 1.25
    objective: str = "radius"
    window: WindowSettings = field(
        default_factory=lambda: WindowSettings(pixel_mm=0.5, depth_step_mm=1.0, separate_structures=False)
    )
    reachable: bool = True

    def __post_init__(self) -> None:
        from spinect.errors import InputError
        from spinect.geometry.window import _check_range

        _check_range("search step (--step)", self.step_deg, 0.1, 30.0, "degrees")
        _check_range("robust neighbourhood", self.robust_deg, 0.0, 15.0, "degrees")
        _check_range("refinement step", self.refine_step_deg, 0.0, 15.0, "degrees")
        for name, (lo, hi), limit in (("theta range", self.theta_range_deg, 90.0), ("phi range", self.phi_range_deg, 60.0)):
            _check_range(name, lo, -limit, limit, "degrees")
            _check_range(name, hi, -limit, limit, "degrees")
            if lo > hi:
                raise InputError(f"{name} must run from low to high, got {lo:g}..{hi:g} degrees")
        if self.objective not in ("radius", "free_area", "usable_area"):
            raise InputError(f"search objective must be radius, free_area or usable_area, got {self.objective!r}")


@dataclass(frozen=True)
class PathCheck:
    """The straight path from the skin entry E to the target T along d.

    Attributes:
        target_lps_mm: T (3,); entry_lps_mm: E (3,) or None (no CT, or no skin found).
        length_mm: |T − E| or None.
        min_nerve_clearance_mm: minimum distance from the path's axis to nerve along E→T (or
            from the volume boundary when E is unknown); negative = the axis crosses nerve.
        min_bone_clearance_mm: the same for bone.
        clear: both clearances exceed the instrument radius.
    """

    target_lps_mm: np.ndarray
    entry_lps_mm: np.ndarray | None
    length_mm: float | None
    min_nerve_clearance_mm: float
    min_bone_clearance_mm: float
    clear: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "target_lps_mm": _list(self.target_lps_mm),
            "skin_entry_lps_mm": _list(self.entry_lps_mm),
            "skin_entry_definition": f"first point from outside along the path where CT > {SKIN_HU:g} HU",
            "path_length_mm": self.length_mm,
            "min_nerve_clearance_mm": self.min_nerve_clearance_mm,
            "min_bone_clearance_mm": self.min_bone_clearance_mm,
            "clearance_definition": "minimum true 3D distance from the path's axis (E to T) to the structure surface",
            "clear_of_bone_and_nerve": self.clear,
        }


@dataclass(frozen=True)
class TrajectoryResult:
    """The best view found and everything needed to plot and check it.

    Attributes:
        theta_deg, phi_deg: the robust best view (frame-relative).
        objective: objective name; objective_value: J at the best view; robust_value: J_rob there.
        theta_grid_deg: (T,), phi_grid_deg: (P,) the coarse grid; objective_map: (P, T) J;
            robust_map: (P, T) J_rob (neighbours past the box's border are evaluated too).
        measurement: the full-resolution measurement at the best view.
        path: the path check.
        carm: C-arm angles of the best view relative to the patient (see :func:`carm_angles`).
        objective_pixel_mm: the in-plane sampling J was computed on (coarser than the final
            measurement's, so J's r* differs from ``measurement``'s by up to about a pixel).
    """

    theta_deg: float
    phi_deg: float
    objective: str
    objective_value: float
    robust_value: float
    theta_grid_deg: np.ndarray
    phi_grid_deg: np.ndarray
    objective_map: np.ndarray
    robust_map: np.ndarray
    measurement: TriangleMeasurement
    path: PathCheck
    carm: dict[str, float]
    objective_pixel_mm: float = 0.5

    def to_dict(self) -> dict[str, object]:
        return {
            "theta_deg": self.theta_deg,
            "phi_deg": self.phi_deg,
            "angles_definition": (
                "theta = obliquity from PA towards the target side, phi = cranio-caudal tilt from the "
                "view that squares the lower vertebra's superior endplate (phi > 0: the line of sight "
                "runs cranially as it goes anteriorly); both relative to the endplate frame"
            ),
            "carm": self.carm,
            "objective": self.objective,
            "objective_value": self.objective_value,
            "robust_objective_value": self.robust_value,
            "robust_definition": "minimum of the objective over the 3 x 3 neighbouring views at +-2.5 deg",
            "objective_definition": (
                f"computed on the search's {self.objective_pixel_mm:g} mm in-plane grid; the best view's numbers "
                "are in 'measurement', measured at full resolution"
            ),
            "path": self.path.to_dict(),
            "measurement": self.measurement.to_dict(),
        }


def view_objective(window: BoundedWindow, objective: str, *, seeded: bool) -> float:
    """J of one view: r* (grid maximum, mm), or the free or usable area (mm²) of the bounded window."""
    region = None
    if seeded:
        region, _ = seed_region(window)
        if region is None:
            return 0.0
    if objective == "radius":
        values = window.field_mm()
        if region is not None:
            values = np.where(region, values, -np.inf)
        return float(max(values.max(), 0.0))
    if objective in ("free_area", "usable_area"):
        inset = window.settings.instrument_radius_mm if objective == "usable_area" else 0.0
        outlines = window.free_outlines_uv(region, inset_mm=inset)
        return float(max(sum(shoelace_area_mm2(p) for p in outlines), 0.0))
    raise InputError(f"objective {objective!r} is not valid; use one of: {', '.join(OBJECTIVES)}")


def search_trajectory(
    fields: ObstacleFields,
    frame: EndplateFrame,
    *,
    side: str,
    points_lps_mm: np.ndarray | None = None,
    seed_lps_mm: np.ndarray | None = None,
    upper_line_lps_mm: np.ndarray | None = None,
    triangle: str = "kambin",
    level: str = "L5S1",
    search: SearchSettings | None = None,
    measure: WindowSettings | None = None,
    progress: ProgressCallback | None = None,
) -> TrajectoryResult:
    """Search (θ, φ) for the widest robust window and plan the needle path along it.

    Args:
        fields: signed distance fields (with the CT for the skin entry, if available).
        frame: the endplate frame.
        side: ``"left"`` or ``"right"``.
        points_lps_mm: (3, 3) triangle vertices, or None with ``seed_lps_mm`` (3,).
        upper_line_lps_mm: the pedicle line point for a seed window.
        triangle, level: recorded in the measurement.
        search: search settings; measure: settings of the final measurement (the depth range
            follows ``search.reachable``).
        progress: called with (views done, views total).

    Returns:
        The :class:`TrajectoryResult`.
    """
    search = search or SearchSettings()
    side_sign(side)
    if (points_lps_mm is None) == (seed_lps_mm is None):
        raise InputError("give either three triangle points or one seed point for the trajectory search")
    coarse = replace(search.window, bounded_rays_only=True)  # same J, fewer rays (WindowSettings)
    coarse = replace(coarse, depth_before_mm=None) if search.reachable else coarse
    seeded = points_lps_mm is None
    cache: dict[tuple[float, float], float] = {}

    def objective(theta: float, phi: float) -> float:
        key = (round(theta, 4), round(phi, 4))
        if key not in cache:
            view = frame.view(theta, phi, side)
            if seeded:
                window = seed_window(fields, frame, view, seed_lps_mm, coarse, upper_line_lps_mm=upper_line_lps_mm)
            else:
                window = points_window(fields, view, points_lps_mm, coarse)
            cache[key] = view_objective(window, search.objective, seeded=seeded)
        return cache[key]

    thetas = _grid(search.theta_range_deg, search.step_deg)
    phis = _grid(search.phi_range_deg, search.step_deg)
    values = _evaluate_grid(objective, thetas, phis, search.robust_deg, progress)
    robust = _robust(objective, thetas, phis, values, search.robust_deg)
    best = np.unravel_index(int(np.nanargmax(robust)), robust.shape)
    theta, phi = float(thetas[best[1]]), float(phis[best[0]])
    if search.refine_step_deg > 0:
        theta, phi = _refine(objective, theta, phi, search)
    j_rob = _robust_at(objective, theta, phi, search.robust_deg)
    final = replace(measure or WindowSettings(), depth_before_mm=None) if search.reachable else (measure or WindowSettings())
    if seeded:
        result = measure_seed(
            fields, frame, seed_lps_mm, triangle=triangle, level=level, side=side, theta_deg=theta,
            phi_deg=phi, upper_line_lps_mm=upper_line_lps_mm, settings=final,
        )
    else:
        result = measure_points(
            fields, frame, points_lps_mm, triangle=triangle, level=level, side=side, theta_deg=theta,
            phi_deg=phi, settings=final,
        )
    target = result.target_lps_mm if result.target_lps_mm is not None else result.plane_origin_lps_mm
    path = check_path(fields, result.view, target, instrument_radius_mm=final.instrument_radius_mm)
    return TrajectoryResult(
        theta_deg=theta,
        phi_deg=phi,
        objective=search.objective,
        objective_value=objective(theta, phi),
        robust_value=j_rob,
        theta_grid_deg=thetas,
        phi_grid_deg=phis,
        objective_map=values,
        robust_map=robust,
        measurement=result,
        path=path,
        carm=carm_angles(result.view.direction, side),
        objective_pixel_mm=float(search.window.pixel_mm),
    )


def check_path(
    fields: ObstacleFields, view: View, target_lps_mm: np.ndarray, *, instrument_radius_mm: float = 0.36, step_mm: float = 0.25
) -> PathCheck:
    """Skin entry, length and clearances of the straight path to ``target_lps_mm`` along ``view``.

    Args:
        fields: obstacle fields (``ct_hu`` for the skin entry).
        view: gives the direction d (the needle advances along d).
        target_lps_mm: (3,) the needle tip T.
        instrument_radius_mm: ρ; ``clear`` needs both clearances above it.
        step_mm: sampling step along the path.

    Returns:
        The :class:`PathCheck`.
    """
    target = np.asarray(target_lps_mm, float)
    corners = fields.corners_lps_mm()
    back = float(np.max((target - corners) @ view.direction))  # T back to the volume's far side
    ts = np.arange(0.0, max(back, 0.0) + step_mm, step_mm)[::-1]  # outside → target
    points = target - ts[:, None] * view.direction
    entry = None
    start = 0
    if fields.ct_hu is not None:
        hu = fields.sample(points, "ct")
        above = np.flatnonzero(hu > SKIN_HU)
        if above.size:
            start = int(above[0])
            entry = points[start]
    bone, nerve = fields.sample_many(points[start:], ("bone", "nerve"))
    min_nerve, min_bone = float(nerve.min()), float(bone.min())
    return PathCheck(
        target_lps_mm=target,
        entry_lps_mm=entry,
        length_mm=None if entry is None else float(np.linalg.norm(target - entry)),
        min_nerve_clearance_mm=min_nerve,
        min_bone_clearance_mm=min_bone,
        clear=min(min_nerve, min_bone) > instrument_radius_mm,
    )


def carm_angles(direction: np.ndarray, side: str) -> dict[str, float]:
    """The line of sight as C-arm angles relative to the patient (table), not the endplate.

    Returns:
        ``oblique_deg``: rotation from PA about the patient's long axis towards the target side
        (ipsilateral oblique); ``tilt_deg``: angle with the axial plane, positive when the line of
        sight runs cranially as it goes anteriorly (the image intensifier, on the posterior side,
        is tilted caudally).
    """
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    s = side_sign(side)
    left, anterior, superior = np.array([1.0, 0, 0]), np.array([0, -1.0, 0]), np.array([0, 0, 1.0])
    return {
        "oblique_deg": float(np.degrees(np.arctan2(-s * (d @ left), d @ anterior))),
        "tilt_deg": float(np.degrees(np.arcsin(np.clip(d @ superior, -1.0, 1.0)))),
    }


# --- search helpers ---------------------------------------------------------------------------


def _grid(bounds: tuple[float, float], step: float) -> np.ndarray:
    lo, hi = bounds
    if step <= 0 or hi < lo:
        raise InputError(f"angle range {bounds} with step {step} is empty; give lo <= hi and step > 0")
    return lo + step * np.arange(int(np.floor((hi - lo) / step + 1e-9)) + 1)


def _evaluate_grid(objective, thetas, phis, robust_deg, progress) -> np.ndarray:
    """J on the grid, plus the ring of robustness neighbours around it (cached for J_rob)."""
    ring = [robust_deg] if robust_deg > 0 else []
    ext_t = np.concatenate([thetas[:1] - ring, thetas, thetas[-1:] + ring])
    ext_p = np.concatenate([phis[:1] - ring, phis, phis[-1:] + ring])
    total = len(ext_t) * len(ext_p)
    for i, phi in enumerate(ext_p):
        for j, theta in enumerate(ext_t):
            objective(float(theta), float(phi))
            if progress is not None:
                progress(i * len(ext_t) + j + 1, total)
    return np.array([[objective(float(t), float(p)) for t in thetas] for p in phis])


def _robust_at(objective, theta: float, phi: float, robust_deg: float) -> float:
    if robust_deg <= 0:
        return objective(theta, phi)
    offsets = (-robust_deg, 0.0, robust_deg)
    return min(objective(theta + a, phi + b) for a in offsets for b in offsets)


def _robust(objective, thetas, phis, values, robust_deg) -> np.ndarray:
    """J_rob on the grid (neighbours off the grid's box are evaluated too)."""
    out = np.empty_like(values)
    for i, phi in enumerate(phis):
        for j, theta in enumerate(thetas):
            out[i, j] = _robust_at(objective, float(theta), float(phi), robust_deg)
    return out


def _refine(objective, theta: float, phi: float, search: SearchSettings) -> tuple[float, float]:
    """Best J_rob on a finer lattice within half a coarse step of the grid optimum (inside the box)."""
    h = search.refine_step_deg
    half = h * np.floor(0.5 * search.step_deg / h + 1e-9)
    span = np.arange(-half, half + 1e-9, h)
    best = (_robust_at(objective, theta, phi, search.robust_deg), theta, phi)
    for a in span:
        for b in span:
            t, p = theta + a, phi + b
            if not (search.theta_range_deg[0] <= t <= search.theta_range_deg[1]):
                continue
            if not (search.phi_range_deg[0] <= p <= search.phi_range_deg[1]):
                continue
            score = _robust_at(objective, t, p, search.robust_deg)
            if score > best[0] + 1e-9:
                best = (score, t, p)
    return float(best[1]), float(best[2])


def _list(array: np.ndarray | None) -> list | None:
    return None if array is None else np.round(np.asarray(array, float), 3).tolist()
