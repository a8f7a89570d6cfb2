"""The truth JSON of a case: triangles per level and side, viewing tables, roots, foramina.

All points are world LPS mm (the CT's physical space, as SimpleITK reports it); directions are
unit LPS vectors. The viewing frame of a level is built on the lower vertebra's superior
endplate (docs/phantom.md, "Viewing frame"):

* ``origin`` o: endplate centre; ``normal`` n: endplate normal (cranial);
* ``lateral`` l: patient-left axis made perpendicular to n; ``anterior`` a = unit(n x l) flipped
  to point anteriorly (the PA beam direction);
* view direction d(theta, phi) = cos(phi) (cos(theta) a - s sin(theta) l) + sin(phi) n, with
  s = +1 for the left side and -1 for the right: theta = obliquity towards the triangle's side
  (0 = PA; the beam comes from postero-lateral on that side), phi = cranio-caudal tilt (0 =
  endplate squared; > 0 the beam travels cranially).

A flat triangle of area A and unit normal m seen along d shows A |m . d|.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spinect.phantom.anatomy import Anatomy
from spinect.phantom.bones import SIDE_SIGN, pedicle
from spinect.phantom.landmarks import LEVELS, kambin_triangle, projected_triangle_area_mm2, safe_triangle, triangle_area_mm2, triangle_normal
from spinect.phantom.render import Grid
from spinect.phantom.structures import SIDES

__all__ = ["viewing_frame", "view_direction", "build_truth", "THETA_DEG", "PHI_DEG", "WINDOW_THETA_DEG", "WINDOW_PHI_DEG"]

THETA_DEG = tuple(range(0, 61, 5))
PHI_DEG = tuple(range(-25, 26, 5))
WINDOW_THETA_DEG = tuple(range(0, 61, 10))
WINDOW_PHI_DEG = tuple(range(-20, 21, 10))


def viewing_frame(anatomy: Anatomy, grid: Grid, lower: str) -> dict[str, np.ndarray]:
    """World-LPS viewing frame on ``lower``'s superior endplate (see module docstring)."""
    plate = anatomy.frames[lower].superior
    n = grid.rotation @ plate.normal
    left = grid.rotation @ np.array([1.0, 0.0, 0.0])
    lat = left - (left @ n) * n
    lat /= np.linalg.norm(lat)
    ant = np.cross(n, lat)
    if ant @ (grid.rotation @ np.array([0.0, 1.0, 0.0])) > 0:
        ant = -ant
    return {"origin": grid.body_to_world(plate.centre), "normal": n, "lateral": lat, "anterior": ant}


def view_direction(frame: dict[str, np.ndarray], theta_deg: float, phi_deg: float, side: str) -> np.ndarray:
    """Unit viewing direction d(theta, phi) of ``frame`` for a triangle on ``side``."""
    t, p, s = np.radians(theta_deg), np.radians(phi_deg), SIDE_SIGN[side]
    return np.cos(p) * (np.cos(t) * frame["anterior"] - s * np.sin(t) * frame["lateral"]) + np.sin(p) * frame["normal"]


def _angles_of(frame, direction: np.ndarray, side: str) -> tuple[float, float]:
    d = direction if direction @ frame["anterior"] >= 0 else -direction
    phi = np.degrees(np.arcsin(np.clip(d @ frame["normal"], -1, 1)))
    theta = np.degrees(np.arctan2(-SIDE_SIGN[side] * (d @ frame["lateral"]), d @ frame["anterior"]))
    return float(theta), float(phi)


def _table(points: np.ndarray, frame, side: str) -> list[list[float]]:
    return [[round(projected_triangle_area_mm2(points, view_direction(frame, t, p, side)), 3) for p in PHI_DEG] for t in THETA_DEG]


