"""The SPINECT segmentation pipeline as composable steps on SimpleITK images and arrays.

read CT -> resample to the plan's spacing (1 mm) -> clip + z-score -> sliding-window U-Net (one
model, or an ensemble / flip TTA) -> argmax on the 1 mm grid -> false-positive island removal ->
nearest-neighbour back to the input grid -> median smoothing (mm, Slicer's rule) -> labels
0 background, 1 bone, 2 nerve on the input CT's grid.

Windows that see only air (every voxel, and those within :data:`AIR_MARGIN_MM` around the
window, below :data:`AIR_HU` on the resampled CT) are not run through the network; they count as
background (``skip_air``). The network sees nothing outside its window, so this changes a label
only where the network would call air voxels foreground; ``docs/benchmarks.md`` compares the
labels with and without skipping and reports what it saves.

Windows far from bone are not run either (``bone_margin_mm``): a window runs only if some voxel
of at least :data:`BONE_HU` lies within :data:`BONE_MARGIN_MM` (30 mm) of it. Every voxel within
that distance of bone-dense tissue is covered only by windows that run, so its label is exactly
the whole-volume label; farther voxels are background. Lumbosacral roots run in the canal, the
foramina and along the vertebral bodies, ala, sacrum and ilium: in the phantom 95 % of nerve
voxels lie within 20 mm of bone and 99.7 % within 30 mm (the rest are covered by neighbouring
windows: on the benchmark CT the labels equal the whole-volume labels voxel for voxel,
``docs/benchmarks.md``). A "nerve" in the abdominal wall would be a false positive anyway (the
detection-first argument of Ua-Net). ``bone_margin_mm=None`` (CLI ``--whole-volume``) runs every
window in the body.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from spinect.errors import SpinectError
from spinect.inference import argmax_labels, predict_probabilities
from spinect.plan import LEVEL_MAP_NAMES, ModelPlan
from spinect.postprocess import RemovedIsland, median_smooth_labels, suppress_islands
from spinect.preprocess import normalise_hu, resample_to_reference, resample_to_spacing

__all__ = [
    "prepare_network_input",
    "labels_to_input_grid",
    "segment_image",
    "air_threshold",
    "warn_if_smaller_than_window",
    "PipelineOutput",
    "transfer_levels",
    "WindowProgress",
    "AIR_HU",
    "AIR_MARGIN_MM",
    "BONE_HU",
    "BONE_MARGIN_MM",
]

log = logging.getLogger("spinect")

#: CT values below this (HU) count as air when deciding which windows to skip.
AIR_HU = -500.0
#: A skipped window must also have only air within this distance (mm) around it.
AIR_MARGIN_MM = 0.0
#: CT values at or above this (HU) count as bone-dense when deciding which windows to run
#: (cortical and cancellous bone; severely osteoporotic cancellous bone is lower, but its cortex is not).
BONE_HU = 150.0
#: A window runs only if a bone-dense voxel lies within this distance (mm) of it (default).
BONE_MARGIN_MM = 30.0

#: ``progress(done_windows, total_windows)`` as the inference reports it.
WindowProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class PipelineOutput:
    """Everything one run of :func:`segment_image` produced.

    Attributes:
        labels: UInt8 label image on the input CT's grid.
        removed_islands: false-positive islands removed (centroids converted to LPS mm in
            ``removed_islands_lps_mm``, same order).
        uncertainty: vote entropy (nats, SepNet eq. 11) on the input grid when an ensemble or
            TTA ran, else None.
        vvc: {class name: sigma/mu of member volumes} when an ensemble or TTA ran.
        members: number of ensemble members (1 = plain inference).
        levels: with ``levels=True``, a UInt8 level map on the input grid (0 none, k =
            :data:`spinect.plan.LEVEL_NAMES` ``[k - 1]``), nonzero only inside ``labels``' bone.
    """

    labels: sitk.Image
    removed_islands: list[RemovedIsland] = field(default_factory=list)
    removed_islands_lps_mm: list[tuple[float, float, float]] = field(default_factory=list)
    uncertainty: sitk.Image | None = None
    vvc: dict[str, float] | None = None
    members: int = 1
    levels: sitk.Image | None = None


def prepare_network_input(ct: sitk.Image, plan: ModelPlan, *, timer=None) -> tuple[sitk.Image, np.ndarray]:
    """Resample ``ct`` (HU) to the plan's spacing and normalise it.

    Args:
        ct: CT image in HU.
        plan: gives the spacing (mm), interpolation, HU window and z-score statistics.
        timer: optional :class:`spinect.profiling.StageTimer` (stages ``resample``, ``normalise``).

    Returns:
        (the resampled CT image in HU, float32 (z, y, x) normalised array on that grid).
    """
    from spinect.profiling import StageTimer

    timer = timer or StageTimer()
    spacing_xyz = tuple(reversed(plan.spacing_zyx_mm))
    with timer.stage("resample"):
        resampled = resample_to_spacing(ct, spacing_xyz, interpolation=plan.image_interpolation, default_value=-1024.0)
    with timer.stage("normalise"):
        array_hu = sitk.GetArrayViewFromImage(resampled)
        normalised = normalise_hu(array_hu, hu_window=plan.hu_window, mean=plan.intensity_mean, std=plan.intensity_std)
    return resampled, normalised


def warn_if_smaller_than_window(shape_zyx: Sequence[int], plan: ModelPlan) -> list[str]:
    """Warn when the CT, on the network's grid, is shorter than one sliding window along an axis.

    The network then sees mostly padding (a 3-slice DICOM series in a 32-slice window): its labels
    there are unreliable (seen: "nerve" laid in a window-grid pattern over liver, muscle and fat).

    Returns:
        The warnings logged (empty when the CT fills the window).
    """
    warnings = []
    for axis, voxels, patch, spacing in zip("zyx", shape_zyx, plan.patch_size_zyx, plan.spacing_zyx_mm):
        if voxels < patch:
            warnings.append(
                f"the CT spans only {voxels} voxels ({voxels * spacing:.0f} mm) along {axis} on the model's "
                f"{spacing:g} mm grid, fewer than the network's window of {patch} ({patch * spacing:.0f} mm): the network "
                "sees mostly padding, so its labels are UNRELIABLE. Give a CT covering the lumbar spine "
                f"(at least {patch * spacing:.0f} mm along {axis})"
            )
    for message in warnings:
        log.warning("%s", message)
    return warnings


def _geometry_only(image: sitk.Image) -> sitk.Image:
    """A UInt8 image with ``image``'s size, spacing, origin and direction (its voxels dropped)."""
    grid = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(image)
    return grid


