"""Overlap scores of one class: pixel accuracy, IoU and Dice as SPINECT defines them.

SPINECT (Fan et al., AJNR 2019, "Data Preprocessing and Segmentation Assessment"; Table 2)
defines, with P the predicted voxels and T the true (manually labelled) voxels of a class::

    Dice           = 2 |P ∩ T| / (|P| + |T|)
    IoU            = |P ∩ T| / |P ∪ T|
    Pixel accuracy = |P ∩ T| / |T|          (the class's recall / sensitivity)

The scores come from exact integer voxel counts (no float one-hot tensors, so a full CT costs
no extra memory); ``Testing/test_metrics.py`` checks them against MONAI's ``compute_dice`` and
``compute_iou``.

Empty masks (documented convention, also used by :mod:`spinect.metrics.distance`):
both P and T empty -> every score is 1 (nothing to find, nothing found); exactly one of them
empty -> every score is 0 (a structure missed entirely, or found where there is none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["OverlapScores", "overlap_scores"]


@dataclass(frozen=True)
class OverlapScores:
    """Overlap of one binary prediction with its truth.

    Attributes:
        pixel_accuracy: |P ∩ T| / |T|, in [0, 1] (SPINECT's "pixel accuracy").
        iou: |P ∩ T| / |P ∪ T|, in [0, 1].
        dice: 2 |P ∩ T| / (|P| + |T|), in [0, 1].
        n_pred_voxels: |P|.
        n_true_voxels: |T|.
        n_overlap_voxels: |P ∩ T|.
    """

    pixel_accuracy: float
    iou: float
    dice: float
    n_pred_voxels: int
    n_true_voxels: int
    n_overlap_voxels: int


def overlap_scores(pred_mask: np.ndarray, true_mask: np.ndarray) -> OverlapScores:
    """Pixel accuracy, IoU and Dice of one class (SPINECT's definitions, see module docstring).

    Args:
        pred_mask: predicted mask, shape (Z, Y, X) (any shape), bool or 0/1 integers.
        true_mask: true mask, same shape as ``pred_mask``.

    Returns:
        The scores and the voxel counts they come from.

    Raises:
        ValueError: the masks differ in shape.
    """
    pred = np.asarray(pred_mask, dtype=bool)
    true = np.asarray(true_mask, dtype=bool)
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {true.shape}")
    n_pred = int(np.count_nonzero(pred))
    n_true = int(np.count_nonzero(true))
    n_both = int(np.count_nonzero(pred & true))
    if n_pred == 0 and n_true == 0:
        return OverlapScores(1.0, 1.0, 1.0, 0, 0, 0)
    n_union = n_pred + n_true - n_both
    return OverlapScores(
        pixel_accuracy=n_both / n_true if n_true else 0.0,
        iou=n_both / n_union,
        dice=2.0 * n_both / (n_pred + n_true),
        n_pred_voxels=n_pred,
        n_true_voxels=n_true,
        n_overlap_voxels=n_both,
    )
