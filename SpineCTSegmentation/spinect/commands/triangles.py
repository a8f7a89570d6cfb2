"""``spinect triangles SEG``: measure a Kambin or safe triangle and find the best oblique view.

The options are :class:`spinect.requests.TrianglesRequest`'s (plus ``--ras`` and the display
flags); this module calls :func:`spinect.api.triangles` and prints the measured (and best) view.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from spinect.commands.progress import RichProgress, progress_lines_callback
from spinect.requests import TrianglesRequest, add_arguments, from_args

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
    add_arguments(p, TrianglesRequest)
    p.add_argument("--ras", action="store_true", help="coordinates are RAS (as Slicer shows them), not LPS")
    p.add_argument("--progress-lines", action="store_true", help="print machine-readable SPINECT_PROGRESS lines (for Slicer)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spinect.api import triangles

    request = from_args(TrianglesRequest, args)
    if args.ras:
        request = request.from_ras()
    display = contextlib.nullcontext(progress_lines_callback()) if args.progress_lines else RichProgress("triangles")
    with display as progress:
        result = triangles(request, progress=progress)
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