def air_threshold(plan: ModelPlan, air_hu: float = AIR_HU) -> float:
    """``air_hu`` in the network's normalised intensities (after the plan's HU clipping and z-score)."""
    return normalised_hu(plan, air_hu)


def normalised_hu(plan: ModelPlan, hu: float) -> float:
    """A CT value (HU) in the network's normalised intensities (the plan's HU clipping and z-score)."""
    clipped = float(np.clip(hu, plan.hu_window[0], plan.hu_window[1]))
    return (clipped - plan.intensity_mean) / plan.intensity_std


def labels_to_input_grid(labels_zyx: np.ndarray, network_grid: sitk.Image, ct: sitk.Image) -> sitk.Image:
    """Put a (z, y, x) array living on ``network_grid`` onto ``ct``'s grid (nearest)."""
    image = sitk.GetImageFromArray(labels_zyx)
    image.CopyInformation(network_grid)
    return resample_to_reference(image, ct, interpolation="nearest", default_value=0)


def segment_image(
    ct: sitk.Image,
    networks: torch.nn.Module | Sequence[torch.nn.Module],
    plan: ModelPlan,
    *,
    device: str | torch.device = "cpu",
    smoothing_mm: float | None = None,
    blend: str | None = None,
    stride_zyx: tuple[int, int, int] | None = None,
    batch_size: int = 4,
    tta: bool = False,
    remove_islands: bool = True,
    window_progress: WindowProgress | None = None,
    timer=None,
    amp: bool | None = None,
    skip_air: bool = True,
    bone_margin_mm: float | None = BONE_MARGIN_MM,
    levels: bool = False,
) -> PipelineOutput:
    """Segment one CT image already in memory.

    ``smoothing_mm``, ``blend`` and ``stride_zyx`` default to the plan's values. With several
    networks or ``tta`` the members' probabilities are fused (mean) and their disagreement is
    returned as uncertainty. ``timer`` is an optional :class:`spinect.profiling.StageTimer`; it
    gets the stages resample, normalise, windows, network, stitching, (ensemble fusion,) argmax,
    islands, resample back and smooth. ``amp``: see :func:`spinect.inference.predict_probabilities`
    (None = bfloat16 where the device computes it natively). ``skip_air``: do not run windows that
    see only air; ``bone_margin_mm``: do not run windows farther than this from any voxel of at
    least :data:`BONE_HU` (None = run every window in the body; see the module docstring).

    A model with a class map (``plan.class_groups``, e.g. a level model) has its classes merged
    into SPINECT's bone and nerve right after the argmax, so islands, smoothing and the labels are
    the same as for a 3-class model. ``levels`` (needs ``plan.has_levels``) also returns the
    vertebral level of each bone voxel (:attr:`PipelineOutput.levels`).
    """
    if levels and not plan.has_levels:
        raise SpinectError("this model does not label vertebral levels (its classes: "
                           f"{', '.join(plan.class_names)}); run without levels or use a level model")
    from spinect.profiling import StageTimer

    nets = [networks] if isinstance(networks, torch.nn.Module) else list(networks)
    timer = timer or StageTimer()
    network_grid, volume = prepare_network_input(ct, plan, timer=timer)
    warn_if_smaller_than_window(volume.shape, plan)
    network_grid = _geometry_only(network_grid)  # its HU voxels are no longer needed: ~150 MB less at the peak
    margin_zyx = tuple(int(np.ceil(AIR_MARGIN_MM / s)) for s in plan.spacing_zyx_mm)
    options = dict(patch_size_zyx=plan.patch_size_zyx, stride_zyx=tuple(stride_zyx or plan.stride_zyx),
                   blend=blend or plan.blend, batch_size=batch_size, device=device, amp=amp, timer=timer,
                   skip_below=air_threshold(plan) if skip_air else None, skip_margin_zyx=margin_zyx)
    if skip_air and bone_margin_mm is not None:
        if bone_margin_mm < 0:
            raise SpinectError(f"bone margin must be >= 0 mm, got {bone_margin_mm}")
        bone_level = normalised_hu(plan, BONE_HU)
        if float(volume.max()) < bone_level:
            log.warning("no voxel of the CT reaches %g HU (bone): no window near bone, so nothing is segmented. "
                        "Is the image a CT in Hounsfield units? --whole-volume (whole_volume=True) runs every window.",
                        BONE_HU)
        options.update(roi_above=bone_level,
                       roi_margin_zyx=tuple(int(np.ceil(bone_margin_mm / s)) for s in plan.spacing_zyx_mm))
    ensemble = None
    if len(nets) == 1 and not tta:
        scores = predict_probabilities(volume, nets[0], progress=window_progress, **options)
    else:
        from spinect.uncertainty import predict_ensemble

        started, before = time.perf_counter(), timer.total_s
        ensemble = predict_ensemble(volume, nets, tta=tta, progress=window_progress, **options)
        scores = torch.from_numpy(ensemble.probabilities)
        timer.add("ensemble fusion", max(0.0, time.perf_counter() - started - (timer.total_s - before)))
    del volume
    with timer.stage("argmax"):
        classes_grid = argmax_labels(scores)
        del scores
        labels_grid = _lookup(classes_grid, plan.spinect_lookup()) if plan.class_groups else classes_grid
    removed: list[RemovedIsland] = []
    if remove_islands:
        with timer.stage("islands"):
            labels_grid, removed = suppress_islands(labels_grid, plan.spacing_zyx_mm)
    with timer.stage("resample back"):
        labels = labels_to_input_grid(labels_grid, network_grid, ct)
    kernel_mm = plan.smoothing_mm if smoothing_mm is None else smoothing_mm
    with timer.stage("smooth"):
        spacing_zyx = tuple(reversed(ct.GetSpacing()))
        smoothed = median_smooth_labels(sitk.GetArrayViewFromImage(labels), spacing_zyx, kernel_mm=kernel_mm,
                                        num_classes=len(plan.label_names))
        result = sitk.GetImageFromArray(smoothed)
        result.CopyInformation(ct)
    level_map = None
    if levels:
        with timer.stage("levels"):
            level_map = _level_map(classes_grid, labels_grid, smoothed, network_grid, ct, plan, spacing_zyx, kernel_mm)
    del classes_grid
    islands_lps = [network_grid.TransformContinuousIndexToPhysicalPoint(tuple(float(c) for c in r.centroid_zyx[::-1]))
                   for r in removed]
    if ensemble is None:
        return PipelineOutput(result, removed, islands_lps, levels=level_map)
    uncertainty = labels_to_input_grid(ensemble.vote_entropy, network_grid, ct)
    vvc = {plan.class_names[k]: v for k, v in ensemble.vvc.items()}
    return PipelineOutput(result, removed, islands_lps, uncertainty, vvc, ensemble.members, levels=level_map)


