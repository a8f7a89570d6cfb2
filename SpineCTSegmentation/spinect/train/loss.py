"""SPINECT's weighted softmax cross-entropy and its two-stage class-weight schedule.

SPINECT (section "Training"): ``L = -sum_x w(x) log softmax(a(x))_l(x)``, where ``w(x)`` is the
weight of voxel x's true class. Large weight differences help the rare nerve class but make
training unstable, so the weights background:bone:nerve are 1:1:20 "before epoch 40" and 1:1:2
for "the last 60 epochs" of 100: the switch comes after 40 % of training.

We average over voxels instead of summing (the same loss divided by the constant patch volume),
so the learning rate does not depend on the patch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["WeightSchedule", "weighted_cross_entropy", "SPINECT_EARLY_WEIGHTS", "SPINECT_LATE_WEIGHTS"]

#: Background, bone, nerve weights for the first 40 % of training.
SPINECT_EARLY_WEIGHTS: tuple[float, float, float] = (1.0, 1.0, 20.0)
#: ... and for the rest.
SPINECT_LATE_WEIGHTS: tuple[float, float, float] = (1.0, 1.0, 2.0)


@dataclass(frozen=True)
class WeightSchedule:
    """Class weights as a function of the (0-based) training step.

    Attributes:
        total_steps: number of training iterations.
        early / late: per-class weights before / from the switch.
        switch_fraction: share of training done with ``early`` (SPINECT: 40 of 100 epochs).
    """

    total_steps: int
    early: tuple[float, ...] = SPINECT_EARLY_WEIGHTS
    late: tuple[float, ...] = SPINECT_LATE_WEIGHTS
    switch_fraction: float = 0.4

    @property
    def switch_step(self) -> int:
        """First step that uses ``late``: ``round(switch_fraction * total_steps)``."""
        return int(round(self.switch_fraction * self.total_steps))

    def weights_at(self, step: int) -> tuple[float, ...]:
        """Class weights for 0-based ``step``."""
        return self.early if step < self.switch_step else self.late


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_weights: Sequence[float]) -> torch.Tensor:
    """Mean over voxels of ``w(true class) * -log softmax(logits)[true class]``.

    Args:
        logits: float (N, C, Z, Y, X) network output before softmax.
        target: int64 (N, Z, Y, X) class indices in [0, C).
        class_weights: C weights (background, bone, nerve).

    Returns:
        Scalar loss tensor.
    """
    weights = torch.as_tensor(tuple(class_weights), dtype=logits.dtype, device=logits.device)
    if weights.numel() != logits.shape[1]:
        raise ValueError(f"{weights.numel()} class weights for {logits.shape[1]} classes")
    per_voxel = F.cross_entropy(logits, target, reduction="none")
    return (weights[target] * per_voxel).mean()
