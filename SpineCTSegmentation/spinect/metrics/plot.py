"""Box plot of per-case Dice and HD95 per class: the picture beside the evaluation tables."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display: runs on servers and inside Slicer's subprocess
import matplotlib.pyplot as plt  # noqa: E402

from spinect.io.atomic import atomic_output  # noqa: E402
from spinect.metrics.case import ClassMetrics  # noqa: E402

__all__ = ["plot_metric_boxplots"]

_PANELS = (("dice", "Dice"), ("hd95_mm", "HD95 (mm)"))


def plot_metric_boxplots(
    rows: Sequence[ClassMetrics],
    path: str | os.PathLike,
    *,
    class_names: Sequence[str],
    dpi: int = 120,
) -> Path:
    """Write a PNG with one panel per metric (Dice, HD95), one box per class, cases as dots.

    Undefined values (NaN) are left out of the boxes; each class's label says how many cases
    are shown. The file is written atomically.

    Args:
        rows: per-case, per-class metrics.
        path: output PNG path.
        class_names: foreground classes, in box order.
        dpi: resolution of the PNG.

    Returns:
        ``path``.
    """
    fig, axes = plt.subplots(1, len(_PANELS), figsize=(4.0 * len(_PANELS), 4.0))
    try:
        for axis, (metric, title) in zip(axes, _PANELS):
            data = [_defined(rows, metric, name) for name in class_names]
            labels = [f"{name}\n(n={len(values)})" for name, values in zip(class_names, data)]
            axis.boxplot(data, showmeans=True, showfliers=False)  # the dots show every case
            axis.set_xticks(range(1, len(labels) + 1), labels)
            for position, values in enumerate(data, start=1):
                axis.scatter([position] * len(values), values, s=12, alpha=0.6, zorder=3)
            axis.set_title(title)
            axis.grid(axis="y", alpha=0.3)
        fig.suptitle("Per-case segmentation metrics")
        fig.tight_layout()
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return Path(path)


def _defined(rows: Sequence[ClassMetrics], metric: str, class_name: str) -> list[float]:
    values = (getattr(row, metric) for row in rows if row.class_name == class_name)
    return [v for v in values if not math.isnan(v)]