def _window(points: np.ndarray, frame, side: str, labels: np.ndarray, grid: Grid) -> list[list[float]]:
    """Fraction of the triangle (shrunk 15 % about its centroid) whose ray towards the X-ray
    source (-d) meets no bone or nerve voxel inside the field of view (nearest-voxel lookup)."""
    n = 7
    bary = np.array([(i + 1 / 3, j + 1 / 3) for i in range(n) for j in range(n - i)]) / n
    inner = points[0] + bary[:, :1] * (points[1] - points[0]) + bary[:, 1:] * (points[2] - points[0])
    centroid = points.mean(axis=0)
    inner = centroid + 0.85 * (inner - centroid)
    steps = np.arange(1.0, 120.0, 0.5)
    shape = np.asarray(labels.shape)
    out = []
    for t in WINDOW_THETA_DEG:
        row = []
        for p in WINDOW_PHI_DEG:
            d = view_direction(frame, t, p, side)
            rays = inner[:, None, :] - steps[None, :, None] * d
            idx = np.rint(grid.world_to_index_zyx(rays.reshape(-1, 3))).astype(int)
            inside = np.all((idx >= 0) & (idx < shape), axis=1)
            hit = np.zeros(len(idx), bool)
            hit[inside] = labels[tuple(idx[inside].T)] > 0
            row.append(round(float(1.0 - hit.reshape(len(inner), -1).any(axis=1).mean()), 3))
        out.append(row)
    return out


def _triangle_entry(points_body: dict[str, np.ndarray], frame, side: str, grid: Grid, labels: np.ndarray | None) -> dict[str, Any]:
    names = list(points_body)
    world = np.array([grid.body_to_world(points_body[k]) for k in names])
    normal = triangle_normal(world)
    if normal @ (frame["anterior"]) > 0:  # face the X-ray source (posterior side)
        normal = -normal
    table = _table(world, frame, side)
    flat = np.array(table)
    ti, pi = np.unravel_index(int(np.argmax(flat)), flat.shape)
    entry: dict[str, Any] = {
        "points_lps_mm": {k: [round(float(v), 4) for v in p] for k, p in zip(names, world)},
        "area_3d_mm2": round(triangle_area_mm2(world), 4),
        "normal": [round(float(v), 6) for v in normal],
        "projected_area_mm2": {"theta_deg": list(THETA_DEG), "phi_deg": list(PHI_DEG), "table": table},
        "best_projected_view": {"theta_deg": THETA_DEG[ti], "phi_deg": PHI_DEG[pi], "area_mm2": float(flat[ti, pi])},
        "face_on_view": dict(zip(("theta_deg", "phi_deg"), (round(v, 3) for v in _angles_of(frame, normal, side)))),
    }
    if labels is not None:
        frac = np.array(_window(world, frame, side, labels, grid))
        area = np.array([[projected_triangle_area_mm2(world, view_direction(frame, t, p, side)) for p in WINDOW_PHI_DEG]
                         for t in WINDOW_THETA_DEG])
        window = frac * area
        wi, wj = np.unravel_index(int(np.argmax(window)), window.shape)
        entry["unobstructed"] = {"theta_deg": list(WINDOW_THETA_DEG), "phi_deg": list(WINDOW_PHI_DEG),
                                 "fraction": frac.tolist(), "window_area_mm2": np.round(window, 3).tolist(),
                                 "best": {"theta_deg": WINDOW_THETA_DEG[wi], "phi_deg": WINDOW_PHI_DEG[wj],
                                          "window_area_mm2": round(float(window[wi, wj]), 3)}}
    return entry


