"""``spinect segment-batch INPUTS... | --list cases.csv --out DIR``: a cohort with one loaded model.

The options are :class:`spinect.requests.SegmentBatchRequest`'s (its per-case options are
:class:`spinect.requests.SegmentRequest`'s); this module only adds ``--verbose``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from spinect.requests import SegmentBatchRequest, add_arguments, from_args

__all__ = ["register", "run"]


def register(subparsers) -> None:
    """Add the ``segment-batch`` verb: its options are :class:`spinect.requests.SegmentBatchRequest`'s fields."""
    p = subparsers.add_parser(
        "segment-batch",
        help="segment many CTs with one loaded model (resumable, per-case CSV)",
        description="Segment many CTs one after the other with one loaded model. Each case is written as "
                    "OUT/<case><suffix> with its provenance sidecar; cases already written are skipped, so an "
                    "interrupted batch resumes where it stopped. A per-case CSV (status, error, timings, volumes) "
                    "is rewritten after every case; a failing case is recorded and the batch goes on. Exit code 1 "
                    "when any case failed.",
    )
    add_arguments(p, SegmentBatchRequest)
    p.add_argument("--verbose", action="store_true",
                   help="log what each case does (removed islands, ...) and the traceback of unexpected errors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spinect.api import segment_batch

    request = from_args(SegmentBatchRequest, args)
    if not args.verbose:  # one line per case; the cases' own messages (removed islands, ...) with --verbose
        logging.getLogger("spinect").setLevel(logging.WARNING)

    def progress(done: int, total: int, row: dict) -> None:
        detail = f" ({row['seconds']} s)" if row["status"] == "ok" else f": {row['error']}" if row["error"] else ""
        print(f"[{done}/{total}] {row['case']}: {row['status']}{detail}", file=sys.stderr, flush=True)

    options = request.segment_options()
    if request.ray is not None:
        from spinect.batch import collect_cases
        from spinect.batch_ray import import_ray, run_batch_ray

        import_ray()  # before any work: a clear error when Ray is not installed
        cases = collect_cases(request.inputs, list_file=request.list_file, out_dir=request.out_dir,
                              suffix=request.suffix)
        result = run_batch_ray(cases, address=request.ray, csv_path=request.csv_path,
                               cpus_per_actor=request.ray_cpus_per_actor, progress=None if args.verbose else progress,
                               **options)
    else:
        result = segment_batch(request.inputs, list_file=request.list_file, out_dir=request.out_dir,
                               suffix=request.suffix, csv_path=request.csv_path,
                               progress=None if args.verbose else progress, **options)
    counts = result.counts
    print(f"segment-batch: {counts.get('ok', 0)} segmented, {counts.get('skipped', 0)} skipped (already written), "
          f"{counts.get('failed', 0)} failed; per-case CSV {result.csv_path}", file=sys.stderr)
    for row in result.rows:
        if row["status"] == "failed":
            print(f"  failed: {row['case']} ({row['input']}): {row['error']}", file=sys.stderr)
    return 1 if result.failed else 0
