"""The SPINECT segmentation pipeline as composable steps on SimpleITK images and arrays.

read CT -> resample to the plan's spacing (1 mm) -> clip + z-score -> sliding-window U-Net ->
argmax on the 1 mm grid -> nearest-neighbour back to the input grid -> median smoothing (mm,
Slicer's rule) -> labels 0 background, 1 bone, 2 nerve on the input CT's grid.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from spinect.inference import predict_probabilities
from spinect.plan import ModelPlan
from spinect.postprocess import median_smooth_labels
from spinect.preprocess import normalise_hu, resample_to_reference, resample_to_spacing

__all__ = ["prepare_network_input", "labels_to_input_grid", "segment_image", "WindowProgress"]

#: ``progress(done_windows, total_windows)`` as the inference reports it.
WindowProgress = Callable[[int, int], None]


def prepare_network_input(ct: sitk.Image, plan: ModelPlan) -> tuple[sitk.Image, np.ndarray]:
    """Resample ``ct`` (HU) to the plan's spacing and normalise it.

    Returns:
        (the resampled CT image in HU, float32 (z, y, x) normalised array on that grid).
    """
    spacing_xyz = tuple(reversed(plan.spacing_zyx_mm))
    resampled = resample_to_spacing(ct, spacing_xyz, interpolation=plan.image_interpolation, default_value=-1024.0)
    array_hu = sitk.GetArrayViewFromImage(resampled)
    normalised = normalise_hu(array_hu, hu_window=plan.hu_window, mean=plan.intensity_mean, std=plan.intensity_std)
    return resampled, normalised


def labels_to_input_grid(labels_zyx: np.ndarray, network_grid: sitk.Image, ct: sitk.Image) -> sitk.Image:
    """Put a (z, y, x) label array living on ``network_grid`` onto ``ct``'s grid (nearest)."""
    label_image = sitk.GetImageFromArray(labels_zyx.astype(np.uint8, copy=False))
    label_image.CopyInformation(network_grid)
    return resample_to_reference(label_image, ct, interpolation="nearest", default_value=0)


def segment_image(
    ct: sitk.Image,
    network: torch.nn.Module,
    plan: ModelPlan,
    *,
    device: str | torch.device = "cpu",
    smoothing_mm: float | None = None,
    blend: str | None = None,
    stride_zyx: tuple[int, int, int] | None = None,
    batch_size: int = 4,
    window_progress: WindowProgress | None = None,
    timer=None,
) -> sitk.Image:
    """Segment one CT image already in memory; returns a UInt8 label image on ``ct``'s grid.

    ``smoothing_mm``, ``blend`` and ``stride_zyx`` default to the plan's values. ``timer`` is an
    optional :class:`spinect.profiling.StageTimer` that receives per-stage times.
    """
    from spinect.profiling import StageTimer

    timer = timer or StageTimer()
    with timer.stage("resample+normalise"):
        network_grid, volume = prepare_network_input(ct, plan)
    with timer.stage("infer"):
        scores = predict_probabilities(
            volume,
            network,
            patch_size_zyx=plan.patch_size_zyx,
            stride_zyx=tuple(stride_zyx or plan.stride_zyx),
            blend=blend or plan.blend,
            batch_size=batch_size,
            device=device,
            progress=window_progress,
        )
    with timer.stage("argmax"):
        labels_1mm = torch.argmax(scores, dim=0).to(torch.uint8).numpy()
        del scores
    with timer.stage("resample back"):
        labels = labels_to_input_grid(labels_1mm, network_grid, ct)
    kernel_mm = plan.smoothing_mm if smoothing_mm is None else smoothing_mm
    with timer.stage("smooth"):
        spacing_zyx = tuple(reversed(ct.GetSpacing()))
        smoothed = median_smooth_labels(
            sitk.GetArrayViewFromImage(labels), spacing_zyx, kernel_mm=kernel_mm, num_classes=plan.num_classes
        )
        result = sitk.GetImageFromArray(smoothed)
        result.CopyInformation(ct)
    return result
