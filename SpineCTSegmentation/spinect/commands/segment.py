"""``spinect segment INPUT OUTPUT``: CT in, bone/nerve segmentation out.

The options are :class:`spinect.requests.SegmentRequest`'s; this module only adds the display
flags (``--progress-lines``, ``--verbose``), calls :func:`spinect.api.segment` and prints a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from spinect.commands.progress import RichProgress, progress_lines_callback
from spinect.requests import SegmentRequest, add_arguments, from_args

__all__ = ["register", "run"]

log = logging.getLogger("spinect")


def register(subparsers) -> None:
    """Add the ``segment`` verb: its options are :class:`spinect.requests.SegmentRequest`'s fields."""
    p = subparsers.add_parser(
        "segment",
        help="segment bone and nerves on a CT",
        description="Segment lumbosacral bone (label 1) and nerves (label 2) on a CT with the SPINECT 3D U-Net.",
    )
    add_arguments(p, SegmentRequest)
    p.add_argument("--progress-lines", action="store_true", help="print machine-readable SPINECT_PROGRESS lines on stdout (for Slicer)")
    p.add_argument("--verbose", action="store_true", help="print per-stage timings and peak memory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spinect.api import segment

    request = from_args(SegmentRequest, args)
    if args.progress_lines:
        display = contextlib.nullcontext(progress_lines_callback())
    else:
        display = RichProgress("segment")
    with display as progress:
        result = segment(request, progress=progress)
    counts = result.voxel_counts()
    found = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "background")
    print(f"wrote {result.output_path} ({found} voxels; device {result.device})", file=sys.stderr)
    if "dicom_seg" in result.provenance and request.dicom_seg_output:
        print(f"wrote DICOM SEG {request.dicom_seg_output}", file=sys.stderr)
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
