"""``spinect phantom OUT_DIR``: lumbosacral CT phantoms with exact labels and triangle truth."""

from __future__ import annotations

import argparse
import contextlib
import sys

from spinect.commands.progress import RichProgress, progress_lines_callback

__all__ = ["register", "run"]


def register(subparsers) -> None:
    """Add the ``phantom`` verb to the ``spinect`` parser."""
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
    p.add_argument("out_dir", help="output folder (created if missing)")
    p.add_argument("--n", type=int, default=1, help="number of cases (default 1)")
    p.add_argument("--seed", type=int, default=0, help="run seed; case i uses a seed derived from (seed, i) (default 0)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("D", "H", "W"), default=None,
                   help="grid size in voxels, z y x (default 200 300 300)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="voxel size in mm, z y x (default 1 1 1; e.g. 3 0.8 0.8 for thick slices)")
    p.add_argument("--appearance", choices=("ct", "v1", "random"), default=None,
                   help="ct: CT-realistic HU, kernels and noise (default); v1: the first phantom's HU; "
                        "random: domain-randomised intensities (SynthSeg-style)")
    p.add_argument("--randomise-appearance", "--randomize-appearance", action="store_true",
                   help="same as --appearance random")
    degen = p.add_mutually_exclusive_group()
    degen.add_argument("--degeneration", dest="degeneration", action="store_const", const=True, default=None,
                       help="give every case one degenerated level (default: 30%% of cases)")
    degen.add_argument("--no-degeneration", dest="degeneration", action="store_const", const=False,
                       help="no degeneration")
    p.add_argument("--anatomy", choices=("primitive", "mesh"), default="mesh",
                   help="mesh (default): phantom v2, real bone shapes (Visible Human Male, a mean L2-L5, a second "
                        "pelvis) with fitted nerves and triangles; primitive: bones made of geometric primitives (v1)")
    p.add_argument("--preview", action="store_true", help="also write a PNG per case through the left L5/S1 foramen")
    p.add_argument("--progress-lines", action="store_true", help="print machine-readable SPINECT_PROGRESS lines on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spinect.errors import SpinectError
    from spinect.phantom import make_phantom

    if args.n < 1:
        raise SpinectError(f"--n must be >= 1, got {args.n}")
    display = contextlib.nullcontext(progress_lines_callback()) if args.progress_lines else RichProgress("phantom")
    with display as progress:
        written = make_phantom(
            args.out_dir, n=args.n, seed=args.seed, shape_zyx=tuple(args.shape) if args.shape else None,
            spacing_zyx_mm=tuple(args.spacing) if args.spacing else None,
            randomise_appearance=args.randomise_appearance, appearance=args.appearance, preview=args.preview,
            degeneration=args.degeneration, progress=progress, anatomy=args.anatomy,
        )
    print(f"wrote {args.n} phantom case(s) to {args.out_dir} ({len(written)} files, manifest {written[-1].name})", file=sys.stderr)
    return 0
