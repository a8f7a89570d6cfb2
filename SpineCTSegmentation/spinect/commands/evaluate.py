"""``spinect evaluate``: score predicted label maps against label maps and write a report.

The options are :class:`spinect.requests.EvaluateRequest`'s; this module calls
:func:`spinect.api.evaluate` (files mode ``--pred P --labels L``, or model-on-dataset mode
``--model M --data DATA``; :mod:`spinect.metrics.runner`) and prints the summary.
"""

from __future__ import annotations

import argparse

from spinect.requests import EvaluateRequest, add_arguments, from_args

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` verb to the ``spinect`` parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score predicted label maps against labels (PA, IoU, Dice, HD95, ASSD)",
        description=(
            "Score predicted label maps against manual label maps, case by case: SPINECT's pixel "
            "accuracy, IoU and Dice, plus HD95 and ASSD in mm. Files pair by case id (file name "
            "without suffixes such as _pred, _labels, _seg, .nii.gz, .seg.nrrd). Writes "
            "metrics_per_case.csv, metrics_summary.csv, metrics_summary.md and metrics_boxplot.png."
        ),
    )
    add_arguments(parser, EvaluateRequest)
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spinect.api import evaluate

    request = from_args(EvaluateRequest, args)
    _, files = evaluate(request, show_progress=not args.no_progress)
    print(files.summary_markdown.read_text(encoding="utf-8"))
    print(f"Report written to {request.out_dir}: {files.per_case_csv.name}, {files.summary_csv.name}, "
          f"{files.summary_markdown.name}, {files.boxplot_png.name}")
    return 0