def _foramen(anatomy: Anatomy, grid: Grid, level: str, side: str, kambin_b: np.ndarray) -> dict[str, Any]:
    upper, lower = LEVELS[level]
    fu, fl = anatomy.frames[upper], anatomy.frames[lower]
    pu = pedicle(fu, anatomy.params.vertebrae[upper], side)
    pl = pedicle(fl, anatomy.params.vertebrae[lower], side)
    roof, floor = pu.inferior_margin(), pl.mid + pl.half_height * pl.up
    vl = anatomy.params.vertebrae[lower]
    wall = fl.superior.centre + vl.b * fl.axes[1] + SIDE_SIGN[side] * pl.local_mid[0] * fl.axes[0]
    pts = np.array([grid.body_to_world(p) for p in (roof, floor, wall, kambin_b)])
    return {"height_mm": round(float((roof - floor) @ fl.axes[2]), 3),
            "width_at_endplate_mm": round(float((kambin_b - fl.superior.centre) @ fl.axes[1] - vl.b), 3),
            "upper_pedicle_inferior_margin_lps_mm": [round(float(v), 4) for v in pts[0]],
            "lower_pedicle_superior_margin_lps_mm": [round(float(v), 4) for v in pts[1]],
            "bbox_lps_mm": {"min": pts.min(axis=0).round(3).tolist(), "max": pts.max(axis=0).round(3).tolist()}}


def _roots(anatomy: Anatomy, grid: Grid) -> dict[str, Any]:
    from spinect.phantom.anatomy import FORAMEN_GAP_MM, NERVE_GAP_MM

    out = {}
    pts_all = np.concatenate([r.points for r in anatomy.roots.values()])
    raw = {p.name: p.sdf_points(pts_all, cut=False) for p in anatomy.bones}
    lumbar = np.min(list(raw.values()), axis=0)
    non_sacral = np.min([v for k, v in raw.items() if k not in ("S1", "sacrum")], axis=0)
    start = 0
    for (name, side), root in anatomy.roots.items():
        n = len(root.points)
        sl = slice(start, start + n)
        start += n
        if name in ("S1", "S2"):  # sacral foramina are carved FORAMEN_GAP_MM around the root
            before = non_sacral[sl] - root.radii
            clearance = np.minimum(before, FORAMEN_GAP_MM)
        else:  # bone is carved NERVE_GAP_MM away from every nerve
            before = lumbar[sl] - root.radii
            clearance = np.maximum(before, NERVE_GAP_MM)
        keep = np.unique(np.r_[np.arange(0, n, 2), root.split, n - 1])
        out[f"{name}_{side}"] = {
            "centreline_lps_mm": np.round(grid.body_to_world(root.points[keep]), 3).tolist(),
            "radius_mm": np.round(root.radii[keep], 3).tolist(),
            "exiting_from_index": int(np.searchsorted(keep, root.split)),
            "min_bone_clearance_mm": round(float(clearance.min()), 3),
            "min_bone_clearance_before_carving_mm": round(float(before.min()), 3),
        }
    return out


def build_truth(anatomy: Anatomy, grid: Grid, *, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Triangles, viewing tables, foramina and roots (world LPS mm).

    Args:
        anatomy, grid: the case's geometry and output grid.
        labels: (Z, Y, X) uint8 label map on ``grid`` (for the unobstructed-window tables); None skips them.
    """
    levels: dict[str, Any] = {}
    for level, (upper, lower) in LEVELS.items():
        frame = viewing_frame(anatomy, grid, lower)
        entry: dict[str, Any] = {"exiting_root": upper, "traversing_root": lower,
                                 "viewing_frame": {k: [round(float(x), 6) for x in v] for k, v in frame.items()}}
        for side in SIDES:
            kam = kambin_triangle(anatomy, level, side)
            safe = safe_triangle(anatomy, level, side)
            k_entry = _triangle_entry(kam["points"], frame, side, grid, labels)
            k_entry["root_crosses_endplate"] = bool(kam["root_crosses_endplate"])
            s_entry = _triangle_entry(safe["points"], frame, side, grid, labels)
            s_entry["valid"] = bool(safe["valid"])
            s_entry["plane_normal"] = [round(float(v), 6) for v in grid.rotation @ safe["plane_normal"]]
            entry[side] = {"kambin": k_entry, "safe": s_entry,
                           "foramen": _foramen(anatomy, grid, level, side, kam["points"]["sap_endplate_corner"])}
        levels[level] = entry
    return {"levels": levels, "roots": _roots(anatomy, grid)}
