"""Ensemble inference on the network grid: several models and/or flip test-time augmentation.

Each member is one (network, flip) pair; its probabilities are computed on the flipped volume
and flipped back, so a flip-equivariant network gives identical members (zero uncertainty).
Flips are over the two in-plane axes (y, x), the ones SPINECT augments with during training.
Memory stays at one probability sum plus one uint8 label map per member.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from spinect.inference import predict_probabilities
from spinect.uncertainty.measures import label_vote_entropy, predictive_entropy, volume_variation_coefficient

__all__ = ["EnsembleOutput", "TTA_FLIPS_ZYX", "predict_ensemble"]

#: Flip sets over (z, y, x) array axes: identity, x, y, and both in-plane axes.
TTA_FLIPS_ZYX: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (1, 2))


@dataclass(frozen=True)
class EnsembleOutput:
    """Fused prediction and uncertainty on the network grid.

    Attributes:
        probabilities: (C, Z, Y, X) float32 fused class probabilities.
        votes: (N, Z, Y, X) uint8 argmax label of each member.
        vote_entropy: (Z, Y, X) float32 SepNet eq. 11 entropy of the votes, nats.
        predictive_entropy: (Z, Y, X) float32 entropy of ``probabilities``, nats.
        vvc: {label value: sigma/mu of the members' volumes}.
    """

    probabilities: np.ndarray
    votes: np.ndarray
    vote_entropy: np.ndarray
    predictive_entropy: np.ndarray
    vvc: dict[int, float]

    @property
    def members(self) -> int:
        return int(self.votes.shape[0])


def predict_ensemble(
    volume_zyx: np.ndarray,
    networks: Sequence[torch.nn.Module],
    *,
    tta: bool = True,
    class_weights: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
    **predict_kwargs,
) -> EnsembleOutput:
    """Run every (network, flip) member and fuse them.

    Args:
        volume_zyx: (Z, Y, X) normalised float32 volume on the network grid.
        networks: one or more networks with the same classes.
        tta: add the in-plane flips of :data:`TTA_FLIPS_ZYX` for every network.
        class_weights: optional (networks, C) weights for SepNet's class-wise fusion (eq. 9);
            each network's weight applies to all its flips.
        progress: ``progress(done_windows, total_windows)`` over all members.
        **predict_kwargs: passed to :func:`spinect.inference.predict_probabilities`.
    """
    flips = TTA_FLIPS_ZYX if tta else ((),)
    members = [(n, f) for n in range(len(networks)) for f in flips]
    volume = np.asarray(volume_zyx, dtype=np.float32)
    votes = np.empty((len(members),) + volume.shape, dtype=np.uint8)
    total = None
    weight_sum = None
    for m, (net_index, axes) in enumerate(members):
        member_volume = np.ascontiguousarray(np.flip(volume, axes)) if axes else volume
        probs = predict_probabilities(member_volume, networks[net_index], progress=_offset(progress, m, len(members)), **predict_kwargs)
        if axes:
            probs = torch.flip(probs, dims=[a + 1 for a in axes])
        probs = probs.numpy()
        votes[m] = probs.argmax(axis=0)
        w = np.ones(probs.shape[0], np.float32) if class_weights is None else np.asarray(class_weights, np.float32)[net_index]
        weighted = probs * w[:, None, None, None]
        total = weighted if total is None else total + weighted
        weight_sum = w.copy() if weight_sum is None else weight_sum + w
    fused = total / weight_sum[:, None, None, None]
    fused /= np.clip(fused.sum(axis=0, keepdims=True), 1e-12, None)
    num_classes = fused.shape[0]
    return EnsembleOutput(
        probabilities=fused,
        votes=votes,
        vote_entropy=label_vote_entropy(votes, num_classes=num_classes),
        predictive_entropy=predictive_entropy(fused),
        vvc=volume_variation_coefficient(votes, num_classes=num_classes),
    )


def _offset(progress, member: int, members: int):
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(member * total + done, members * total)

    return report
