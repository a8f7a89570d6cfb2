"""Evaluate predicted label maps against true label maps, case by case, and write the report.

This is the API behind ``spinect evaluate``. It takes predictions that already exist (files or
in-memory SimpleITK images), so a model-on-dataset evaluation only has to produce
``(case_id, predicted image, label path)`` triples and call :func:`evaluate_predictions`.

Grid policy (the safer choice), per case:

1. Same grid (same size, spacing within 1e-4 relative, origin within 1 % of the smallest voxel,
   direction cosines within 1e-4): used as is.
2. Same voxel lattice but another extent (same spacing and direction, origins a whole number of
   voxels apart; 3D Slicer crops a ``.seg.nrrd`` to its segments): both maps are padded with
   background onto the box that holds both. Exact: no voxel is interpolated or dropped.
3. Anything else is an :class:`~spinect.errors.InputError`, because a silent resampling would hide
   a prediction of the wrong case or the wrong export. ``resample_prediction=True`` opts in to
   nearest-neighbour resampling of the prediction onto the label grid, with a logged warning.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, Union

import numpy as np
import SimpleITK as sitk

from spinect.errors import InputError, OutputError
from spinect.io import read_labelmap
from spinect.io.atomic import check_output_path
from spinect.metrics.case import ClassMetrics, label_map_metrics
from spinect.metrics.plot import plot_metric_boxplots
from spinect.metrics.report import write_case_csv, write_summary_csv, write_summary_markdown
from spinect.metrics.summary import MetricSummary, summarize_metrics

__all__ = [
    "ImageSource",
    "EvaluationResult",
    "EvaluationFiles",
    "check_same_grid",
    "evaluate_predictions",
    "check_report_folder",
    "write_evaluation_report",
]

logger = logging.getLogger(__name__)

#: A label map given as a file path or as an in-memory SimpleITK image.
ImageSource = Union[str, os.PathLike, sitk.Image]

#: progress(done, total, case_id); total is None when ``pairs`` has no length.
ProgressCallback = Callable[[int, Union[int, None], str], None]


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics of every case and their summary.

    Attributes:
        class_names: foreground classes evaluated, in column order (background excluded).
        case_ids: evaluated cases, in input order.
        rows: one :class:`ClassMetrics` per case and class.
        summaries: one :class:`MetricSummary` per metric and class.
    """

    class_names: tuple[str, ...]
    case_ids: tuple[str, ...]
    rows: tuple[ClassMetrics, ...]
    summaries: tuple[MetricSummary, ...]

    def summary(self, metric: str, class_name: str) -> MetricSummary:
        """The summary of ``metric`` (e.g. ``"dice"``) for ``class_name`` (e.g. ``"nerve"``)."""
        for s in self.summaries:
            if s.metric == metric and s.class_name == class_name:
                return s
        raise KeyError(f"no summary for metric {metric!r} of class {class_name!r}")


@dataclass(frozen=True)
class EvaluationFiles:
    """Paths written by :func:`write_evaluation_report`."""

    per_case_csv: Path
    summary_csv: Path
    summary_markdown: Path
    boxplot_png: Path


def evaluate_predictions(
    pairs: Iterable[tuple[str, ImageSource, ImageSource]],
    *,
    class_names: Sequence[str] = ("background", "bone", "nerve"),
    resample_prediction: bool = False,
    progress: ProgressCallback | None = None,
) -> EvaluationResult:
    """Metrics of each predicted label map against its true label map, and their summary.

    Args:
        pairs: (case_id, prediction, label) per case; prediction and label are label-map files
            (NIfTI, NRRD, Slicer ``.seg.nrrd``...) or SimpleITK images whose voxel value ``i``
            is class ``class_names[i]``. Consumed lazily, one case in memory at a time.
        class_names: names of voxel values 0, 1, ...; value 0 is background and is not scored.
        resample_prediction: resample a prediction that is off its label's grid (nearest
            neighbour) instead of refusing it.
        progress: called after each case with (done, total or None, case_id).

    Returns:
        Per-case metrics and per-class summaries.

    Raises:
        InputError: no case, a repeated case id, an unreadable file, a grid mismatch, or label
            values without a class name.
    """
    class_names = tuple(class_names)
    if len(class_names) < 2:
        raise InputError(f"class names {class_names} need background and at least one class")
    total = len(pairs) if hasattr(pairs, "__len__") else None  # type: ignore[arg-type]
    rows: list[ClassMetrics] = []
    case_ids: list[str] = []
    for case_id, pred_source, label_source in pairs:
        if case_id in case_ids:
            raise InputError(f"case id {case_id!r} appears twice; give each case once")
        rows += _evaluate_case(case_id, pred_source, label_source, class_names, resample_prediction)
        case_ids.append(case_id)
        if progress is not None:
            progress(len(case_ids), total, case_id)
    if not case_ids:
        raise InputError("no case to evaluate; give at least one prediction and label pair")
    foreground = class_names[1:]
    summaries = summarize_metrics(rows, class_names=foreground)
    return EvaluationResult(foreground, tuple(case_ids), tuple(rows), tuple(summaries))


