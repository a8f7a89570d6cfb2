"""The SPINECT segmentation pipeline as composable steps on SimpleITK images and arrays.

read CT -> resample to the plan's spacing (1 mm) -> clip + z-score -> sliding-window U-Net (one
model, or an ensemble / flip TTA) -> argmax on the 1 mm grid -> false-positive island removal ->
back to the input grid (the class probabilities interpolated linearly and the argmax taken there,
as nnU-Net does; ``resample_back="nearest"`` copies the nearest 1 mm label instead) -> median
smoothing (mm, Slicer's rule) -> labels 0 background, 1 bone, 2 nerve on the input CT's grid.

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

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from spinect.errors import SpinectError
from spinect.inference import (argmax_labels, predict_labels, predict_labels_and_probabilities, quantise_probabilities,
                               resolve_device)
from spinect.plan import LEVEL_MAP_NAMES, ModelPlan
from spinect.postprocess import RemovedIsland, median_smooth_labels, suppress_islands
from spinect.preprocess import ImageGrid, normalise_hu, resample_to_reference, resample_to_spacing

__all__ = [
    "prepare_network_input",
    "NetworkInput",
    "network_input",
    "segment_network_input",
    "labels_to_input_grid",
    "segment_image",
    "InferenceSettings",
    "island_rules",
    "air_threshold",
    "warn_if_smaller_than_window",
    "PipelineOutput",
    "transfer_levels",
    "WindowProgress",
    "AIR_HU",
    "AIR_MARGIN_MM",
    "TISSUE_MIN_HU",
    "AIR_NEIGHBOURHOOD_MM",
    "THIN_OBJECT_MAX_MM",
    "BONE_HU",
    "BONE_MARGIN_MM",
]

log = logging.getLogger("spinect")

#: CT values below this (HU) count as air when deciding which windows to skip.
AIR_HU = -500.0
#: A skipped window must also have only air within this distance (mm) around it.
AIR_MARGIN_MM = 0.0
#: No bone or nerve voxel lies below this (HU) on the network's grid: that is air or lung (-1000 to
#: -700 HU), not tissue; fatty marrow and the partial volume of a rib against the lung stay above it.
#: Voxels whose whole neighbourhood (:data:`AIR_NEIGHBOURHOOD_MM`) lies below it are set to
#: background before island removal (models whose HU window starts above it cannot tell, and are
#: left alone).
TISSUE_MIN_HU = -300.0
#: Half-width (mm) of the box that must be all below :data:`TISSUE_MIN_HU`: thin dark streaks from
#: metal (photon starvation, a few mm wide) cross bone without taking its label away.
AIR_NEIGHBOURHOOD_MM = 2.0
#: A piece of tissue (above :data:`TISSUE_MIN_HU`, 6-connected) apart from the largest one (the
#: body) that is nowhere thicker than this (mm) in an axial slice holds no bone or nerve: a CT table,
#: a pad, a cable or a tube outside the patient (bone always lies in soft tissue; an adult finger is
#: 15-20 mm thick). Measured in-plane, so a CT of a few slices is judged like a thick one.
THIN_OBJECT_MAX_MM = 8.0
#: CT values at or above this (HU) count as bone-dense when deciding which windows to run
#: (cortical and cancellous bone; severely osteoporotic cancellous bone is lower, but its cortex is not).
BONE_HU = 150.0
#: A window runs only if a bone-dense voxel lies within this distance (mm) of it (default).
BONE_MARGIN_MM = 30.0

#: Bone-dense voxels for the island rules (:func:`spinect.postprocess.suppress_islands`,
#: ``min_dense_share``): a bone component with almost none of its voxels at or above this (HU) has
#: no cortex, e.g. a contrast-filled kidney (150-400 HU) taken for bone.
DENSE_BONE_HU = 350.0

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


def island_rules() -> dict[str, float]:
    """The thresholds :func:`spinect.postprocess.suppress_islands` applies (its numeric keyword
    defaults, by name: volumes in mm³, distances in mm, elongation, voxels at the field of view's edge)."""
    parameters = inspect.signature(suppress_islands).parameters.values()
    return {p.name: p.default for p in parameters
            if p.kind is inspect.Parameter.KEYWORD_ONLY and not p.name.endswith("_label")
            and isinstance(p.default, (int, float)) and not isinstance(p.default, bool)}


@dataclass(frozen=True)
class InferenceSettings:
    """Every setting of one inference run, resolved: the plan's defaults with the request's choices.

    Built once by :meth:`from_plan` (from a :class:`spinect.requests.SegmentRequest` and/or
    keyword overrides) and handed to :func:`segment_image`; :meth:`record` is what the result and
    the provenance sidecars carry (the label-changing settings as applied).

    Attributes:
        patch_size_zyx / stride_zyx: sliding window and stride (voxels, z y x).
        blend: ``sum`` or ``gaussian``.
        batch_size: windows per network call (does not change labels).
        smoothing_mm: median smoothing kernel on the input grid (mm; 0 = off).
        tta: flip test-time augmentation.
        mirror: mirroring of every window, a :data:`spinect.requests.MIRRORS` name (``auto``: ``lr``
            on a GPU, ``none`` on the CPU); off while ``tta`` runs (its flips include it).
        precision: ``auto``, ``fp32`` or ``bf16`` (:data:`spinect.requests.PRECISIONS`).
        skip_air: windows that see only air (< :data:`AIR_HU`) are not run.
        bone_margin_mm: windows farther than this from bone-dense voxels (>= :data:`BONE_HU`) are
            not run; None = every window in the body.
        island_rules: thresholds of the false-positive island removal (:func:`island_rules`);
            None = islands kept.
        levels: also return the level map (needs a level model).
        resample_back: how the labels go from the network's grid to the CT's: ``probabilities``
            (default; nnU-Net's way: each class's probability interpolated linearly onto the CT's
            grid, then the argmax) or ``nearest`` (the nearest 1 mm label, as before December 2026;
            always for a level model, whose many classes would cost a byte each per voxel).
    """

    patch_size_zyx: tuple[int, int, int]
    stride_zyx: tuple[int, int, int]
    blend: str
    smoothing_mm: float
    batch_size: int = 4
    tta: bool = False
    mirror: str = "auto"
    precision: str = "auto"
    skip_air: bool = True
    bone_margin_mm: float | None = BONE_MARGIN_MM
    island_rules: dict[str, float] | None = field(default_factory=island_rules)
    levels: bool = False
    resample_back: str = "probabilities"

    @property
    def amp(self) -> bool | None:
        """The ``amp`` switch of :func:`spinect.inference.predict_probabilities`."""
        from spinect.requests import PRECISIONS

        return PRECISIONS[self.precision]

    def mirror_axes_zyx(self, device) -> tuple[int, ...]:
        """The axes every window also runs flipped along on ``device`` (() = no mirroring)."""
        from spinect.requests import MIRRORS

        if self.mirror not in MIRRORS:
            raise SpinectError(f"mirror must be one of {', '.join(MIRRORS)}; got {self.mirror!r}")
        if self.tta:
            return ()
        axes = MIRRORS[self.mirror]
        if axes is None:
            axes = () if torch.device(device).type == "cpu" else MIRRORS["lr"]
        return tuple(axes)

    @property
    def remove_islands(self) -> bool:
        return self.island_rules is not None

    @classmethod
    def from_plan(cls, plan: ModelPlan, request=None, **overrides: Any) -> "InferenceSettings":
        """The settings for ``plan``: the request's options (a :class:`spinect.requests.SegmentRequest`,
        optional), then ``overrides`` (``smoothing_mm``, ``blend``, ``stride_zyx``, ``batch_size``,
        ``tta``, ``mirror``, ``precision`` or ``amp``, ``remove_islands``, ``skip_air``, ``bone_margin_mm``,
        ``levels``, ``resample_back``); None means the plan's value (smoothing, blend, stride)."""
        values: dict[str, Any] = {}
        if request is not None:
            values.update(smoothing_mm=request.smoothing_mm, blend=request.blend, stride_zyx=request.stride_zyx,
                          batch_size=request.batch_size, tta=request.tta, mirror=request.mirror,
                          precision=request.precision,
                          remove_islands=not request.keep_islands,
                          bone_margin_mm=None if request.whole_volume else BONE_MARGIN_MM, levels=request.levels,
                          resample_back="nearest" if getattr(request, "nearest_labels", False) else "probabilities")
        if "amp" in overrides:
            amp = overrides.pop("amp")
            overrides["precision"] = {None: "auto", False: "fp32", True: "bf16"}[amp]
        values.update(overrides)
        remove = values.pop("remove_islands", True)
        smoothing = values.pop("smoothing_mm", None)
        stride = values.pop("stride_zyx", None)
        return cls(patch_size_zyx=tuple(int(v) for v in plan.patch_size_zyx),
                   stride_zyx=tuple(int(v) for v in (stride if stride is not None else plan.stride_zyx)),
                   blend=values.pop("blend", None) or plan.blend,
                   smoothing_mm=float(plan.smoothing_mm if smoothing is None else smoothing),
                   island_rules=island_rules() if remove else None, **values)

    def record(self, plan: ModelPlan, *, ensemble_members: int = 1, device=None) -> dict[str, Any]:
        """The label-changing settings as applied, for the result and the provenance sidecars.

        Args:
            plan: gives the grid, HU window and spacing.
            ensemble_members: model files fused (1 = one model).
            device: the torch device the network ran on; resolves ``precision`` to the
                arithmetic used (``precision_applied``: float32, bfloat16 or float16).
        """
        record = {
            "smoothing_mm": self.smoothing_mm,
            "blend": self.blend,
            "stride_zyx": list(self.stride_zyx),
            "patch_size_zyx": list(self.patch_size_zyx),
            "spacing_zyx_mm": list(plan.spacing_zyx_mm),
            "hu_window": list(plan.hu_window),
            "tta": self.tta,
            "mirror": self.mirror,
            "ensemble_members": int(ensemble_members),
            "remove_islands": self.remove_islands,
            "island_rules": None if self.island_rules is None else dict(self.island_rules),
            "dense_bone_hu": DENSE_BONE_HU if self.island_rules is not None and plan.hu_window[1] > DENSE_BONE_HU else None,
            "skip_air": self.skip_air,
            "air_hu": AIR_HU if self.skip_air else None,
            "tissue_min_hu": TISSUE_MIN_HU if _air_rule_applies(plan) else None,
            "air_neighbourhood_mm": AIR_NEIGHBOURHOOD_MM if _air_rule_applies(plan) else None,
            "thin_object_max_mm": THIN_OBJECT_MAX_MM if _air_rule_applies(plan) else None,
            "bone_margin_mm": self.bone_margin_mm if self.skip_air else None,
            "bone_hu": BONE_HU if self.skip_air and self.bone_margin_mm is not None else None,
            "precision": self.precision,
            "levels": self.levels,
            "resample_back": "nearest" if plan.class_groups else self.resample_back,
        }
        if device is not None:
            from spinect.inference.device import autocast_dtype

            dtype = autocast_dtype(torch.device(device), self.amp)
            record["precision_applied"] = "float32" if dtype is None else str(dtype).replace("torch.", "")
            record["mirror_axes_zyx"] = list(self.mirror_axes_zyx(device))
        return record


def prepare_network_input(ct: sitk.Image, plan: ModelPlan, *, timer=None) -> tuple[sitk.Image, np.ndarray]:
    """Resample ``ct`` (HU) to the plan's spacing and normalise it.

    Args:
        ct: CT image in HU (float32, or an integer type whose values float32 holds exactly).
        plan: gives the spacing (mm), interpolation, HU window and z-score statistics.
        timer: optional :class:`spinect.profiling.StageTimer` (stages ``resample``, ``normalise``).

    Returns:
        (the resampled CT image in HU, float32 (z, y, x) normalised array on that grid).
    """
    from spinect.profiling import StageTimer

    timer = timer or StageTimer()
    resampled = _resample_for_network(ct, plan, timer)
    return resampled, _normalise_for_network(resampled, plan, timer)


def _resample_for_network(ct: sitk.Image, plan: ModelPlan, timer) -> sitk.Image:
    spacing_xyz = tuple(reversed(plan.spacing_zyx_mm))
    with timer.stage("resample"):
        # Straight to float32: an integer CT needs no float32 copy first (the same voxels, bit for bit).
        # LPS axis order: the network learnt axial volumes; a sagittally stored CT must not reach it sideways.
        return resample_to_spacing(ct, spacing_xyz, interpolation=plan.image_interpolation, default_value=-1024.0,
                                   pixel_type=sitk.sitkFloat32, orient_lps=True)


def _normalise_for_network(resampled: sitk.Image, plan: ModelPlan, timer) -> np.ndarray:
    with timer.stage("normalise"):
        array_hu = sitk.GetArrayViewFromImage(resampled)
        return normalise_hu(array_hu, hu_window=plan.hu_window, mean=plan.intensity_mean, std=plan.intensity_std)


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


@dataclass
class NetworkInput:
    """A CT resampled for the network: what :func:`segment_network_input` needs of it.

    Attributes:
        resampled: the CT in HU (float32) on the network's grid; :meth:`take_volume` normalises it
            and drops it.
        network_grid: the network's grid (the plan's spacing over the CT's extent).
        input_grid: the CT's grid, where the labels go; the CT's voxels are not kept.
        plan: gives the HU window and z-score statistics.
        timer: optional :class:`spinect.profiling.StageTimer` (stage ``normalise``).
    """

    resampled: sitk.Image | None
    network_grid: ImageGrid
    input_grid: ImageGrid
    plan: ModelPlan
    timer: Any = None

    def take_volume(self) -> np.ndarray:
        """The normalised float32 (z, y, x) volume (:func:`prepare_network_input`'s); once only:
        the resampled HU image is dropped as it is normalised."""
        from spinect.profiling import StageTimer

        resampled, self.resampled = self.resampled, None
        if resampled is None:
            raise SpinectError("this network input was already used (its volume is freed after one run)")
        return _normalise_for_network(resampled, self.plan, self.timer or StageTimer())


def network_input(ct: sitk.Image, plan: ModelPlan, *, timer=None) -> NetworkInput:
    """Resample ``ct`` for the network, keeping of the CT only its grid, and warn when it is
    smaller than one window (:func:`warn_if_smaller_than_window`). The normalisation waits for
    :meth:`NetworkInput.take_volume`.

    A caller that drops its own reference to ``ct`` afterwards frees the CT's voxels before the
    normalised copy is made and the network runs (:func:`spinect.api.segment` does; issue 17:
    600 MiB at 512×512×600 in float32, 300 MiB as int16).
    """
    from spinect.profiling import StageTimer

    timer = timer or StageTimer()
    resampled = _resample_for_network(ct, plan, timer)
    warn_if_smaller_than_window(tuple(reversed(resampled.GetSize())), plan)
    return NetworkInput(resampled, ImageGrid(resampled), ImageGrid(ct), plan, timer)


def air_threshold(plan: ModelPlan, air_hu: float = AIR_HU) -> float:
    """``air_hu`` in the network's normalised intensities (after the plan's HU clipping and z-score)."""
    return normalised_hu(plan, air_hu)


def normalised_hu(plan: ModelPlan, hu: float) -> float:
    """A CT value (HU) in the network's normalised intensities (the plan's HU clipping and z-score)."""
    clipped = float(np.clip(hu, plan.hu_window[0], plan.hu_window[1]))
    return (clipped - plan.intensity_mean) / plan.intensity_std


#: ``InferenceSettings.resample_back`` choices: how labels go back from the network's grid to the CT's.
RESAMPLE_BACK: tuple[str, ...] = ("probabilities", "nearest")


def probabilities_to_input_grid(probabilities_czyx: np.ndarray, labels_zyx: np.ndarray,
                                network_grid: sitk.Image | ImageGrid, ct: sitk.Image | ImageGrid, *,
                                class_lookup: np.ndarray | None = None) -> sitk.Image:
    """Labels on ``ct``'s grid from the network's probabilities, interpolated (nnU-Net's way back).

    A 1 mm label map copied to a 0.7 mm (or 1.5 mm) grid by nearest neighbour moves every boundary
    to the nearest 1 mm voxel face; the blended probabilities know where between two voxel
    centres the classes cross. Each foreground class's probability is resampled linearly onto the
    CT's grid and the argmax taken there (background = 1 - the foreground sum, which linear
    interpolation keeps; ties go to background, then to the lower class, as ``argmax``). On the
    real cases of ``benchmarks/validate_real_ct.py`` this lifted bone Dice by 0.003-0.009 on each
    (docs/real_ct_validation.md).

    The rules applied on the network's grid stay applied: wherever ``labels_zyx`` (the labels
    after the air, thin-object and island rules) differs from the argmax of the probabilities,
    the voxel counts as certain of its label.

    Args:
        probabilities_czyx: (C, Z, Y, X) uint8 probabilities (x 255) of the network's classes.
        labels_zyx: (Z, Y, X) uint8 final labels on the network's grid (0 background, 1 bone, 2 nerve).
        network_grid / ct: the grids (images or :class:`spinect.preprocess.ImageGrid`).
        class_lookup: network class -> label (a level model's :meth:`ModelPlan.spinect_lookup`);
            None = the classes are the labels.

    Returns:
        uint8 label image on ``ct``'s grid.
    """
    labels = np.asarray(labels_zyx, np.uint8)
    classes = int(probabilities_czyx.shape[0]) if class_lookup is None else int(np.max(class_lookup)) + 1
    num_labels = max(int(labels.max()) + 1, classes)
    if class_lookup is not None:  # a level model: sum its classes into background, bone and nerve
        lookup = np.asarray(class_lookup)
        grouped = np.zeros((num_labels, *labels.shape), np.uint16)
        for c in range(probabilities_czyx.shape[0]):
            grouped[int(lookup[c])] += probabilities_czyx[c]
        probs = np.minimum(grouped, 255).astype(np.uint8)
        del grouped
    else:
        probs = np.zeros((num_labels, *labels.shape), np.uint8)
        probs[: probabilities_czyx.shape[0]] = probabilities_czyx
    differs = np.nonzero(argmax_labels(torch.from_numpy(probs)) != labels)
    probs[(slice(None), *differs)] = 0
    probs[(labels[differs], *differs)] = 255
    del differs
    grid_in, grid_out = ImageGrid.of(network_grid), ImageGrid.of(ct)
    channels = [grid_in.stamp(sitk.GetImageFromArray(probs[k])) for k in range(1, num_labels)]
    del probs
    size_x, size_y, size_z = grid_out.GetSize()
    out = np.zeros((size_z, size_y, size_x), np.uint8)
    # slab by slab along z, so the float32 interpolated values never exist for the whole CT
    slab = max(1, int(PROBABILITY_SLAB_VOXELS // max(size_x * size_y, 1)))
    for z0 in range(0, size_z, slab):
        nz = min(slab, size_z - z0)
        origin = grid_out.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, float(z0)))
        values = [sitk.GetArrayFromImage(sitk.Resample(
            channel, (size_x, size_y, nz), sitk.Transform(), sitk.sitkLinear, origin, grid_out.GetSpacing(),
            grid_out.GetDirection(), 0.0, sitk.sitkFloat32)) for channel in channels]
        best, index = values[0], np.ones(values[0].shape, np.uint8)
        total = values[0].copy()
        for k, value in enumerate(values[1:], start=2):
            total += value
            index[value > best] = k
            np.maximum(best, value, out=best)
        out[z0 : z0 + nz] = np.where(best > np.float32(255.0) - total, index, np.uint8(0))
    return grid_out.stamp(sitk.GetImageFromArray(out))


#: Voxels of the CT's grid interpolated at once by :func:`probabilities_to_input_grid` (4 M: 16 MB per class).
PROBABILITY_SLAB_VOXELS = 4_000_000


def labels_to_input_grid(labels_zyx: np.ndarray, network_grid: sitk.Image | ImageGrid,
                         ct: sitk.Image | ImageGrid) -> sitk.Image:
    """Put a (z, y, x) array living on ``network_grid`` onto ``ct``'s grid (nearest); either may
    be an image or its :class:`spinect.preprocess.ImageGrid`."""
    image = ImageGrid.of(network_grid).stamp(sitk.GetImageFromArray(labels_zyx))
    return resample_to_reference(image, ct, interpolation="nearest", default_value=0)


def segment_image(
    ct: sitk.Image,
    networks: torch.nn.Module | Sequence[torch.nn.Module],
    plan: ModelPlan,
    settings: InferenceSettings | None = None,
    *,
    device: str | torch.device = "cpu",
    window_progress: WindowProgress | None = None,
    timer=None,
    **overrides: Any,
) -> PipelineOutput:
    """Segment one CT image already in memory, with ``settings`` (:class:`InferenceSettings`).

    Without ``settings``, keyword ``overrides`` build them (:meth:`InferenceSettings.from_plan`:
    ``smoothing_mm``, ``blend``, ``stride_zyx``, ``batch_size``, ``tta``, ``remove_islands``,
    ``amp``, ``skip_air``, ``bone_margin_mm``, ``levels``); ``smoothing_mm``, ``blend`` and
    ``stride_zyx`` default to the plan's values. With several
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
    if settings is None:
        settings = InferenceSettings.from_plan(plan, **overrides)
    elif overrides:
        raise TypeError(f"segment_image takes settings or keyword overrides, not both (got {sorted(overrides)})")
    _check_levels(settings, plan)
    from spinect.profiling import StageTimer

    timer = timer or StageTimer()
    return segment_network_input(network_input(ct, plan, timer=timer), networks, plan, settings, device=device,
                                 window_progress=window_progress, timer=timer)


def _check_levels(settings: InferenceSettings, plan: ModelPlan) -> None:
    if settings.levels and not plan.has_levels:
        raise SpinectError("this model does not label vertebral levels (its classes: "
                           f"{', '.join(plan.class_names)}); run without levels or use a level model")


def segment_network_input(
    prepared: NetworkInput,
    networks: torch.nn.Module | Sequence[torch.nn.Module],
    plan: ModelPlan,
    settings: InferenceSettings,
    *,
    device: str | torch.device = "cpu",
    window_progress: WindowProgress | None = None,
    timer=None,
) -> PipelineOutput:
    """:func:`segment_image` from a CT already made ready by :func:`network_input`.

    Takes ``prepared``'s volume (it can run once) and frees it once the network has run. With one
    network and no TTA the windows' scores are blended slab by slab into labels
    (:func:`spinect.inference.predict_labels`): only uint8 labels on the network's grid, the same
    labels as the argmax of the whole score volume.
    """
    _check_levels(settings, plan)
    from spinect.profiling import StageTimer

    levels, tta = settings.levels, settings.tta
    nets = [networks] if isinstance(networks, torch.nn.Module) else list(networks)
    timer = timer or StageTimer()
    network_grid, ct = prepared.network_grid, prepared.input_grid
    volume = prepared.take_volume()
    margin_zyx = tuple(int(np.ceil(AIR_MARGIN_MM / s)) for s in plan.spacing_zyx_mm)
    bone_margin_mm = settings.bone_margin_mm
    options = dict(patch_size_zyx=settings.patch_size_zyx, stride_zyx=settings.stride_zyx, blend=settings.blend,
                   batch_size=settings.batch_size, device=device, amp=settings.amp, timer=timer,
                   mirror_axes_zyx=settings.mirror_axes_zyx(resolve_device(device)),
                   skip_below=air_threshold(plan) if settings.skip_air else None, skip_margin_zyx=margin_zyx)
    if settings.skip_air and bone_margin_mm is not None:
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
    air = None
    if settings.resample_back not in RESAMPLE_BACK:
        raise SpinectError(f"resample_back must be one of {', '.join(RESAMPLE_BACK)}; got {settings.resample_back!r}")
    # a level model's many classes would cost a byte each per voxel: its labels go back by nearest
    keep = settings.resample_back == "probabilities" and not plan.class_groups
    probabilities = None  # (C, Z, Y, X) uint8 on the network's grid, for the way back
    if len(nets) == 1 and not tta:
        # Labels straight from the blended windows (timer stage "argmax" inside): no (C, Z, Y, X) float scores.
        if keep:
            classes_grid, probabilities = predict_labels_and_probabilities(volume, nets[0], progress=window_progress,
                                                                           **options)
        else:
            classes_grid = predict_labels(volume, nets[0], progress=window_progress, **options)
        with timer.stage("air and thin objects"):
            air = _air_mask(volume, plan, labelled=classes_grid > 0)
            dense = _dense_mask(volume, plan) if settings.island_rules is not None else None
        del volume
    else:
        from spinect.uncertainty import predict_ensemble

        started, before = time.perf_counter(), timer.total_s
        ensemble = predict_ensemble(volume, nets, tta=tta, progress=window_progress, **options)
        scores = torch.from_numpy(ensemble.probabilities)
        timer.add("ensemble fusion", max(0.0, time.perf_counter() - started - (timer.total_s - before)))
        with timer.stage("air and thin objects"):
            air = _air_mask(volume, plan)
            dense = _dense_mask(volume, plan) if settings.island_rules is not None else None
        del volume
        with timer.stage("argmax"):
            classes_grid = argmax_labels(scores)
            if keep:
                probabilities = quantise_probabilities(scores)
            del scores
    if air is not None:
        classes_grid[air] = 0  # air and thin objects outside the body are never bone or nerve
        del air
    with timer.stage("argmax"):
        labels_grid = _lookup(classes_grid, plan.spinect_lookup()) if plan.class_groups else classes_grid
    if not levels:
        classes_grid = None  # only the level map needs the network's own classes
    removed: list[RemovedIsland] = []
    if settings.island_rules is not None:
        with timer.stage("islands"):
            labels_grid, removed = suppress_islands(labels_grid, plan.spacing_zyx_mm, dense_zyx=dense,
                                                    **settings.island_rules)
    dense = None
    with timer.stage("resample back"):
        if probabilities is not None:
            labels = probabilities_to_input_grid(probabilities, labels_grid, network_grid, ct)
            del probabilities
        else:
            labels = labels_to_input_grid(labels_grid, network_grid, ct)
    kernel_mm = settings.smoothing_mm
    with timer.stage("smooth"):
        spacing_zyx = tuple(reversed(ct.GetSpacing()))
        smoothed = median_smooth_labels(sitk.GetArrayViewFromImage(labels), spacing_zyx, kernel_mm=kernel_mm,
                                        num_classes=len(plan.label_names))
        del labels
        result = ct.stamp(sitk.GetImageFromArray(smoothed))
    level_map = None
    if levels:
        with timer.stage("levels"):
            level_map = _level_map(classes_grid, labels_grid, smoothed, network_grid, ct, plan, spacing_zyx, kernel_mm)
    del classes_grid, labels_grid, smoothed
    islands_lps = [network_grid.TransformContinuousIndexToPhysicalPoint(tuple(float(c) for c in r.centroid_zyx[::-1]))
                   for r in removed]
    if ensemble is None:
        return PipelineOutput(result, removed, islands_lps, levels=level_map)
    uncertainty = labels_to_input_grid(ensemble.vote_entropy, network_grid, ct)
    vvc = {plan.class_names[k]: v for k, v in ensemble.vvc.items()}
    return PipelineOutput(result, removed, islands_lps, uncertainty, vvc, ensemble.members, levels=level_map)


def _dense_mask(volume, plan: ModelPlan) -> np.ndarray | None:
    """Voxels of the network input (normalised, (Z, Y, X) or (1, Z, Y, X)) at or above
    :data:`DENSE_BONE_HU`; None when the plan's HU window clips below that value."""
    if plan.hu_window[1] <= DENSE_BONE_HU:
        return None
    values = volume.numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    return (values >= normalised_hu(plan, DENSE_BONE_HU)).reshape(values.shape[-3:])


def _air_rule_applies(plan: ModelPlan) -> bool:
    """Whether the plan's HU window keeps values below :data:`TISSUE_MIN_HU` apart (the air rule can run)."""
    return plan.hu_window[0] < TISSUE_MIN_HU


def _air_mask(volume, plan: ModelPlan, *, labelled: np.ndarray | None = None) -> np.ndarray | None:
    """Voxels of the network input (normalised, (Z, Y, X) or (1, Z, Y, X)) whose box of half-width
    :data:`AIR_NEIGHBOURHOOD_MM` lies wholly below :data:`TISSUE_MIN_HU`, and the voxels of
    :func:`thin_objects_mask` (of the pieces with ``labelled`` voxels, if given).

    None when the plan's HU window clips below that value away (nothing to tell apart)."""
    if not _air_rule_applies(plan):
        return None
    from scipy import ndimage as ndi

    values = volume.numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    below = (values < normalised_hu(plan, TISSUE_MIN_HU)).reshape(values.shape[-3:])
    box = tuple(2 * int(round(AIR_NEIGHBOURHOOD_MM / s)) + 1 for s in plan.spacing_zyx_mm)
    # erosion by a box as a (separable) minimum filter, the image edge counting as air: the same
    # voxels as ndi.binary_erosion with np.ones(box), about 4x faster
    air = ndi.minimum_filter(below.view(np.uint8), size=box, mode="constant", cval=1).view(bool)
    air |= thin_objects_mask(~below, plan.spacing_zyx_mm, labelled=labelled)
    return air


def thin_objects_mask(tissue_zyx: np.ndarray, spacing_zyx_mm: Sequence[float],
                      max_thickness_mm: float = THIN_OBJECT_MAX_MM, *, labelled: np.ndarray | None = None) -> np.ndarray:
    """Pieces of tissue outside the body too thin to hold bone (:data:`THIN_OBJECT_MAX_MM`).

    Args:
        tissue_zyx: (Z, Y, X) bool, voxels at or above :data:`TISSUE_MIN_HU`.
        spacing_zyx_mm: voxel size (mm).
        max_thickness_mm: a piece whose thickest point in any axial slice (twice its largest
            in-plane distance to the outside) is at most this is marked.
        labelled: optional (Z, Y, X) bool, the voxels the network labelled: pieces without any
            are not measured (left unmarked; nothing there to take away).

    Returns:
        (Z, Y, X) bool: the voxels of every 6-connected piece of tissue other than the largest
        (the body) that is that thin; all False when there is one piece or none.
    """
    from scipy import ndimage as ndi

    try:  # 2 bytes per voxel while the pieces fit (they do on any CT seen here), else 4
        pieces = np.empty(tissue_zyx.shape, np.uint16)
        count = ndi.label(tissue_zyx, output=pieces)
    except RuntimeError:  # too many pieces for uint16
        pieces, count = ndi.label(tissue_zyx)
    thin = np.zeros(tissue_zyx.shape, bool)
    if count < 2:
        return thin
    sizes = _count_per_piece(pieces, count)
    sizes[0] = 0
    body = int(np.argmax(sizes))
    measured = np.ones(count + 1, bool) if labelled is None else _count_per_piece(pieces, count, labelled) > 0
    sampling_yx = (float(spacing_zyx_mm[1]), float(spacing_zyx_mm[2]))
    for index, box in enumerate(ndi.find_objects(pieces), start=1):
        if box is None or index == body or not measured[index]:
            continue
        piece = pieces[box] == index
        if _thinner_than(piece, sampling_yx, max_thickness_mm):
            thin[box] |= piece
    return thin


def _count_per_piece(pieces_zyx: np.ndarray, count: int, where_zyx: np.ndarray | None = None) -> np.ndarray:
    """Voxels of each piece label 0..count (within ``where_zyx``), counted a block of slices at a
    time: ``np.bincount`` of the whole label volume makes an int64 copy of it (8 bytes per voxel,
    600 MB on a 512 x 512 x 600 CT's grid)."""
    counts = np.zeros(count + 1, np.int64)
    step = max(1, (1 << 22) // max(int(np.prod(pieces_zyx.shape[1:])), 1))
    for z0 in range(0, pieces_zyx.shape[0], step):
        block = pieces_zyx[z0 : z0 + step]
        values = block.ravel() if where_zyx is None else block[where_zyx[z0 : z0 + step]]
        counts += np.bincount(values, minlength=count + 1)
    return counts


def _thinner_than(piece_zyx: np.ndarray, sampling_yx: tuple[float, float], max_thickness_mm: float) -> bool:
    """Whether a piece is nowhere thicker than ``max_thickness_mm`` in any of its axial slices
    (twice its largest in-plane distance to the outside), measured slice by slice (2-D distance
    transforms) and stopping at the first thick one."""
    from scipy import ndimage as ndi

    for section in piece_zyx:
        if not section.any():
            continue
        framed = np.pad(section, 1)  # the box's own edge is outside the piece
        if 2.0 * float(ndi.distance_transform_edt(framed, sampling=sampling_yx).max()) > max_thickness_mm:
            return False
    return True


def _lookup(values_zyx: np.ndarray, table: Sequence[int]) -> np.ndarray:
    """Map integer labels through ``table`` (value -> new value), as uint8."""
    return np.asarray(table, dtype=np.uint8)[values_zyx]


def _level_map(classes_grid: np.ndarray, labels_grid: np.ndarray, smoothed_zyx: np.ndarray, network_grid: ImageGrid,
               ct: ImageGrid, plan: ModelPlan, spacing_zyx, kernel_mm: float) -> sitk.Image:
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
    return ct.stamp(sitk.GetImageFromArray(smooth_levels.astype(np.uint8)))


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
