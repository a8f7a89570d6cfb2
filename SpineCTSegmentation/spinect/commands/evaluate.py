"""``spinect evaluate``: score predicted label maps against label maps and write a report.

Only parses arguments and calls :mod:`spinect.metrics`. A model-on-dataset mode
(``--model M --data DATA``) will produce ``(case_id, predicted image, label path)`` triples with
the segmentation API and hand them to :func:`run_evaluation`, which scores predictions that
already exist; it is not offered until that API exists.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    from spinect.metrics import EvaluationFiles, EvaluationResult

__all__ = ["register", "run_evaluation"]

_DEFAULT_CLASSES = "background,bone,nerve"


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
    parser.add_argument("--pred", required=True, type=Path, help="prediction label map, or a folder of them")
    parser.add_argument("--labels", required=True, type=Path, help="manual label map, or a folder of them")
    parser.add_argument("--out", required=True, type=Path, help="output folder for the report (created if missing)")
    parser.add_argument(
        "--classes",
        default=_DEFAULT_CLASSES,
        help=f"comma-separated names of label values 0, 1, ... (default: {_DEFAULT_CLASSES})",
    )
    parser.add_argument(
        "--resample-pred",
        action="store_true",
        help="resample predictions that are off the label grid (nearest neighbour) instead of failing",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.set_defaults(func=_run)


def run_evaluation(
    pairs: Iterable[tuple[str, object, object]],
    out_dir: Path,
    *,
    class_names: Sequence[str],
    resample_prediction: bool = False,
    show_progress: bool = True,
) -> tuple[EvaluationResult, EvaluationFiles]:
    """Score already computed predictions and write the report (shared by every evaluate mode).

    Args:
        pairs: (case_id, prediction file or SimpleITK image, label file or SimpleITK image).
        out_dir: report folder.
        class_names: names of label values 0, 1, ...
        resample_prediction: resample off-grid predictions instead of failing.
        show_progress: show a tqdm bar on stderr.

    Returns:
        (EvaluationResult, EvaluationFiles).
    """
    from tqdm import tqdm

    from spinect.metrics import evaluate_predictions, write_evaluation_report

    total = len(pairs) if hasattr(pairs, "__len__") else None  # type: ignore[arg-type]
    with tqdm(total=total, desc="evaluate", unit="case", disable=not show_progress) as bar:
        result = evaluate_predictions(
            pairs,
            class_names=class_names,
            resample_prediction=resample_prediction,
            progress=lambda done, _total, case_id: (bar.set_postfix_str(case_id), bar.update(1)),
        )
    files = write_evaluation_report(result, out_dir)
    return result, files


def _run(args: argparse.Namespace) -> int:
    from spinect.errors import InputError
    from spinect.metrics import check_report_folder, match_case_files

    class_names = tuple(name.strip() for name in args.classes.split(",") if name.strip())
    if len(class_names) < 2:
        raise InputError(f"--classes {args.classes!r} needs background and at least one class, e.g. {_DEFAULT_CLASSES}")
    pairs = match_case_files(args.pred, args.labels)
    check_report_folder(args.out)
    _, files = run_evaluation(
        pairs,
        args.out,
        class_names=class_names,
        resample_prediction=args.resample_pred,
        show_progress=not args.no_progress,
    )
    print(files.summary_markdown.read_text(encoding="utf-8"))
    print(f"Report written to {args.out}: {files.per_case_csv.name}, {files.summary_csv.name}, "
          f"{files.summary_markdown.name}, {files.boxplot_png.name}")
    return 0