def _evaluate_case(
    case_id: str,
    pred_source: ImageSource,
    label_source: ImageSource,
    class_names: tuple[str, ...],
    resample_prediction: bool,
) -> list[ClassMetrics]:
    label = _load_labelmap(label_source, class_names, what=f"label of case {case_id}")
    pred = _load_labelmap(pred_source, class_names, what=f"prediction of case {case_id}")
    if not _same_grid(pred, label):
        pred, label = _onto_common_grid(pred, label, case_id=case_id, resample_prediction=resample_prediction)
    check_same_grid(pred, label, case_id=case_id)
    spacing_zyx_mm = tuple(reversed(label.GetSpacing()))
    try:
        return label_map_metrics(
            sitk.GetArrayViewFromImage(pred),
            sitk.GetArrayViewFromImage(label),
            spacing_zyx_mm=spacing_zyx_mm,
            class_names=class_names,
            case_id=case_id,
        )
    except ValueError as exc:
        raise InputError(f"case {case_id}: {exc}") from exc


def _load_labelmap(source: ImageSource, class_names: tuple[str, ...], *, what: str) -> sitk.Image:
    if isinstance(source, sitk.Image):
        image = source
    else:
        image = read_labelmap(source, class_names=class_names)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{what} must be a 3D single-component label map, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} components"
        )
    return image


def _grid_problems(pred: sitk.Image, label: sitk.Image) -> list[str]:
    problems = []
    if pred.GetSize() != label.GetSize():
        problems.append(f"size {pred.GetSize()} vs {label.GetSize()}")
    spacing_p, spacing_l = np.array(pred.GetSpacing()), np.array(label.GetSpacing())
    if not np.allclose(spacing_p, spacing_l, rtol=1e-4, atol=0):
        problems.append(f"spacing {tuple(spacing_p)} vs {tuple(spacing_l)} mm")
    origin_tol_mm = 0.01 * float(spacing_l.min())
    if np.abs(np.array(pred.GetOrigin()) - np.array(label.GetOrigin())).max() > origin_tol_mm:
        problems.append(f"origin {pred.GetOrigin()} vs {label.GetOrigin()} mm")
    if not np.allclose(pred.GetDirection(), label.GetDirection(), rtol=0, atol=1e-4):
        problems.append(f"direction {pred.GetDirection()} vs {label.GetDirection()}")
    return problems


def _same_grid(pred: sitk.Image, label: sitk.Image) -> bool:
    return not _grid_problems(pred, label)


def _onto_common_grid(
    pred: sitk.Image, label: sitk.Image, *, case_id: str, resample_prediction: bool
) -> tuple[sitk.Image, sitk.Image]:
    """Policy steps 2 and 3 of the module docstring; returns (pred, label), or both unchanged."""
    offset = _lattice_offset(pred, label)
    if offset is not None:
        logger.debug("case %s: prediction and label differ in extent only; padding both", case_id)
        lower = np.minimum(offset, 0)
        upper = np.maximum(offset + np.array(pred.GetSize()), np.array(label.GetSize()))
        box = sitk.Image([int(n) for n in upper - lower], sitk.sitkUInt8)
        box.SetSpacing(label.GetSpacing())
        box.SetDirection(label.GetDirection())
        box.SetOrigin(label.TransformIndexToPhysicalPoint([int(i) for i in lower]))
        return _nearest_onto(pred, box), _nearest_onto(label, box)
    if resample_prediction:
        logger.warning("case %s: prediction is off the label grid; resampling it (nearest neighbour)", case_id)
        return _nearest_onto(pred, label), label
    return pred, label