def _lookup(values_zyx: np.ndarray, table: Sequence[int]) -> np.ndarray:
    """Map integer labels through ``table`` (value -> new value), as uint8."""
    return np.asarray(table, dtype=np.uint8)[values_zyx]


def _level_map(classes_grid: np.ndarray, labels_grid: np.ndarray, smoothed_zyx: np.ndarray, network_grid: sitk.Image,
               ct: sitk.Image, plan: ModelPlan, spacing_zyx, kernel_mm: float) -> sitk.Image:
    """Level of each bone voxel of the final labels, on the input grid (see :class:`PipelineOutput`).

    The network's level classes, restricted to the bone that survived island removal, are
    resampled to the input grid and median-smoothed like the labels (a voxel where two levels meet
    keeps its unsmoothed level), then cut to the final bone, so the level segments never leave the
    bone segment. Bone the network gave no level (ilium, other bone) or that smoothing added stays
    without a level.
    """
    level_grid = _lookup(classes_grid, plan.level_lookup())
    level_grid[labels_grid != 1] = 0  # islands removed from bone are removed from the levels too
    on_input = sitk.GetArrayFromImage(labels_to_input_grid(level_grid, network_grid, ct))
    smooth_levels = median_smooth_labels(on_input, spacing_zyx, kernel_mm=kernel_mm, num_classes=len(LEVEL_MAP_NAMES))
    # Where two levels meet at the bone's surface neither keeps a median majority; the bone does.
    # Such voxels keep their unsmoothed level rather than lose it.
    lost = (smooth_levels == 0) & (on_input > 0)
    smooth_levels[lost] = on_input[lost]
    smooth_levels[smoothed_zyx != 1] = 0
    image = sitk.GetImageFromArray(smooth_levels.astype(np.uint8))
    image.CopyInformation(ct)
    return image


