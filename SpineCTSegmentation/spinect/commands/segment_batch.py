"""``spinect segment-batch INPUTS... | --list cases.csv --out DIR``: a cohort with one loaded model."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["register", "run"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment-batch",
        help="segment many CTs with one loaded model (resumable, per-case CSV)",
        description="Segment many CTs one after the other with one loaded model. Each case is written as "
                    "OUT/<case><suffix> with its provenance sidecar; cases already written are skipped, so an "
                    "interrupted batch resumes where it stopped. A per-case CSV (status, error, timings, volumes) "
                    "is rewritten after every case; a failing case is recorded and the batch goes on. Exit code 1 "
                    "when any case failed.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="CT files (NIfTI, NRRD, MHA) or DICOM series folders")
    p.add_argument("--list", dest="list_file", default=None, metavar="CASES.csv",
                   help="CSV with an 'input' column (and optionally 'case', the output name); relative paths are "
                        "relative to the CSV's folder")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--suffix", default=".nii.gz", choices=(".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha"),
                   help="output format (default .nii.gz label maps)")
    p.add_argument("--csv", default=None, metavar="PATH", help="per-case CSV (default DIR/segment-batch.csv)")
    p.add_argument("--model", default=None, help="model file from `spinect train` (default: the shipped model)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--smoothing-mm", type=float, default=None, help="median smoothing kernel in mm (default 1.5; 0 = off)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per network call (default 4)")
    p.add_argument("--keep-islands", action="store_true", help="keep isolated false-positive islands")
    p.add_argument("--whole-volume", action="store_true", help="run the network on every window in the body")
    p.add_argument("--levels", action="store_true", help="also label vertebral levels (see spinect segment --levels)")
    p.add_argument("--allow-gaps", action="store_true", help="resample DICOM series with missing slices instead of failing them")
    p.add_argument("--force", action="store_true", help="run cases beyond the sane-work bounds of spinect segment")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the cases on Ray actors (one per GPU or per group of CPUs, each loading the model once): "
                        "without ADDRESS a local Ray instance on this machine's CPUs/GPUs, with one (auto, HOST:6379, "
                        "ray://HOST:10001) an existing cluster whose nodes all see the inputs and --out. Needs "
                        "`pip install 'spinect[ray]'`")
    p.add_argument("--ray-cpus-per-actor", type=int, default=None, metavar="N",
                   help="with --ray on CPUs: CPUs per actor (default 4, at most the cluster's CPUs)")
    p.add_argument("--verbose", action="store_true",
                   help="log what each case does (removed islands, ...) and the traceback of unexpected errors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spinect.api import segment_batch
    from spinect.errors import SpinectError

    if args.ray_cpus_per_actor is not None and args.ray is None:
        raise SpinectError("--ray-cpus-per-actor is for --ray runs; add --ray or leave it out")
    if not args.verbose:  # one line per case; the cases' own messages (removed islands, ...) with --verbose
        logging.getLogger("spinect").setLevel(logging.WARNING)

    def progress(done: int, total: int, row: dict) -> None:
        detail = f" ({row['seconds']} s)" if row["status"] == "ok" else f": {row['error']}" if row["error"] else ""
        print(f"[{done}/{total}] {row['case']}: {row['status']}{detail}", file=sys.stderr, flush=True)

    options = dict(model=args.model, device=args.device, smoothing_mm=args.smoothing_mm, batch_size=args.batch_size,
                   keep_islands=args.keep_islands, whole_volume=args.whole_volume, levels=args.levels,
                   allow_gaps=args.allow_gaps, force=args.force)
    if args.ray is not None:
        from spinect.batch import collect_cases
        from spinect.batch_ray import import_ray, run_batch_ray

        import_ray()  # before any work: a clear error when Ray is not installed
        cases = collect_cases(args.inputs, list_file=args.list_file, out_dir=args.out, suffix=args.suffix)
        result = run_batch_ray(cases, address=args.ray, csv_path=args.csv, cpus_per_actor=args.ray_cpus_per_actor,
                               progress=None if args.verbose else progress, **options)
    else:
        result = segment_batch(args.inputs, list_file=args.list_file, out_dir=args.out, suffix=args.suffix,
                               csv_path=args.csv, progress=None if args.verbose else progress, **options)
    counts = result.counts
    print(f"segment-batch: {counts.get('ok', 0)} segmented, {counts.get('skipped', 0)} skipped (already written), "
          f"{counts.get('failed', 0)} failed; per-case CSV {result.csv_path}", file=sys.stderr)
    for row in result.rows:
        if row["status"] == "failed":
            print(f"  failed: {row['case']} ({row['input']}): {row['error']}", file=sys.stderr)
    return 1 if result.failed else 0