def _lattice_offset(pred: sitk.Image, label: sitk.Image) -> np.ndarray | None:
    """Index (x, y, z) of ``pred``'s first voxel in ``label``'s grid if both share one lattice, else None."""
    if not np.allclose(pred.GetSpacing(), label.GetSpacing(), rtol=1e-4, atol=0):
        return None
    if not np.allclose(pred.GetDirection(), label.GetDirection(), rtol=0, atol=1e-4):
        return None
    index = np.array(label.TransformPhysicalPointToContinuousIndex(pred.GetOrigin()))
    whole = np.round(index)
    return whole.astype(int) if np.abs(index - whole).max() <= 0.01 else None


def _nearest_onto(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """``image`` on ``reference``'s grid, nearest neighbour, background (0) outside."""
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())


def check_same_grid(pred: sitk.Image, label: sitk.Image, *, case_id: str = "") -> None:
    """Raise :class:`InputError` unless ``pred`` lies on ``label``'s grid (tolerances: module docstring).

    Args:
        pred: predicted label map.
        label: true label map.
        case_id: named in the message.
    """
    problems = _grid_problems(pred, label)
    if problems:
        raise InputError(
            f"case {case_id}: prediction and label are on different grids ({'; '.join(problems)}); "
            "predict on the label's image, or pass --resample-pred to resample the prediction (nearest neighbour)"
        )


def write_evaluation_report(result: EvaluationResult, out_dir: str | os.PathLike) -> EvaluationFiles:
    """Write per-case CSV, summary CSV, Markdown table and box plot PNG into ``out_dir``.

    The folder is created if missing; each file is written atomically (existing files of the
    same names are replaced).

    Args:
        result: from :func:`evaluate_predictions`.
        out_dir: output folder.

    Returns:
        The written paths.

    Raises:
        OutputError: ``out_dir`` is a file or cannot be created or written.
    """
    out = check_report_folder(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out}: {exc.strerror}; choose a writable folder") from exc
    files = EvaluationFiles(
        per_case_csv=out / "metrics_per_case.csv",
        summary_csv=out / "metrics_summary.csv",
        summary_markdown=out / "metrics_summary.md",
        boxplot_png=out / "metrics_boxplot.png",
    )
    write_case_csv(result.rows, files.per_case_csv)
    write_summary_csv(result.summaries, files.summary_csv)
    write_summary_markdown(
        result.summaries, files.summary_markdown, class_names=result.class_names, n_cases=len(result.case_ids)
    )
    plot_metric_boxplots(result.rows, files.boxplot_png, class_names=result.class_names)
    return files


#: Files of an evaluation report (:func:`write_evaluation_report`).
REPORT_FILE_NAMES: tuple[str, ...] = ("metrics_per_case.csv", "metrics_summary.csv", "metrics_summary.md",
                                      "metrics_boxplot.png")


def check_report_folder(out_dir: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Fail early (before scoring) if the report folder cannot be created or written; create nothing.

    Args:
        out_dir: the report folder.
        overwrite: False refuses a folder that already holds a report (any of :data:`REPORT_FILE_NAMES`).

    Raises:
        OutputError: ``out_dir`` is a file, it (or its nearest existing parent) is not writable,
            or it holds a report and ``overwrite`` is False.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {out} is a file; give a folder for the evaluation report")
    existing_report = [name for name in REPORT_FILE_NAMES if (out / name).exists()] if out.is_dir() else []
    if existing_report and not overwrite:
        raise OutputError(
            f"{out} already holds an evaluation report ({', '.join(existing_report)}); it will not be replaced. "
            "Give another --out folder, or --overwrite to replace it"
        )
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create output folder {out}: {existing} is a file; choose another folder")
    check_output_path(existing / "metrics_summary.md")
    return out