#: A bone voxel takes the level of the nearest level-model voxel within this distance (mm).
LEVEL_TRANSFER_MM = 6.0


def transfer_levels(labels: sitk.Image, levels: sitk.Image, *, max_distance_mm: float = LEVEL_TRANSFER_MM) -> sitk.Image:
    """Give each bone voxel of ``labels`` the level of ``levels`` there, or of the nearest voxel
    that has one within ``max_distance_mm`` (a coarse level model's bone is a few mm off).

    Args:
        labels: SPINECT label map (1 = bone) on the CT's grid.
        levels: a level map on the same grid (0 none, k = :data:`spinect.plan.LEVEL_NAMES` ``[k - 1]``).

    Returns:
        UInt8 level map on that grid, nonzero only on bone.
    """
    from scipy import ndimage

    bone = sitk.GetArrayFromImage(labels) == 1
    source = sitk.GetArrayFromImage(levels).astype(np.uint8)
    out = np.zeros(source.shape, np.uint8)
    if source.any() and bone.any():
        spacing_zyx = tuple(reversed(labels.GetSpacing()))
        distance, nearest = ndimage.distance_transform_edt(source == 0, sampling=spacing_zyx, return_indices=True)
        reach = bone & (distance <= max_distance_mm)
        out[reach] = source[tuple(index[reach] for index in nearest)]
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(labels)
    return image
