"""Evaluation tables: per-case CSV, summary CSV and a Markdown table shaped like SPINECT's Table 2.

CSV files hold raw values (overlap scores as fractions in [0, 1], distances in mm, ``nan`` for
undefined); the Markdown table is for people: overlap scores in percent like the paper
("94.05 ± 6.68 (82.0–99.9)"), distances in mm. Every file is written atomically.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from spinect.io.atomic import atomic_output
from spinect.metrics.case import METRIC_NAMES, ClassMetrics
from spinect.metrics.summary import MetricSummary

__all__ = [
    "METRIC_LABELS",
    "write_case_csv",
    "write_summary_csv",
    "format_summary_markdown",
    "write_summary_markdown",
]

#: Row label and display scale (100 = percent) of each metric in the Markdown table.
METRIC_LABELS: dict[str, tuple[str, float]] = {
    "pixel_accuracy": ("Pixel accuracy (%)", 100.0),
    "iou": ("IoU (%)", 100.0),
    "dice": ("Dice (%)", 100.0),
    "hd95_mm": ("HD95 (mm)", 1.0),
    "assd_mm": ("ASSD (mm)", 1.0),
}

_SUMMARY_COLUMNS = ("class_name", "metric", "mean", "sd", "minimum", "maximum", "n", "n_undefined")


def write_case_csv(rows: Sequence[ClassMetrics], path: str | os.PathLike) -> Path:
    """Write one line per case and class (all :class:`ClassMetrics` fields) to ``path``, atomically."""
    columns = [f.name for f in fields(ClassMetrics)]
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(row.as_dict() for row in rows)
    return Path(path)


def write_summary_csv(summaries: Sequence[MetricSummary], path: str | os.PathLike) -> Path:
    """Write one line per (class, metric) summary to ``path``, atomically."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(_SUMMARY_COLUMNS)
        for s in summaries:
            writer.writerow([getattr(s, name) for name in _SUMMARY_COLUMNS])
    return Path(path)


def format_summary_markdown(
    summaries: Sequence[MetricSummary],
    *,
    class_names: Sequence[str],
    n_cases: int,
    metrics: Sequence[str] = METRIC_NAMES,
) -> str:
    """Markdown table: rows = metrics, columns = classes, cells "mean ± SD (min–max)".

    Args:
        summaries: from :func:`spinect.metrics.summarize_metrics`.
        class_names: foreground classes, in column order.
        n_cases: number of cases evaluated (for the caption).
        metrics: metric field names, in row order.

    Returns:
        The caption, the table and footnotes (undefined values), ending with a newline.
    """
    by_key = {(s.metric, s.class_name): s for s in summaries}
    lines = [
        f"Segmentation accuracy in {n_cases} case{'s' if n_cases != 1 else ''} (mean ± SD (min–max) over cases)",
        "",
        "| Metric | " + " | ".join(class_names) + " |",
        "|---|" + "---|" * len(class_names),
    ]
    notes = []
    for metric in metrics:
        label, scale = METRIC_LABELS.get(metric, (metric, 1.0))
        cells = []
        for class_name in class_names:
            summary = by_key[(metric, class_name)]
            cells.append(_format_cell(summary, scale))
            if summary.n_undefined:
                notes.append(
                    f"- {label.split(' (')[0]} of {class_name}: {summary.n_undefined} of "
                    f"{summary.n + summary.n_undefined} cases undefined (one mask empty), left out."
                )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Pixel accuracy = |P ∩ T| / |T|, IoU = |P ∩ T| / |P ∪ T|, Dice = 2|P ∩ T| / (|P| + |T|) "
              "(P predicted, T true voxels; SPINECT's definitions). HD95, ASSD: MONAI surface distances in mm."]
    if notes:
        lines += [""] + notes
    return "\n".join(lines) + "\n"


def write_summary_markdown(
    summaries: Sequence[MetricSummary],
    path: str | os.PathLike,
    *,
    class_names: Sequence[str],
    n_cases: int,
) -> Path:
    """Write :func:`format_summary_markdown` to ``path``, atomically."""
    text = format_summary_markdown(summaries, class_names=class_names, n_cases=n_cases)
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def _format_cell(summary: MetricSummary, scale: float) -> str:
    if summary.n == 0:
        return "n/a"
    mean, lo, hi = summary.mean * scale, summary.minimum * scale, summary.maximum * scale
    sd = "n/a" if math.isnan(summary.sd) else f"{summary.sd * scale:.2f}"
    return f"{mean:.2f} ± {sd} ({lo:.1f}–{hi:.1f})"
