"""``spinect report OUT.html``: one page per case with the inputs, model, volumes and triangle measurements.

Only parses arguments and calls :func:`spinect.api.report`.
"""

from __future__ import annotations

import argparse
import sys

from spinect.requests import ReportRequest, add_arguments, from_args

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` verb: its options are :class:`spinect.requests.ReportRequest`'s fields."""
    p = subparsers.add_parser(
        "report",
        help="write an HTML (and PDF) report of one case",
        description=(
            "Write one self-contained HTML page for a case: inputs and model provenance, segment volumes, and "
            "each triangle measurement with its definition, view (theta, phi), C-arm angles, projected and true "
            "areas, r*, the projected window, the search heat map and the planned needle path."
        ),
    )
    add_arguments(p, ReportRequest)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spinect.api import report

    written = report(from_args(ReportRequest, args))
    print("wrote " + ", ".join(str(p) for p in written.values()), file=sys.stderr)
    return 0
