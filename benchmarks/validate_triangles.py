"""Validate the triangle measurements on phantom cases against their truth (prints a table).

Not a timed test: it generates phantom cases, measures the Kambin and safe triangles from the
*label maps* with :mod:`spinect.geometry`, and compares with references computed from the
phantom's truth JSON and from its implicit (continuous) geometry:

* projected triangle area A·|n·d| vs the truth's projected-area table, and the true 3D area vs
  ``area_3d_mm2`` (three-point mode with the truth's landmarks);
* free area and r* vs the same quantities computed from the continuous geometry: rays cast
  through the phantom's signed-distance functions (sphere tracing) on a fine grid over the same
  depth range and bounds, free mask → area (pixel count) and r* (Euclidean distance transform);
* the same in the tool's most open view (``points_open``: the search with the free-area objective
  on the label map), where the phantom's safe triangle is not covered by the pedicle and facet;
* seed mode: the free region connected to the seed within the same bounds, same reference;
* endplate frame fitted from the level map vs the truth's viewing frame;
* optimiser: with nothing in the way the widest inscribed circle is seen face-on, so the search on
  an empty scene must land within 2.5° of the truth's ``face_on_view``; on the labels, the view
  found is reported with its robust objective.

Usage::

    python benchmarks/validate_triangles.py --cases 10 [--levels L5S1 L4L5] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from spinect.geometry.endplate import endplate_frame_from_structures
from spinect.geometry.frame import EndplateFrame
from spinect.geometry.projection import ObstacleFields
from spinect.geometry.trajectory import SearchSettings, search_trajectory
from spinect.geometry.triangles import measure_points, measure_seed, points_window, seed_window
from spinect.geometry.window import BoundedWindow, WindowSettings
from spinect.phantom import STRUCTURE_CODES, case_seed, generate_case

ROI_MM = 45.0  # label crop around the triangle (the anatomical window reaches 15 mm before it)
REF_PIXEL_MM = 0.1
MIN_AREA_MM2 = 5.0  # relative area errors are reported for reference windows at least this big


@dataclass
class Row:
    case: int
    level: str
    side: str
    triangle: str
    mode: str
    theta: float
    phi: float
    quantity: str
    measured: float | None
    reference: float | None

    @property
    def error(self) -> float | None:
        if self.measured is None or self.reference is None:
            return None
        return self.measured - self.reference


# --- reference from the implicit geometry ----------------------------------------------------


class ContinuousScene:
    """Obstacle signed distance of a phantom case from its parts (bones cut as painted, nerves)."""

    def __init__(self, case) -> None:
        self.parts = list(case.anatomy.bones) + list(case.anatomy.nerves)
        self.rotation = case.grid.rotation
        self.translation = case.grid.translation

    def sdf(self, world: np.ndarray, parts) -> np.ndarray:
        body = (np.asarray(world, float) - self.translation) @ self.rotation
        return np.min([p.sdf_points(body) for p in parts], axis=0) if parts else np.full(len(body), 1e3)

    def parts_near(self, world: np.ndarray, margin_mm: float = 3.0):
        body = (world - self.translation) @ self.rotation
        lo, hi = body.min(axis=0) - margin_mm, body.max(axis=0) + margin_mm
        keep = []
        for part in self.parts:
            plo, phi = part.body_bounds()
            if np.all(plo <= hi) and np.all(phi >= lo):
                keep.append(part)
        return keep

    def free_rays(self, base: np.ndarray, direction: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """(N,) True where the segment base + t·d, t in [start, end], misses every part."""
        parts = self.parts_near(np.vstack([base + start[:, None] * direction, base + end[:, None] * direction]))
        t = start.copy()
        free = np.ones(len(base), bool)
        active = np.ones(len(base), bool)
        while active.any():
            idx = np.flatnonzero(active)
            s = self.sdf(base[idx] + t[idx, None] * direction, parts)
            hit = s < 0
            free[idx[hit]] = False
            t[idx] += np.maximum(0.6 * s, 0.05)  # conservative step: the parts' SDFs are approximate
            active[idx] = ~hit & (t[idx] <= end[idx])
        return free


def reference_window(scene: ContinuousScene, window: BoundedWindow, *, region_seed: bool, pixel_mm: float):
    """Free mask of the window from the continuous geometry: (area mm², r* mm, bounded)."""
    s = window.settings
    if window.triangle_uv_mm is not None:
        lo, hi = window.triangle_uv_mm.min(axis=0), window.triangle_uv_mm.max(axis=0)
    else:
        lo, hi = np.full(2, -s.guard_radius_mm), np.full(2, s.guard_radius_mm)
    u = np.arange(lo[0] - pixel_mm, hi[0] + 2 * pixel_mm, pixel_mm)
    v = np.arange(lo[1] - pixel_mm, hi[1] + 2 * pixel_mm, pixel_mm)
    uu, vv = np.meshgrid(u, v)
    uv = np.stack([uu, vv], -1).reshape(-1, 2)
    inside = window.bound_mm(uv) >= 0
    if region_seed:
        inside &= np.hypot(uv[:, 0], uv[:, 1]) < s.guard_radius_mm + pixel_mm
    target = window.target_depth_mm(uv[inside])
    base = window.to_lps(uv[inside])
    free = np.zeros(len(uv), bool)
    free[inside] = scene.free_rays(base, window.view.direction, target - s.depth_before_mm, target + s.depth_after_mm)
    mask = free.reshape(uu.shape)
    bounded = True
    if region_seed:
        # the tool's definition (spinect.geometry.triangles.seed_region) on the fine grid: the
        # instrument-wide parts are the components of the free set opened by rho; each free pixel
        # goes to the part it is flooded from (channels split at their narrowest point); narrow
        # parts that reach the guard radius are left out
        opened = ndimage.binary_opening(mask, structure=_disk(s.instrument_radius_mm / pixel_mm))
        parts, _ = ndimage.label(opened)
        centre = (np.abs(v).argmin(), np.abs(u).argmin())
        if parts[centre] == 0:
            return None, None, False
        core = parts == parts[centre]
        beyond_guard = np.hypot(uu, vv) >= s.guard_radius_mm
        bounded = not np.any(core & beyond_guard)
        clearance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1] * pixel_mm
        region = watershed(-clearance, parts, mask=mask) == parts[centre]
        cracks, _ = ndimage.label(region & ~core)
        region &= ~np.isin(cracks, np.unique(cracks[(cracks > 0) & beyond_guard]))
        # the tool's outlines reach 2 of its pixels past a cut channel: the same distance here
        margin_px = max(int(round(2 * window.settings.pixel_mm / pixel_mm)), 1)
        mask &= ndimage.binary_dilation(region, iterations=margin_px)
    area = float(mask.sum()) * pixel_mm**2
    radius = float(ndimage.distance_transform_edt(np.pad(mask, 1)).max()) * pixel_mm
    return area, radius, bounded


def _disk(radius_px: float) -> np.ndarray:
    r = max(int(np.floor(radius_px)), 0)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x**2 + y**2 <= radius_px**2 + 1e-9


# --- one case ------------------------------------------------------------------------------------


def truth_frame(truth_level: dict) -> EndplateFrame:
    f = truth_level["viewing_frame"]
    return EndplateFrame(*(np.asarray(f[k], float) for k in ("origin", "normal", "lateral", "anterior")))


def crop_fields(case, centre_lps: np.ndarray) -> ObstacleFields:
    from spinect.geometry.measure import crop_around

    labels = crop_around(case.labels, centre_lps, ROI_MM)
    return ObstacleFields.from_image(labels)


def table_value(entry: dict, theta: float, phi: float) -> float | None:
    table = entry["projected_area_mm2"]
    if theta in table["theta_deg"] and phi in table["phi_deg"]:
        return float(table["table"][table["theta_deg"].index(theta)][table["phi_deg"].index(phi)])
    return None


def views_for(entry: dict, open_view: tuple[float, float] | None = None) -> list[tuple[float, float]]:
    """(0°, 0°), (30°, 0°), the truth's best projected view and, if given, the tool's most open view."""
    best = entry["best_projected_view"]
    views = [(0.0, 0.0), (30.0, 0.0), (float(best["theta_deg"]), float(best["phi_deg"]))]
    if open_view is not None:
        views.append(open_view)
    return list(dict.fromkeys(views))


def most_open_view(fields: ObstacleFields, frame: EndplateFrame, pts: np.ndarray, *, triangle: str, level: str,
                   side: str) -> tuple[float, float]:
    """The view in which the label map shows the largest free window inside the triangle.

    What a user gets from "Optimize" with the free-area objective on the anatomical window
    (5° grid refined to 1.25°, no C-arm margin). In the phantom the safe triangle is covered by
    the pedicle and facet in the (0°, 0°), (30°, 0°) and face-on views; it opens only in oblique,
    cranially tilted views (θ 35-60°, φ 10-25°), so this view is the one that tests its free area.
    """
    found = search_trajectory(fields, frame, side=side, points_lps_mm=pts, triangle=triangle, level=level,
                              search=SearchSettings(step_deg=5.0, robust_deg=0.0, reachable=False,
                                                    objective="free_area"))
    return round(float(found.theta_deg), 4), round(float(found.phi_deg), 4)


def validate_case(index: int, seed: int, levels, args) -> list[Row]:
    anatomy = getattr(args, "anatomy", "mesh")
    if args.spacing == 1.0:
        case = generate_case(seed, window_tables=False, anatomy=anatomy)
    else:  # a field of view of 80 x 110 x 130 mm around L4-S1 keeps fine grids small
        shape = tuple(int(round(mm / args.spacing)) for mm in (80.0, 110.0, 130.0))
        case = generate_case(seed, window_tables=False, spacing_zyx_mm=(args.spacing,) * 3, shape_zyx=shape, anatomy=anatomy)
    scene = ContinuousScene(case)
    rows: list[Row] = []
    settings = WindowSettings()
    predicted = segment_case(case, args.model) if getattr(args, "model", None) else None
    for level in levels:
        level_truth = case.truth["levels"][level]
        frame = truth_frame(level_truth)
        rows += frame_rows(index, level, case, frame)
        for side in ("left", "right"):
            entries = {"kambin": level_truth[side]["kambin"], "safe": level_truth[side]["safe"]}
            centre = np.mean([list(e["points_lps_mm"].values()) for e in entries.values()], axis=(0, 1))
            fields = crop_fields(case, centre)
            upper = np.asarray(level_truth[side]["foramen"]["upper_pedicle_inferior_margin_lps_mm"], float)
            for name, entry in entries.items():
                if name == "safe" and not entry.get("valid", True):
                    continue
                pts = np.array(list(entry["points_lps_mm"].values()), float)
                open_view = most_open_view(fields, frame, pts, triangle=name, level=level, side=side)
                for theta, phi in views_for(entry, open_view):
                    m = measure_points(fields, frame, pts, triangle=name, level=level, side=side,
                                       theta_deg=theta, phi_deg=phi, settings=settings)
                    window = points_window(fields, frame.view(theta, phi, side), pts, m.settings)
                    area, radius, _ = reference_window(scene, window, region_seed=False, pixel_mm=args.pixel)
                    mode = "points_open" if (theta, phi) == open_view else "points"
                    common = (index, level, side, name, mode, theta, phi)
                    rows.append(Row(*common, "projected_triangle_area_mm2", m.value("projected_triangle_area_mm2"),
                                    table_value(entry, theta, phi)))
                    rows.append(Row(*common, "true_triangle_area_mm2", m.value("true_triangle_area_mm2"), entry["area_3d_mm2"]))
                    rows.append(Row(*common, "free_area_mm2", m.value("free_area_mm2"), area))
                    rows.append(Row(*common, "inscribed_radius_mm", m.value("inscribed_radius_mm"), radius))
                theta, phi = (float(entry["best_projected_view"][k]) for k in ("theta_deg", "phi_deg"))
                seed_point = pts.mean(axis=0)
                m = measure_seed(fields, frame, seed_point, triangle=name, level=level, side=side, theta_deg=theta,
                                 phi_deg=phi, upper_line_lps_mm=upper, settings=settings)
                window = seed_window(fields, frame, frame.view(theta, phi, side), seed_point, m.settings,
                                     upper_line_lps_mm=upper)
                area, radius, bounded = reference_window(scene, window, region_seed=True, pixel_mm=max(args.pixel, 0.15))
                common = (index, level, side, name, "seed", theta, phi)
                rows.append(Row(*common, "bounded", float(m.bounded), float(bounded)))
                if m.bounded and bounded:
                    rows.append(Row(*common, "free_area_mm2", m.value("free_area_mm2"), area))
                    rows.append(Row(*common, "inscribed_radius_mm", m.value("inscribed_radius_mm"), radius))
                rows += nolevel_rows(index, level, side, name, entry, case.labels, frame, fields, scene, pts, args,
                                     mode="points_nolevel")
                if predicted is not None:
                    rows += nolevel_rows(index, level, side, name, entry, predicted, frame, fields, scene, pts, args,
                                         mode="points_nolevel_model")
                if name == "kambin":
                    rows += auto_rows(index, level, side, case, entry)
                rows += optimiser_rows(index, level, side, name, entry, frame, pts, fields, args)
    return rows


def segment_case(case, model: str):
    """The model's label map of the case's CT (what a physician measures on)."""
    from spinect.api import segment

    return segment(case.ct, model=model, device="cpu").labels


def nolevel_rows(index, level, side, name, entry, labels, truth: EndplateFrame, fields, scene, pts, args, *,
                 mode: str) -> list[Row]:
    """Points mode as a physician uses it on a patient: three clicks, no level map, no endplate.

    The endplate frame is found from the clicks and the label map's bone
    (:func:`spinect.geometry.endplate.endplate_frame_from_clicks`; a session without ``structures``). Rows: the fitted
    normal's angle to the truth's, the projected triangle area against the truth's table in the
    (0°, 0°), (30°, 0°) and best projected views (what a wrong frame spoils: 78-80° off at L5/S1
    gave half the area before the fit through B-C), and the free area against the continuous
    reference in the view measured (on a model's segmentation this includes its errors).
    A refusal is a row too (``refused`` = 1), never a silent skip.
    """
    from spinect.errors import InputError
    from spinect.geometry.session import TriangleSession

    views = views_for(entry)
    rows: list[Row] = []
    session = None
    for k, (theta, phi) in enumerate(views):
        common = (index, level, side, name, mode, theta, phi)
        try:  # one session for the views: the one-shot measure_triangle's numbers, opened once
            if session is None:
                session = TriangleSession.open(labels, level=level, side=side, triangle=name, around_lps_mm=pts,
                                               allow_missing_nerve=True)
            result = session.measure("points", points_lps_mm=pts, theta_deg=theta, phi_deg=phi)
        except InputError as exc:
            print(f"case {index} {level} {side} {name} {mode}: refused: {exc}", file=sys.stderr)
            rows.append(Row(*common, "refused", 1.0, 0.0))
            return rows
        m = result.measurement
        if k == 0:
            rows.append(Row(*common, "refused", 0.0, 0.0))
            angle = float(np.degrees(np.arccos(np.clip(m.frame.normal @ truth.normal, -1, 1))))
            rows.append(Row(*common, "endplate_normal_error_deg", angle, 0.0))
        rows.append(Row(*common, "projected_triangle_area_mm2", m.value("projected_triangle_area_mm2"),
                        table_value(entry, theta, phi)))
        # the fields give the window's geometry only: the reference is the continuous truth either way
        window = points_window(fields, m.frame.view(theta, phi, side), pts, m.settings)
        area, _, _ = reference_window(scene, window, region_seed=False, pixel_mm=args.pixel)
        rows.append(Row(*common, "free_area_mm2", m.value("free_area_mm2"), area))
    return rows


def frame_rows(index: int, level: str, case, truth: EndplateFrame) -> list[Row]:
    import SimpleITK as sitk

    from spinect.geometry.measure import crop_around

    lower = {"L5S1": "S1", "L4L5": "L5"}[level]
    structures = crop_around(case.structures, truth.centre_lps_mm, 60.0)
    fields_affine = ObstacleFields.from_arrays(
        np.zeros((2, 2, 2), np.uint8), tuple(structures.GetSpacing()[::-1]), origin_lps_mm=structures.GetOrigin(),
        direction=np.asarray(structures.GetDirection()), subvoxel=False,
    ).index_to_lps
    fitted = endplate_frame_from_structures(sitk.GetArrayViewFromImage(structures), fields_affine, STRUCTURE_CODES[lower])
    angle = float(np.degrees(np.arccos(np.clip(fitted.normal @ truth.normal, -1, 1))))
    lateral = float(np.degrees(np.arccos(np.clip(abs(fitted.left @ truth.left), -1, 1))))
    offset = float(np.linalg.norm(fitted.centre_lps_mm - truth.centre_lps_mm))
    common = (index, level, "-", "frame", "structures", 0.0, 0.0)
    return [Row(*common, "endplate_normal_error_deg", angle, 0.0), Row(*common, "lateral_axis_error_deg", lateral, 0.0),
            Row(*common, "endplate_centre_error_mm", offset, 0.0)]


def auto_rows(index: int, level: str, side: str, case, entry: dict) -> list[Row]:
    """Automatic Kambin vertices from the level map vs the truth's landmarks."""
    from spinect.geometry.landmarks import auto_landmarks

    from spinect.errors import InputError

    common = (index, level, side, "kambin", "auto", 0.0, 0.0)
    try:
        found = auto_landmarks(case.structures, level=level, side=side)
    except InputError as exc:  # e.g. a real S1 whose SAP hardly rises above the endplate
        print(f"case {index} {level} {side}: automatic landmarks failed: {exc}")
        return [Row(*common, "auto_landmarks_failed", 1.0, 0.0)]
    truth = np.array(list(entry["points_lps_mm"].values()), float)
    rows = [Row(*common, f"vertex_{k}_error_mm", float(np.linalg.norm(found[i] - truth[i])), 0.0) for i, k in enumerate("ABC")]
    area = 0.5 * float(np.linalg.norm(np.cross(found[1] - found[0], found[2] - found[0])))
    rows.append(Row(*common, "true_triangle_area_mm2", area, entry["area_3d_mm2"]))
    return rows


def optimiser_rows(index, level, side, name, entry, frame, pts, fields, args) -> list[Row]:
    face = entry["face_on_view"]
    theta_t, phi_t = float(face["theta_deg"]), float(face["phi_deg"])
    search = SearchSettings(step_deg=args.step, reachable=False, objective="free_area",
                            window=WindowSettings(pixel_mm=0.5, depth_step_mm=1.0, separate_structures=False))
    empty = ObstacleFields.from_arrays(np.zeros((4, 4, 4), np.uint8), (1.0, 1.0, 1.0),
                                       origin_lps_mm=tuple(pts.mean(axis=0) - 200.0), subvoxel=False)
    rows = []
    if 0 <= theta_t <= 60 and -25 <= phi_t <= 25:
        found = search_trajectory(empty, frame, side=side, points_lps_mm=pts, triangle=name, level=level,
                                  search=SearchSettings(step_deg=args.step, robust_deg=0.0, reachable=False,
                                                        objective="free_area", window=search.window))
        err = float(np.hypot(found.theta_deg - theta_t, found.phi_deg - phi_t))
        rows.append(Row(index, level, side, name, "optimiser_empty", theta_t, phi_t, "best_view_error_deg", err, 0.0))
    if args.search_labels:
        found = search_trajectory(fields, frame, side=side, points_lps_mm=pts, triangle=name, level=level, search=search)
        rows.append(Row(index, level, side, name, "optimiser_labels", found.theta_deg, found.phi_deg,
                        "robust_radius_mm", found.robust_value, None))
    return rows


# --- table -----------------------------------------------------------------------------------------


def summarise(rows: list[Row]) -> str:
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.triangle, r.mode, r.quantity), []).append(r)
    lines = [
        f"| triangle | mode | quantity | n | mean ref | mean err | mean abs err | mean abs rel err % (ref >= {MIN_AREA_MM2:g} mm2) | max abs err | pass |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (tri, mode, qty), items in sorted(groups.items()):
        signed = np.array([r.error for r in items if r.error is not None], float)
        if signed.size == 0:
            continue
        errs = np.abs(signed)
        refs = np.array([r.reference for r in items if r.error is not None], float)
        big = refs >= MIN_AREA_MM2
        rel = 100 * errs[big] / refs[big] if "area" in qty else None
        rel_text = "" if rel is None else (f"{rel.mean():.2f} (n={rel.size})" if rel.size else "n/a")
        lines.append(
            f"| {tri} | {mode} | {qty} | {errs.size} | {refs.mean():.3f} | {signed.mean():+.3f} | {errs.mean():.3f} | "
            f"{rel_text} | {errs.max():.3f} | {_verdict(qty, errs, rel)} |"
        )
    return "\n".join(lines)


def _verdict(quantity: str, errs: np.ndarray, rel: np.ndarray | None) -> str:
    if "area" in quantity and rel is not None:
        return ("yes" if rel.mean() <= 3.0 else "NO") if rel.size else ""
    if quantity == "inscribed_radius_mm":
        return "yes" if errs.max() <= 0.25 else f"NO ({np.mean(errs <= 0.25) * 100:.0f}% within)"
    if quantity == "best_view_error_deg":
        return "yes" if errs.max() <= 2.5 else "NO"
    if quantity == "endplate_normal_error_deg":
        return "yes" if errs.max() <= 10.0 else f"NO ({np.mean(errs <= 10.0) * 100:.0f}% within 10 deg)"
    if quantity == "refused":
        return f"{errs.sum():.0f} refused"
    if quantity == "bounded":
        return f"{np.mean(errs == 0) * 100:.0f}% agree"
    return ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--levels", nargs="+", default=["L5S1"], choices=("L5S1", "L4L5"))
    parser.add_argument("--pixel", type=float, default=REF_PIXEL_MM, help="reference grid (mm)")
    parser.add_argument("--step", type=float, default=2.5, help="optimiser grid step (deg)")
    parser.add_argument("--search-labels", action="store_true", help="also run the search on the label maps")
    parser.add_argument("--spacing", type=float, default=1.0, help="phantom voxel size (mm, isotropic)")
    parser.add_argument("--csv", default=None, help="write every comparison to this CSV")
    parser.add_argument("--anatomy", choices=("primitive", "mesh"), default="mesh",
                        help="phantom bones: real bone shapes (phantom v2, default) or geometric primitives (v1)")
    parser.add_argument("--model", default=None,
                        help="also measure points mode without a level map on this model's segmentation of each "
                             "case (e.g. SpineCTSegmentation/spinect/models/spinect_default.pt)")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    for i in range(args.cases):
        t0 = time.time()
        rows += validate_case(i, case_seed(args.seed, i), args.levels, args)
        print(f"case {i}: {time.time() - t0:.0f} s", file=sys.stderr)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["case", "level", "side", "triangle", "mode", "theta", "phi", "quantity", "measured", "reference"])
            for r in rows:
                writer.writerow([r.case, r.level, r.side, r.triangle, r.mode, r.theta, r.phi, r.quantity, r.measured, r.reference])
    print(summarise(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
