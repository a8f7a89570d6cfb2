"""``spinect triangles SEG``: measure a Kambin or safe triangle and find the best oblique view.

Only parses arguments and calls :func:`spinect.geometry.measure.measure_triangle`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

from spinect.commands.progress import RichProgress, progress_lines_callback

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``triangles`` verb to the ``spinect`` parser."""
    p = subparsers.add_parser(
        "triangles",
        help="measure Kambin / safe triangles and find the best oblique view",
        description=(
            "Measure the free window of a Kambin or safe triangle on a bone/nerve label map, seen along "
            "an oblique view (theta obliquity, phi cranio-caudal tilt relative to the lower vertebra's "
            "superior endplate), and optionally search the view with the widest robust window and plan "
            "the needle path. Coordinates are LPS mm (add --ras for Slicer's RAS). See docs/triangles.md."
        ),
    )
    p.add_argument("seg", type=Path, help="label map (0 background, 1 bone, 2 nerve) or .seg.nrrd")
    p.add_argument("--ct", type=Path, default=None, help="CT (for the skin entry point and path length)")
    p.add_argument("--level", required=True, choices=("L4L5", "L5S1"), help="disc level")
    p.add_argument("--side", required=True, choices=("left", "right"), help="side of the target")
    p.add_argument("--triangle", default="kambin", choices=("kambin", "safe"), help="which triangle (default kambin)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--points", type=float, nargs=9, metavar="X", help="vertices A B C: Ax Ay Az Bx By Bz Cx Cy Cz")
    mode.add_argument("--seed", type=float, nargs=3, metavar="X", help="one point inside the window: x y z")
    mode.add_argument("--auto", action="store_true", help="find the vertices from a level map (--structures)")
    p.add_argument("--structures", type=Path, default=None, help="level/structure map (codes of docs/phantom.md)")
    p.add_argument(
        "--endplate", type=float, nargs="+", metavar="X",
        help="one point on the lower vertebra's superior endplate (x y z), or 3+ points to fit its plane",
    )
    p.add_argument("--pedicle", type=float, nargs=3, metavar="X", help="lowest point of the upper pedicle (bounds a seed window)")
    p.add_argument("--ras", action="store_true", help="coordinates are RAS (as Slicer shows them), not LPS")
    p.add_argument("--theta", type=float, default=0.0, help="obliquity in degrees (0 = PA; default 0)")
    p.add_argument("--phi", type=float, default=0.0, help="cranio-caudal tilt in degrees (0 = endplate squared; default 0)")
    p.add_argument("--optimize", action="store_true", help="search theta in [0, 60], phi in [-25, 25] for the best view")
    p.add_argument("--step", type=float, default=2.5, help="coarse search grid step in degrees (default 2.5)")
    p.add_argument("--objective", default="radius", choices=("radius", "free_area", "usable_area"), help="search objective (default radius r*)")
    p.add_argument("--reachable", action="store_true", help="measure the window from the skin (default: 15 mm before the target)")
    p.add_argument("--instrument-radius", type=float, default=0.36, help="needle/cannula radius in mm (default 0.36, 22 G)")
    p.add_argument("--pixel", type=float, default=0.25, help="in-plane sampling of the projection in mm (default 0.25)")
    p.add_argument("--allow-missing-nerve", action="store_true",
                   help="measure even when no nerve is labelled near the target (window bounded by bone only; flagged)")
    p.add_argument("--json", required=True, type=Path, dest="json_out", help="JSON report to write")
    p.add_argument("--heatmap", type=Path, default=None, help="heat map PNG (default: next to the JSON with --optimize)")
    p.add_argument("--progress-lines", action="store_true", help="print machine-readable SPINECT_PROGRESS lines (for Slicer)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spinect.errors import InputError
    from spinect.geometry.measure import measure_triangle
    from spinect.geometry.trajectory import SearchSettings
    from spinect.geometry.window import WindowSettings

    def lps(values, count: int | None = None):
        if values is None:
            return None
        array = np.asarray(values, float).reshape(-1, 3) if len(values) % 3 == 0 else None
        if array is None or (count is not None and len(array) != count):
            raise InputError(f"expected {count or 'a multiple of'} 3 coordinates, got {len(values)}: {values}")
        if args.ras:
            array = array * np.array([-1.0, -1.0, 1.0])
        return array

    settings = WindowSettings(
        pixel_mm=args.pixel,
        instrument_radius_mm=args.instrument_radius,
        depth_before_mm=None if args.reachable else WindowSettings().depth_before_mm,
    )
    search = SearchSettings(objective=args.objective, step_deg=args.step) if args.optimize else None
    heatmap = args.heatmap
    if args.optimize and heatmap is None:
        heatmap = args.json_out.with_name(args.json_out.stem + "_heatmap.png")
    seed = lps(args.seed, 1)
    display = contextlib.nullcontext(progress_lines_callback()) if args.progress_lines else RichProgress("triangles")
    with display as progress:
        result = measure_triangle(
            args.seg, ct=args.ct, level=args.level, side=args.side, triangle=args.triangle,
            points_lps_mm=lps(args.points, 3), seed_lps_mm=None if seed is None else seed[0], auto=args.auto,
            structures=args.structures, endplate_lps_mm=lps(args.endplate),
            upper_line_lps_mm=None if args.pedicle is None else lps(args.pedicle, 1)[0],
            theta_deg=args.theta, phi_deg=args.phi, settings=settings, optimize=args.optimize, search=search,
            json_path=args.json_out, heatmap_path=heatmap, progress=progress,
            allow_missing_nerve=args.allow_missing_nerve,
        )
    _print_summary(result)
    return 0


def _print_summary(result) -> None:
    """The measured view's numbers, then (with --optimize) the best view's: angles, objective, numbers, path."""
    m = result.measurement
    print(f"{m.triangle} triangle {m.level} {m.side} ({m.mode}); frame from {result.frame_source}")
    print(f"measured view: theta={m.view.theta_deg:.1f} phi={m.view.phi_deg:.1f}, {m.settings.window_kind} window")
    _print_quantities(m, indent="  ")
    for warning in result.warnings:
        print(f"  WARNING: {warning}")
    t = result.trajectory
    if t is not None:
        path = t.path
        best = t.measurement
        length = "n/a (no CT)" if path.length_mm is None else f"{path.length_mm:.1f} mm"
        print(f"best view: theta={t.theta_deg:.2f} phi={t.phi_deg:.2f} (C-arm oblique {t.carm['oblique_deg']:.1f}, "
              f"tilt {t.carm['tilt_deg']:.1f}), {best.settings.window_kind} window")
        print(f"  search objective {t.objective}={t.objective_value:.2f}, robust {t.robust_value:.2f} "
              f"(on the search's {t.objective_pixel_mm:g} mm grid; the numbers below are measured at full resolution)")
        _print_quantities(best, indent="  ")
        print(f"  path length {length}, min nerve clearance {path.min_nerve_clearance_mm:.2f} mm, "
              f"min bone clearance {path.min_bone_clearance_mm:.2f} mm, clear: {path.clear}")
    for kind, path in result.files.items():
        print(f"wrote {path} ({kind})", file=sys.stderr)


def _print_quantities(m, *, indent: str) -> None:
    for name, q in m.quantities.items():
        value = "unbounded" if q.value is None else f"{q.value:.2f} {q.unit}"
        print(f"{indent}{name:30s} {value:>14s}  [{q.kind}]")
    for note in m.notes:
        print(f"{indent}note: {note}")
