"""``spinect report OUT.html``: one page per case with the inputs, model, volumes and triangle measurements.

Only parses arguments and calls :func:`spinect.api.report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` verb to the ``spinect`` parser."""
    p = subparsers.add_parser(
        "report",
        help="write an HTML (and PDF) report of one case",
        description=(
            "Write one self-contained HTML page for a case: inputs and model provenance, segment volumes, and "
            "each triangle measurement with its definition, view (theta, phi), C-arm angles, projected and true "
            "areas, r*, the projected window, the search heat map and the planned needle path."
        ),
    )
    p.add_argument("output", type=Path, help="the HTML page to write (.html)")
    p.add_argument("--seg", type=Path, default=None, help="segmentation from `spinect segment` (.seg.nrrd or label map)")
    p.add_argument("--triangles", type=Path, nargs="+", default=(), metavar="JSON",
                   help="measurement files from `spinect triangles --json`")
    p.add_argument("--provenance", type=Path, default=None,
                   help="provenance sidecar of the segmentation (default: SEG.provenance.json when present)")
    p.add_argument("--ct", type=Path, default=None, help="the CT, named as the input (default: from the provenance)")
    p.add_argument("--case-id", default=None, help="title of the page (default: the segmentation's file name)")
    p.add_argument("--pdf", type=Path, default=None, help="also print the page to this PDF (needs a headless Chromium)")
    p.add_argument("--no-overwrite", action="store_true", help="refuse to replace existing files")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spinect.api import report

    written = report(args.output, seg=args.seg, triangles=args.triangles, provenance=args.provenance, ct=args.ct,
                     case_id=args.case_id, pdf=args.pdf, overwrite=not args.no_overwrite)
    print("wrote " + ", ".join(str(p) for p in written.values()), file=sys.stderr)
    return 0
