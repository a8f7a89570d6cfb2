"""SPINECT's data augmentation as MONAI dictionary transforms (image and label kept aligned).

SPINECT (section "Data augmentation"): 1) a small amount of white noise added to the patch,
2) vertical and horizontal flips with probability 0.5, 3) the voxel size randomly disturbed by
up to +-0.2 mm. On the 1 mm grid a voxel of size ``1 + d`` mm shows its content ``1 + d`` times
larger, so 3) is a zoom by an independent factor in [0.8, 1.2] per axis (MONAI ``RandZoomd``),
applied to a box somewhat larger than the patch (:func:`region_size_for`) and followed by a
centre crop to the patch, so that zooming out never brings padding into the patch.

The label always uses nearest-neighbour interpolation (torch's ``nearest-exact``, which samples
the same points as trilinear); the image uses the plan's rule (``linear`` -> trilinear,
``nearest``). Flips act on the two in-plane axes, y ("vertical") and
x ("horizontal"); noise only on the image.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from monai.transforms import CenterSpatialCropd, Compose, RandFlipd, RandGaussianNoised, RandZoomd

__all__ = ["build_augmentation", "region_size_for", "augment_patch", "MAX_VOXEL_JITTER_MM"]

#: SPINECT's voxel-size disturbance, mm (on a 1 mm grid: a zoom factor in [0.8, 1.2]).
MAX_VOXEL_JITTER_MM = 0.2

# torch's legacy "nearest" samples half a voxel off the trilinear grid; "nearest-exact" does not,
# so labels zoomed with it stay on the trilinearly zoomed image.
_IMAGE_MODES = {"linear": "trilinear", "nearest": "nearest-exact"}
_LABEL_MODE = "nearest-exact"


def region_size_for(patch_size_zyx: Sequence[int], *, max_jitter_mm: float = MAX_VOXEL_JITTER_MM, spacing_mm: float = 1.0) -> tuple[int, int, int]:
    """Box to sample so that a zoom by ``1 - max_jitter/spacing`` still fills the patch.

    Adds an even number of voxels per axis (the patch centre stays the box centre).
    """
    min_zoom = 1.0 - max_jitter_mm / spacing_mm
    if max_jitter_mm <= 0:
        return tuple(int(p) for p in patch_size_zyx)
    if min_zoom <= 0:
        raise ValueError(f"voxel jitter {max_jitter_mm} mm must be smaller than the spacing {spacing_mm} mm")
    return tuple(int(p) + 2 * (math.ceil((p / min_zoom - p) / 2) + 1) for p in patch_size_zyx)


def build_augmentation(
    patch_size_zyx: Sequence[int],
    *,
    image_interpolation: str = "linear",
    max_jitter_mm: float = MAX_VOXEL_JITTER_MM,
    spacing_mm: float = 1.0,
    flip_prob: float = 0.5,
    noise_std: float = 0.05,
    seed: int | None = None,
) -> Compose:
    """MONAI pipeline for ``{"image", "label"}`` channel-first (1, z, y, x) boxes.

    Args:
        patch_size_zyx: the network patch; inputs are :func:`region_size_for` boxes.
        image_interpolation: ``linear`` or ``nearest`` for the image's zoom.
        max_jitter_mm: voxel-size disturbance (0 = no zoom).
        spacing_mm: grid spacing the jitter is relative to.
        flip_prob: probability of each of the y and x flips.
        noise_std: upper bound of the white noise's standard deviation (normalised units; MONAI
            draws the std uniformly in [0, noise_std] per patch). 0 = no noise.
        seed: seeds the pipeline's random state.

    Returns:
        A :class:`monai.transforms.Compose` whose output ``image`` and ``label`` are (1, *patch).
    """
    if image_interpolation not in _IMAGE_MODES:
        raise ValueError(f"image_interpolation must be one of {sorted(_IMAGE_MODES)}, got {image_interpolation!r}")
    keys = ("image", "label")
    transforms = []
    if max_jitter_mm > 0:
        factor = max_jitter_mm / spacing_mm
        transforms.append(
            RandZoomd(
                keys, prob=1.0, min_zoom=[1.0 - factor] * 3, max_zoom=[1.0 + factor] * 3,
                mode=(_IMAGE_MODES[image_interpolation], _LABEL_MODE), padding_mode=("edge", "constant"),
                keep_size=True, dtype=(np.float32, np.float32),
            )
        )
    transforms.append(CenterSpatialCropd(keys, roi_size=tuple(int(p) for p in patch_size_zyx)))
    transforms.append(RandFlipd(keys, prob=flip_prob, spatial_axis=1))
    transforms.append(RandFlipd(keys, prob=flip_prob, spatial_axis=2))
    if noise_std > 0:
        transforms.append(RandGaussianNoised("image", prob=1.0, std=noise_std))
    pipeline = Compose(transforms)
    if seed is not None:
        pipeline.set_random_state(seed=seed)
    return pipeline


def augment_patch(pipeline: Compose, image_zyx: np.ndarray, labels_zyx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``pipeline`` on one box.

    Args:
        image_zyx: float32 (z, y, x) box.
        labels_zyx: integer (z, y, x) box of the same shape.

    Returns:
        (float32 (1, *patch) image tensor, int64 (*patch) label tensor).
    """
    data = pipeline({"image": image_zyx[None].astype(np.float32, copy=False), "label": labels_zyx[None].astype(np.float32)})
    image = torch.as_tensor(np.asarray(data["image"]), dtype=torch.float32)
    labels = torch.as_tensor(np.asarray(data["label"])[0]).round().to(torch.int64)
    return image, labels
