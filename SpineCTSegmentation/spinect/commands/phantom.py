"""``spinect phantom OUT_DIR``: lumbosacral CT phantoms with exact labels and triangle truth."""

from __future__ import annotations

import argparse
import contextlib
import sys

from spinect.commands.progress import RichProgress, progress_lines_callback
from spinect.requests import PhantomRequest, add_arguments, from_args

__all__ = ["register", "run"]


def register(subparsers) -> None:
    """Add the ``phantom`` verb: its options are :class:`spinect.requests.PhantomRequest`'s fields."""
    p = subparsers.add_parser(
        "phantom",
        help="generate lumbosacral CT phantoms with exact bone/nerve labels and triangle truth",
        description=(
            "Generate N lumbosacral CT phantoms (L1-S1, sacrum, ilia, dural sac, nerve roots, fat, muscles) "
            "with labels from the implicit geometry. Per case: case_XXX_ct.nii.gz (int16 HU), _labels.nii.gz "
            "(0 background, 1 bone, 2 nerve), _structures.nii.gz (level/structure codes), _truth.json "
            "(Kambin and safe triangles per side at L4/5 and L5/S1, viewing tables, roots, foramina), "
            "optional _preview.png; plus manifest.json for `spinect train`."
        ),
    )
    add_arguments(p, PhantomRequest)
    p.add_argument("--progress-lines", action="store_true", help="print machine-readable SPINECT_PROGRESS lines on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spinect.api import phantom

    request = from_args(PhantomRequest, args)
    display = contextlib.nullcontext(progress_lines_callback()) if args.progress_lines else RichProgress("phantom")
    with display as progress:
        written = phantom(request, progress=progress)
    print(f"wrote {request.n} phantom case(s) to {request.out_dir} ({len(written)} files, manifest "
          f"{written[-1].name})", file=sys.stderr)
    return 0
