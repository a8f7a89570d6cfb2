"""Summary over cases, per class and metric: mean ± SD (min–max), as in SPINECT's Table 2.

Undefined values (NaN: a surface distance where exactly one mask is empty) are left out of the
statistics and counted in ``n_undefined``, so one missed structure cannot turn a mean into NaN
while still being visible in the report. The SD is the sample SD (``ddof=1``); it is NaN for
fewer than two defined values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from spinect.metrics.case import METRIC_NAMES, ClassMetrics

__all__ = ["MetricSummary", "summarize_values", "summarize_metrics"]


@dataclass(frozen=True)
class MetricSummary:
    """Statistics of one metric of one class over cases (undefined values excluded).

    Attributes:
        class_name: class name, e.g. ``"nerve"``.
        metric: metric field name of :class:`ClassMetrics`, e.g. ``"dice"`` or ``"hd95_mm"``.
        mean: mean of the defined values (NaN if none).
        sd: sample standard deviation, ddof=1 (NaN if fewer than 2 defined values).
        minimum: smallest defined value (NaN if none).
        maximum: largest defined value (NaN if none).
        n: number of defined values.
        n_undefined: number of NaN values left out.
    """

    class_name: str
    metric: str
    mean: float
    sd: float
    minimum: float
    maximum: float
    n: int
    n_undefined: int


def summarize_values(values: Iterable[float], *, class_name: str = "", metric: str = "") -> MetricSummary:
    """Mean, sample SD, min and max of ``values``, NaN left out and counted.

    Args:
        values: one value per case (floats; NaN = undefined).
        class_name: copied into the result.
        metric: copied into the result.

    Returns:
        The summary; statistics are NaN when there are too few defined values.

    Raises:
        ValueError: a value is infinite (the metrics never produce inf; it would hide the mean).
    """
    array = np.asarray(list(values), dtype=float)
    if np.isinf(array).any():
        raise ValueError(f"{metric} of {class_name} holds an infinite value; summaries need finite or NaN values")
    defined = array[~np.isnan(array)]
    n = int(defined.size)
    nan = math.nan
    return MetricSummary(
        class_name=class_name,
        metric=metric,
        mean=float(defined.mean()) if n else nan,
        sd=float(defined.std(ddof=1)) if n >= 2 else nan,
        minimum=float(defined.min()) if n else nan,
        maximum=float(defined.max()) if n else nan,
        n=n,
        n_undefined=int(array.size - n),
    )


def summarize_metrics(
    rows: Sequence[ClassMetrics],
    *,
    class_names: Sequence[str],
    metrics: Sequence[str] = METRIC_NAMES,
) -> list[MetricSummary]:
    """Summaries of every (metric, class) pair over the cases in ``rows``.

    Args:
        rows: per-case, per-class metrics (e.g. from :func:`spinect.metrics.label_map_metrics`).
        class_names: the foreground classes to summarize, in column order (background excluded).
        metrics: metric field names, in row order.

    Returns:
        One :class:`MetricSummary` per metric and class, metric-major (Table 2's row order).
    """
    summaries = []
    for metric in metrics:
        for class_name in class_names:
            values = [getattr(row, metric) for row in rows if row.class_name == class_name]
            summaries.append(summarize_values(values, class_name=class_name, metric=metric))
    return summaries
