"""``spinect segment INPUT OUTPUT``: CT in, bone/nerve segmentation out."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from spinect.commands.progress import RichProgress, progress_lines_callback

__all__ = ["register", "run"]

log = logging.getLogger("spinect")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment",
        help="segment bone and nerves on a CT",
        description="Segment lumbosacral bone (label 1) and nerves (label 2) on a CT with the SPINECT 3D U-Net.",
    )
    p.add_argument("input", help="CT: NIfTI, NRRD, MHA file or a DICOM series folder")
    p.add_argument("output", help="output: .seg.nrrd (Slicer segmentation), .nii.gz/.nrrd/.mha label map, or .dcm "
                                  "(DICOM SEG; needs a DICOM series as input)")
    p.add_argument("--model", default=None, help="model file from `spinect train` (default: the shipped model)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--smoothing-mm", type=float, default=None, help="median smoothing kernel in mm (default 1.5; 0 = off)")
    p.add_argument("--blend", choices=("sum", "gaussian"), default=None, help="window blending (default: the model's, SPINECT 'sum')")
    p.add_argument("--stride", type=int, nargs=3, metavar=("D", "H", "W"), default=None, help="sliding-window stride in voxels (default 20 40 40)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per network call (default 4)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation: 4 predictions per model, fused; gives uncertainty")
    p.add_argument("--ensemble", nargs="+", default=(), metavar="MODEL", help="further model files to fuse with --model (e.g. other folds)")
    p.add_argument("--uncertainty", default=None, metavar="OUT_MAP", help="write the voxel-wise uncertainty (vote entropy, nats) here; needs --tta or --ensemble")
    p.add_argument("--review", default=None, metavar="OUT.csv", help="write the top uncertain regions (CSV or JSON) here; needs --tta or --ensemble")
    p.add_argument("--keep-islands", action="store_true", help="keep isolated false-positive islands (removed and reported by default)")
    p.add_argument("--whole-volume", action="store_true",
                   help="run the network on every window in the body (default: skip windows > 30 mm from bone-dense tissue)")
    p.add_argument("--levels", action="store_true",
                   help="also label vertebral levels L1-L5 and sacrum (from a level model, see --level-model): .seg.nrrd gets "
                        "level segments in a second layer; a label image gets OUT_levels.<suffix>")
    p.add_argument("--dicom-seg", default=None, metavar="OUT.dcm",
                   help="also write a DICOM SEG referencing the input DICOM series (needs a DICOM input)")
    p.add_argument("--level-model", default=None, metavar="MODEL.pt",
                   help="with --levels: the level model to use (default: the model itself if it has level classes, "
                        "else the shipped level model)")
    p.add_argument("--no-overwrite", action="store_true", help="refuse to replace an existing output file")
    p.add_argument("--allow-gaps", action="store_true",
                   help="resample a DICOM series with missing slices onto an even grid (interpolating across the gap, "
                        "with a warning; noted in the provenance sidecar) instead of refusing it")
    p.add_argument("--force", action="store_true",
                   help="run even when the work is beyond sane bounds (> 200,000 sliding windows, or > 16 GiB of "
                        "estimated working memory on the network's 1 mm grid); refused otherwise")
    p.add_argument("--progress-lines", action="store_true", help="print machine-readable SPINECT_PROGRESS lines on stdout (for Slicer)")
    p.add_argument("--verbose", action="store_true", help="print per-stage timings and peak memory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spinect.api import segment

    if args.progress_lines:
        display = contextlib.nullcontext(progress_lines_callback())
    else:
        display = RichProgress("segment")
    with display as progress:
        result = segment(
            args.input, args.output, model=args.model, device=args.device, smoothing_mm=args.smoothing_mm,
            blend=args.blend, stride_zyx=tuple(args.stride) if args.stride else None,
            batch_size=args.batch_size, tta=args.tta, ensemble=args.ensemble, keep_islands=args.keep_islands,
            whole_volume=args.whole_volume,
            uncertainty_output=args.uncertainty, review_output=args.review,
            overwrite=not args.no_overwrite, force=args.force, allow_gaps=args.allow_gaps, progress=progress, levels=args.levels, level_model=args.level_model, dicom_seg_output=args.dicom_seg,
        )
    counts = result.voxel_counts()
    found = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "background")
    print(f"wrote {result.output_path} ({found} voxels; device {result.device})", file=sys.stderr)
    if "dicom_seg" in result.provenance and args.dicom_seg:
        print(f"wrote DICOM SEG {args.dicom_seg}", file=sys.stderr)
    if result.removed_islands:
        volume = sum(i["volume_mm3"] for i in result.removed_islands)
        print(f"removed {len(result.removed_islands)} false-positive island(s), {volume:.0f} mm³ in all "
              "(--keep-islands keeps them; --verbose lists them)", file=sys.stderr)
    if result.vvc is not None:
        vvc = ", ".join(f"{k} {v:.3f}" for k, v in result.vvc.items())
        print(f"{result.members} ensemble members; volume variation coefficient (sigma/mu): {vvc}", file=sys.stderr)
    if args.verbose:
        for island in result.removed_islands[:20]:
            print(f"  removed {island['class_name']} island: {island['voxels']} voxels ({island['volume_mm3']:.0f} mm³) at LPS "
                  f"{tuple(round(v, 1) for v in island['centroid_lps_mm'])} mm, {island['distance_mm']:.1f} mm from the kept anatomy",
                  file=sys.stderr)
        if len(result.removed_islands) > 20:
            print(f"  ... and {len(result.removed_islands) - 20} smaller islands", file=sys.stderr)
        from spinect.profiling import StageTimer

        print("stage timings:\n" + StageTimer(result.timings_s).table(), file=sys.stderr)
        vram = f", peak VRAM {result.peak_vram_mb:.0f} MiB" if result.peak_vram_mb is not None else ""
        print(f"peak RAM {result.peak_rss_mb:.0f} MiB{vram}", file=sys.stderr)
    return 0
