"""``spinect evaluate``: score predicted label maps against label maps and write a report.

Only parses arguments and calls :mod:`spinect.metrics`. Two modes share :func:`run_evaluation`:
files (``--pred P --labels L``: predictions that already exist) and model-on-dataset
(``--model M --data DATA``: each case of a dataset folder is segmented with
:func:`spinect.api.segment`, in memory, then scored against its label).
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
    parser.add_argument("--pred", type=Path, help="prediction label map, or a folder of them")
    parser.add_argument("--labels", type=Path, help="manual label map, or a folder of them")
    parser.add_argument("--model", type=Path, help="model-on-dataset mode: model file to segment --data with")
    parser.add_argument("--data", type=Path, help="model-on-dataset mode: dataset folder (manifest.json or <id>_ct/<id>_labels pairs)")
    parser.add_argument("--cases", default=None, help="model-on-dataset mode: comma-separated case ids to use (default: all)")
    parser.add_argument("--device", default="auto", help="model-on-dataset mode: auto, cpu or cuda")
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
    parser.add_argument("--overwrite", action="store_true", help="replace a report already in --out (refused by default)")
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
    if args.data is not None or args.model is not None:
        if args.pred is not None or args.labels is not None:
            raise InputError("give either --pred/--labels (score files) or --model/--data (segment a dataset), not both")
        if args.data is None:
            raise InputError("--model needs --data DATASET_FOLDER to segment")
        pairs = _model_pairs(args.model, args.data, cases=args.cases, device=args.device)
    elif args.pred is None or args.labels is None:
        raise InputError("give --pred PRED --labels LABELS, or --model MODEL --data DATASET")
    else:
        pairs = match_case_files(args.pred, args.labels)
    check_report_folder(args.out, overwrite=args.overwrite)
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


class _ModelPairs:
    """Lazily segments each dataset case with a model: yields (case_id, labels image, label path)."""

    def __init__(self, model: Path | None, cases, device: str) -> None:
        self._model, self._cases, self._device = model, cases, device

    def __len__(self) -> int:
        return len(self._cases)

    def __iter__(self):
        from spinect.api import segment

        for case in self._cases:
            result = segment(case.image, model=self._model, device=self._device)
            yield case.id, result.labels, case.label


def _model_pairs(model: Path | None, data: Path, *, cases: str | None, device: str) -> _ModelPairs:
    from spinect.api import resolve_model_path
    from spinect.errors import InputError
    from spinect.manifest import discover_cases

    found = discover_cases(data)
    if cases:
        wanted = [c.strip() for c in cases.split(",") if c.strip()]
        by_id = {c.id: c for c in found}
        missing = [w for w in wanted if w not in by_id]
        if missing:
            raise InputError(f"case ids {missing} are not in {data} (it has {sorted(by_id)[:10]}...)")
        found = [by_id[w] for w in wanted]
    return _ModelPairs(resolve_model_path(model), found, device)
