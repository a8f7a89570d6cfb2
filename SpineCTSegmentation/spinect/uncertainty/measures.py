"""Uncertainty measures over an ensemble of predictions (3D-SepNet, Tang et al., seeds/002 §3.4).

- :func:`label_vote_entropy`: voxel-wise entropy of the N members' label votes (SepNet eq. 11),
  ``H(x) = -sum_m p_m(x) ln p_m(x)`` with ``p_m`` the frequency of the m-th label among the votes.
  With N members it takes at most N distinct levels (SepNet observed 6 levels for 6 models).
- :func:`predictive_entropy`: entropy of the mean probabilities, ``-sum_c p_c ln p_c`` (nats).
- :func:`volume_variation_coefficient`: structure-wise sigma/mu of the per-member volumes. SepNet's
  eq. 12 prints mu/sigma, which contradicts its own text ("a high VVC indicates inaccurate
  segmentation", "DSC tends to be smaller when VVC grows"): mu/sigma would be largest for the
  most stable structures. We use the coefficient of variation sigma/mu, as the text means.
- :func:`fuse_probabilities`: mean, or SepNet's class-wise weighted fusion (eq. 9).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "label_vote_entropy",
    "predictive_entropy",
    "volume_variation_coefficient",
    "fuse_probabilities",
    "sepnet_rank_weights",
]


def label_vote_entropy(label_votes: np.ndarray, *, num_classes: int) -> np.ndarray:
    """SepNet eq. 11 on N label maps.

    Args:
        label_votes: (N, Z, Y, X) integer labels, one map per ensemble member.
        num_classes: number of label values (labels are in ``range(num_classes)``).

    Returns:
        (Z, Y, X) float32 entropy in nats; 0 where all members agree, ln(min(N, C)) at most.
    """
    votes = np.asarray(label_votes)
    n_members = votes.shape[0]
    entropy = np.zeros(votes.shape[1:], dtype=np.float32)
    for cls in range(num_classes):
        freq = (votes == cls).sum(axis=0, dtype=np.float32) / n_members
        nonzero = freq > 0
        entropy[nonzero] -= freq[nonzero] * np.log(freq[nonzero])
    return entropy


def predictive_entropy(mean_probabilities: np.ndarray) -> np.ndarray:
    """Entropy of (C, Z, Y, X) mean class probabilities, nats, (Z, Y, X) float32."""
    p = np.clip(np.asarray(mean_probabilities, dtype=np.float32), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=0).astype(np.float32)


def volume_variation_coefficient(label_votes: np.ndarray, *, num_classes: int, voxel_volume_mm3: float = 1.0) -> dict[int, float]:
    """sigma/mu of each foreground class's volume over the N members (population SD).

    Returns:
        {label value: VVC}; NaN for a class that no member predicts (mu = 0).
    """
    votes = np.asarray(label_votes)
    result = {}
    for cls in range(1, num_classes):
        volumes = (votes == cls).reshape(votes.shape[0], -1).sum(axis=1) * voxel_volume_mm3
        mean = float(volumes.mean())
        result[cls] = float(volumes.std() / mean) if mean > 0 else float("nan")
    return result


def sepnet_rank_weights(validation_dice: np.ndarray, *, rank_weights: Sequence[float] = (5, 4, 3, 1, 1, 1)) -> np.ndarray:
    """Per-member, per-class weights from validation Dice ranks (SepNet: 5, 4, 3, 1, 1, 1).

    Args:
        validation_dice: (N, C) Dice of each member on each class (validation set).

    Returns:
        (N, C) weights: the member with the i-th highest Dice for class c gets ``rank_weights[i]``
        (the last weight repeats for members beyond the list).
    """
    dice = np.asarray(validation_dice, dtype=float)
    weights = np.empty_like(dice)
    for cls in range(dice.shape[1]):
        order = np.argsort(-dice[:, cls], kind="stable")
        for rank, member in enumerate(order):
            weights[member, cls] = rank_weights[min(rank, len(rank_weights) - 1)]
    return weights


def fuse_probabilities(member_probabilities: Sequence[np.ndarray], *, class_weights: np.ndarray | None = None) -> np.ndarray:
    """Fuse N (C, Z, Y, X) probability maps.

    Without ``class_weights``: the plain mean. With (N, C) weights: SepNet eq. 9,
    ``P_c = sum_i w_c^i P_c^i / sum_i w_c^i`` per class (the result is then renormalised over
    classes so it stays a distribution; eq. 9 alone need not sum to 1).
    """
    stack = np.stack([np.asarray(p, dtype=np.float32) for p in member_probabilities])
    if class_weights is None:
        return stack.mean(axis=0)
    w = np.asarray(class_weights, dtype=np.float32)
    if w.shape != stack.shape[:2]:
        raise ValueError(f"class_weights must have shape (members, classes) = {stack.shape[:2]}, got {w.shape}")
    fused = (stack * w[:, :, None, None, None]).sum(axis=0) / w.sum(axis=0)[:, None, None, None]
    return fused / np.clip(fused.sum(axis=0, keepdims=True), 1e-12, None)
