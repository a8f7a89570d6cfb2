"""Bounding boxes of masks, for doing postprocessing work only where a label is."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["bounding_box"]


def bounding_box(mask_zyx: np.ndarray, *, margin: Sequence[int]) -> tuple[slice, ...] | None:
    """Bounding box of a mask grown by ``margin`` voxels per axis (clipped), or None if it is empty.

    Found from ``any`` projections onto each axis, not ``np.nonzero`` (which lists every voxel).
    """
    box = []
    for axis, (m, n) in enumerate(zip(margin, mask_zyx.shape)):
        present = np.flatnonzero(mask_zyx.any(axis=tuple(a for a in range(mask_zyx.ndim) if a != axis)))
        if len(present) == 0:
            return None
        box.append(slice(max(0, int(present[0]) - int(m)), min(n, int(present[-1]) + int(m) + 1)))
    return tuple(box)
