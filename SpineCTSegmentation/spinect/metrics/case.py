"""All metrics of one case: per class, a label map prediction against its label map truth."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from spinect.metrics.distance import surface_distances_mm
from spinect.metrics.overlap import overlap_scores

__all__ = ["ClassMetrics", "METRIC_NAMES", "label_map_metrics"]

#: Metric fields of :class:`ClassMetrics`, in the row order of SPINECT's Table 2 (then distances).
METRIC_NAMES: tuple[str, ...] = ("pixel_accuracy", "iou", "dice", "hd95_mm", "assd_mm")


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one class in one case (one row of the per-case table).

    Attributes:
        case_id: case identifier (file name without suffixes).
        class_name: class name, e.g. ``"bone"``.
        label_value: voxel value of the class in the label maps.
        pixel_accuracy: |P ∩ T| / |T| in [0, 1] (SPINECT's pixel accuracy).
        iou: |P ∩ T| / |P ∪ T| in [0, 1].
        dice: 2 |P ∩ T| / (|P| + |T|) in [0, 1].
        hd95_mm: 95th-percentile symmetric Hausdorff distance in mm (NaN if one mask is empty).
        assd_mm: average symmetric surface distance in mm (NaN if one mask is empty).
        n_pred_voxels: |P|.
        n_true_voxels: |T|.
    """

    case_id: str
    class_name: str
    label_value: int
    pixel_accuracy: float
    iou: float
    dice: float
    hd95_mm: float
    assd_mm: float
    n_pred_voxels: int
    n_true_voxels: int

    def as_dict(self) -> dict[str, object]:
        """Field name -> value, in declaration order (one CSV row)."""
        return asdict(self)


def label_map_metrics(
    pred_labels: np.ndarray,
    true_labels: np.ndarray,
    *,
    spacing_zyx_mm: Sequence[float],
    class_names: Sequence[str] = ("background", "bone", "nerve"),
    case_id: str = "",
) -> list[ClassMetrics]:
    """Per-class metrics of a predicted label map against the true one (background skipped).

    Class ``i`` is the voxel value ``i`` and is named ``class_names[i]``; value 0 is background
    and gets no row. Empty-mask conventions: see :mod:`spinect.metrics.overlap` and
    :mod:`spinect.metrics.distance`.

    Args:
        pred_labels: predicted label map, shape (Z, Y, X), integer values in [0, len(class_names)).
        true_labels: true label map, same shape and grid.
        spacing_zyx_mm: voxel size (z, y, x) in mm.
        class_names: names of the voxel values 0, 1, ...; index 0 is background.
        case_id: written into every row.

    Returns:
        One :class:`ClassMetrics` per foreground class, in label-value order.

    Raises:
        ValueError: shapes differ, or a map holds a value with no class name.
    """
    pred = np.asarray(pred_labels)
    true = np.asarray(true_labels)
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {true.shape}")
    for name, labels in (("prediction", pred), ("truth", true)):
        _check_label_values(labels, len(class_names), name)
    rows = []
    for value in range(1, len(class_names)):
        pred_mask, true_mask = pred == value, true == value
        overlap = overlap_scores(pred_mask, true_mask)
        distances = surface_distances_mm(pred_mask, true_mask, spacing_zyx_mm=spacing_zyx_mm)
        rows.append(
            ClassMetrics(
                case_id=case_id,
                class_name=class_names[value],
                label_value=value,
                pixel_accuracy=overlap.pixel_accuracy,
                iou=overlap.iou,
                dice=overlap.dice,
                hd95_mm=distances.hd95_mm,
                assd_mm=distances.assd_mm,
                n_pred_voxels=overlap.n_pred_voxels,
                n_true_voxels=overlap.n_true_voxels,
            )
        )
    return rows


def _check_label_values(labels: np.ndarray, n_classes: int, what: str) -> None:
    # min/max first: a full CT label map is too big to np.unique on every call.
    in_range = labels.size == 0 or (labels.min() >= 0 and labels.max() < n_classes)
    whole = labels.dtype.kind in "biu" or bool(np.all(np.mod(labels, 1) == 0))
    if in_range and whole:
        return
    values = np.unique(labels)
    bad = [v for v in values.tolist() if v < 0 or v >= n_classes or v != int(v)]
    raise ValueError(
        f"{what} holds label values {bad[:5]} but only 0..{n_classes - 1} are named classes; "
        "pass a label map (not an image) or give matching class names"
    )
