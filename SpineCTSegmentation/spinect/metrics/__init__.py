"""Segmentation metrics (SPINECT's pixel accuracy, IoU, Dice; HD95, ASSD in mm) and evaluation reports."""

from spinect.metrics.case import METRIC_NAMES, ClassMetrics, label_map_metrics
from spinect.metrics.distance import SurfaceDistances, surface_distances_mm
from spinect.metrics.evaluation import (
    EvaluationFiles,
    EvaluationResult,
    ImageSource,
    check_report_folder,
    check_same_grid,
    evaluate_predictions,
    write_evaluation_report,
)
from spinect.metrics.overlap import OverlapScores, overlap_scores
from spinect.metrics.pairing import IMAGE_SUFFIXES, case_id_from_path, list_image_files, match_case_files
from spinect.metrics.plot import plot_metric_boxplots
from spinect.metrics.report import (
    format_summary_markdown,
    write_case_csv,
    write_summary_csv,
    write_summary_markdown,
)
from spinect.metrics.summary import MetricSummary, summarize_metrics, summarize_values

__all__ = [
    "METRIC_NAMES",
    "ClassMetrics",
    "label_map_metrics",
    "SurfaceDistances",
    "surface_distances_mm",
    "OverlapScores",
    "overlap_scores",
    "MetricSummary",
    "summarize_values",
    "summarize_metrics",
    "IMAGE_SUFFIXES",
    "case_id_from_path",
    "list_image_files",
    "match_case_files",
    "format_summary_markdown",
    "write_case_csv",
    "write_summary_csv",
    "write_summary_markdown",
    "plot_metric_boxplots",
    "ImageSource",
    "EvaluationResult",
    "EvaluationFiles",
    "check_same_grid",
    "check_report_folder",
    "evaluate_predictions",
    "write_evaluation_report",
]
