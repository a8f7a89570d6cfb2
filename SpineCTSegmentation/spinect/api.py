"""Python API: one function per ``spinect`` CLI verb (TotalSegmentator's rule: one call = one command).

==========================  ==================================================
``spinect segment``         :func:`segment`
``spinect segment-batch``   :func:`segment_batch`
``spinect phantom``         :func:`phantom`
``spinect train``           :func:`train`
``spinect evaluate``        :func:`evaluate`
``spinect triangles``       :func:`triangles` (alias :func:`measure_kambin`)
``spinect report``          :func:`report`
==========================  ==================================================

>>> from spinect.api import segment
>>> result = segment("ct.nii.gz", "ct.seg.nrrd")          # doctest: +SKIP
>>> result.voxel_counts()                                   # doctest: +SKIP
{'background': ..., 'bone': ..., 'nerve': ...}
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from spinect.errors import ModelError, SpinectError
from spinect.plan import ModelPlan

__all__ = [
    "segment",
    "segment_batch",
    "phantom",
    "train",
    "evaluate",
    "triangles",
    "measure_kambin",
    "open_triangles",
    "report",
    "SegmentationResult",
    "ProgressCallback",
    "resolve_model_path",
    "STAGE_WEIGHTS",
]

log = logging.getLogger("spinect")

#: ``progress(stage, overall_fraction, message)``; stages: read, resample, infer, postprocess, write, done.
ProgressCallback = Callable[[str, float, str], None]

#: Removed islands named one by one in the log; the rest are counted.
_ISLANDS_LOGGED = 10

#: Share of the whole run given to each stage when reporting an overall fraction.
STAGE_WEIGHTS = {"read": 0.05, "resample": 0.05, "infer": 0.80, "postprocess": 0.05, "write": 0.05}


@dataclass(frozen=True)
class SegmentationResult:
    """What :func:`segment` produced.

    Attributes:
        labels: UInt8 label image on the input CT's grid (0 background, 1 bone, 2 nerve).
        output_path: the file written, or None when no output was requested.
        plan: the model's plan; ``model_path`` the model file used.
        device: the torch device the network ran on.
        timings_s: seconds per stage (read, resample, normalise, windows, network, stitching,
            argmax, islands, resample back, smooth, write).
        window_counts: ``windows run`` and ``windows skipped`` (air) by the sliding window.
        peak_rss_mb / peak_vram_mb: peak host memory of the process and peak CUDA memory (None on CPU).
        removed_islands: false-positive islands removed (class, voxels, volume_mm3, centroid_lps_mm,
            distance_mm, reason); empty with ``keep_islands``.
        uncertainty: vote-entropy map (nats) on the input grid with ``tta``/``ensemble``, else None.
        vvc: {class: volume variation coefficient sigma/mu} with ``tta``/``ensemble``.
        review: :class:`spinect.uncertainty.ReviewRegion` list, most uncertain first.
        members: ensemble members (models x flips); 1 for plain inference.
        provenance: spinect/torch versions, model name/version/sha256 and the label-changing
            settings as applied (:func:`spinect.io.provenance.segment_provenance`); also written
            beside every output file as ``<output>.provenance.json``.
        levels: with ``levels=True``, the level map on the input grid (0 none, k =
            :data:`spinect.plan.LEVEL_NAMES` ``[k - 1]``), else None.
    """

    labels: sitk.Image
    output_path: Path | None
    plan: ModelPlan
    model_path: Path
    device: str
    timings_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    peak_vram_mb: float | None = None
    removed_islands: list[dict] = field(default_factory=list)
    uncertainty: sitk.Image | None = None
    vvc: dict[str, float] | None = None
    review: list = field(default_factory=list)
    members: int = 1
    window_counts: dict[str, int] = field(default_factory=dict)
    levels: sitk.Image | None = None
    provenance: dict = field(default_factory=dict)

    def voxel_counts(self) -> dict[str, int]:
        """Voxels per class name on the input grid."""
        names = self.plan.label_names
        # One comparison per class: np.bincount would first copy a uint8 volume into int64 (1.6 s and
        # 630 MB for 512x512x300 voxels, against 0.03 s; docs/benchmarks.md, whole process).
        labels = sitk.GetArrayViewFromImage(self.labels)
        result = {name: int(np.count_nonzero(labels == i)) for i, name in enumerate(names)}
        if self.levels is not None:
            from spinect.plan import LEVEL_MAP_NAMES

            level_counts = np.bincount(sitk.GetArrayViewFromImage(self.levels).ravel(), minlength=len(LEVEL_MAP_NAMES))
            result.update({name: int(level_counts[i]) for i, name in enumerate(LEVEL_MAP_NAMES) if i > 0})
        return result


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """The given model file, or the shipped default model; clear error if neither exists."""
    from spinect.model_file import default_model_path

    if model is not None:
        return Path(model)
    path = default_model_path()
    if not path.is_file():
        raise ModelError(
            f"no default model is installed at {path}; pass --model with a model trained by `spinect train`"
        )
    return path


def segment(
    input: str | os.PathLike | sitk.Image,
    output: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike | None = None,
    device: str = "auto",
    smoothing_mm: float | None = None,
    blend: str | None = None,
    stride_zyx: tuple[int, int, int] | None = None,
    batch_size: int = 4,
    tta: bool = False,
    ensemble: Sequence[str | os.PathLike] = (),
    keep_islands: bool = False,
    whole_volume: bool = False,
    uncertainty_output: str | os.PathLike | None = None,
    review_output: str | os.PathLike | None = None,
    review_top_k: int = 20,
    overwrite: bool = True,
    allow_untrained: bool = False,
    force: bool = False,
    allow_gaps: bool = False,
    progress: ProgressCallback | None = None,
    levels: bool = False,
    dicom_seg_output: str | os.PathLike | None = None,
    level_model: str | os.PathLike | None = None,
) -> SegmentationResult:
    """Segment lumbosacral bone and nerves on a CT (``spinect segment``).

    Args:
        input: CT file (NIfTI, NRRD, MHA), DICOM series folder, or a SimpleITK image in HU.
        output: label file to write (``.seg.nrrd`` for Slicer, or ``.nii.gz``/``.nrrd``/``.mha``
            label map on the input grid), or None to only return the labels.
        model: model file (``.pt``) written by ``spinect train``; None = the shipped default.
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        smoothing_mm: median smoothing kernel, mm (default: the plan's, 1.5; 0 = off).
        blend: ``sum`` (SPINECT) or ``gaussian``; default: the plan's.
        stride_zyx: sliding-window stride in voxels; default: the plan's (20, 40, 40).
        batch_size: windows per network call.
        tta: flip test-time augmentation (4 in-plane flips per model) for uncertainty.
        ensemble: further model files; their predictions are fused with ``model``'s.
        keep_islands: keep isolated false-positive islands (removed and reported by default).
        whole_volume: run every window inside the body; by default windows farther than 30 mm from
            any bone-dense voxel (>= 150 HU) are skipped (the same labels within 30 mm of bone;
            on a 512×512×300 CT 40 % fewer windows; see :mod:`spinect.pipeline`).
        uncertainty_output: write the vote-entropy map here (needs ``tta`` or ``ensemble``).
        review_output: write the top uncertain regions here (``.csv`` or ``.json``).
        review_top_k: how many regions the review list holds.
        overwrite: replace an existing output file (always atomically).
        allow_untrained: accept a model whose plan says ``untrained`` (for tests only).
        force: run even when the work is beyond sane bounds: more than :data:`MAX_WINDOWS` sliding
            windows, or an estimated :data:`MAX_MEMORY_BYTES` of working memory
            (:func:`estimate_memory`); refused with a :class:`SpinectError` otherwise.
        allow_gaps: a DICOM series with missing slices is resampled onto an even grid (with a
            warning; the labels are on that grid) instead of refused; recorded in the provenance
            sidecars as ``input_resampled`` (:func:`spinect.io.reading.gap_resampling`).
        progress: optional ``progress(stage, overall_fraction, message)`` callback.
        levels: also label the vertebral level of the bone (L1-L5, sacrum). ``.seg.nrrd`` output
            gets the level segments in a second layer (bone and nerve stay whole); a label-image
            output gets a second file ``<name>_levels<suffix>`` (0 none, 1-6 = L1-L5, sacrum).
            The levels come from ``model`` if its plan has level classes and no ``level_model``
            is given, else from ``level_model`` (default: the shipped level model), whose levels
            are carried onto ``model``'s bone (:func:`spinect.pipeline.transfer_levels`).
        level_model: a level model (``spinect train --classes levels``) for ``levels``.
        dicom_seg_output: also write a DICOM SEG (``.dcm``) referencing the source series; needs a
            DICOM input (:mod:`spinect.io.dicom_seg`). An ``output`` ending in ``.dcm`` means the same.

    Raises:
        InputError, OutputError, ModelError: with a message naming the problem; nothing is written.
    """
    import torch

    from spinect.inference import resolve_device
    from spinect.io import check_output_path, read_ct
    from spinect.io.provenance import write_sidecars
    from spinect.model_file import load_model
    from spinect.pipeline import BONE_MARGIN_MM, segment_image
    from spinect.profiling import StageTimer, peak_rss_mb

    _check_segment_options(smoothing_mm, stride_zyx, batch_size)
    output, dicom_seg_output = _dicom_seg_split(output, dicom_seg_output)
    dicom_sources = _dicom_seg_sources(input, dicom_seg_output, overwrite)
    report = _Reporter(progress)
    wants_uncertainty = tta or bool(ensemble)
    if (uncertainty_output or review_output) and not wants_uncertainty:
        raise SpinectError("an uncertainty map or review list needs --tta or --ensemble MODEL (several predictions to compare)")
    for path in (output, uncertainty_output, review_output):
        if path is not None:
            check_output_path(path, overwrite=overwrite)  # fail before minutes of work, not after
    model_path = resolve_model_path(model)
    _refuse_clashing_paths({"input CT": None if isinstance(input, sitk.Image) else input, "model": model_path,
                            "output": output, "--uncertainty": uncertainty_output, "--review": review_output,
                            "DICOM SEG output": dicom_seg_output})
    torch_device = resolve_device(device)
    network, plan = load_model(model_path, device=torch_device, allow_untrained=allow_untrained)
    level_network = level_plan = level_path = None
    if level_model is not None and not levels:
        raise SpinectError("--level-model is used only with --levels; add --levels or leave out --level-model")
    if levels and (level_model is not None or not plan.has_levels):
        level_network, level_plan, level_path = _load_level_model(level_model, torch_device, allow_untrained)
    if levels and output is not None:
        from spinect.io.writing import levels_output_path

        check_output_path(levels_output_path(output), overwrite=overwrite)
    networks = [network] + [_load_compatible(p, plan, torch_device, allow_untrained) for p in ensemble]
    if plan.training_status != "trained":
        log.warning("model %s is marked %r: its labels are not meaningful for patients", model_path, plan.training_status)
    timer = StageTimer()
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)

    header = None if isinstance(input, sitk.Image) else _header_geometry(input)
    if header is not None:  # a huge CT is refused before it is read, not after
        _check_window_count(header, plan, stride_zyx, force=force)
        _check_memory(header, plan, force=force)
    report("read", 0.0, f"reading {input if not isinstance(input, sitk.Image) else 'image'}")
    with timer.stage("read"):
        ct = _in_memory_ct(input) if isinstance(input, sitk.Image) else read_ct(input, allow_gaps=allow_gaps)
    resampled = _refuse_resampled_dicom_seg(ct, dicom_seg_output)
    if header is None or tuple(ct.GetSize()) != header.size:  # DICOM (a file names its series), in-memory image
        _check_window_count(ct, plan, stride_zyx, force=force)
        _check_memory(ct, plan, force=force)
    report("resample", 0.0, f"CT {ct.GetSize()} voxels, spacing {tuple(round(s, 3) for s in ct.GetSpacing())} mm")

    def on_window(done: int, total: int) -> None:
        report("infer", done / max(total, 1), f"window {done}/{total}")

    out = segment_image(
        ct, networks, plan, device=torch_device, smoothing_mm=smoothing_mm, blend=blend, stride_zyx=stride_zyx,
        batch_size=batch_size, tta=tta, remove_islands=not keep_islands, window_progress=on_window, timer=timer,
        bone_margin_mm=None if whole_volume else BONE_MARGIN_MM, levels=levels and level_network is None,
    )
    if level_network is not None:
        report("infer", 1.0, "vertebral levels (level model)")
        with timer.stage("level model"):
            from spinect.pipeline import transfer_levels

            coarse = segment_image(ct, level_network, level_plan, device=torch_device, batch_size=batch_size,
                                   levels=True, smoothing_mm=0.0, bone_margin_mm=None if whole_volume else BONE_MARGIN_MM)
            out = dataclasses.replace(out, levels=transfer_levels(out.labels, coarse.levels))
    report("postprocess", 1.0, "smoothed and resampled to the input grid")
    islands = [_island_dict(r, lps, plan) for r, lps in zip(out.removed_islands, out.removed_islands_lps_mm)]
    for island in islands[:_ISLANDS_LOGGED]:
        log.info("removed %s island: %d voxels (%.0f mm³) at LPS %s mm, %.1f mm from the kept anatomy",
                 island["class_name"], island["voxels"], island["volume_mm3"],
                 tuple(round(v, 1) for v in island["centroid_lps_mm"]), island["distance_mm"])
    if len(islands) > _ISLANDS_LOGGED:
        log.info("... and %d smaller islands (all listed in the result's removed_islands)", len(islands) - _ISLANDS_LOGGED)
    review = []
    if out.uncertainty is not None:
        from spinect.uncertainty import uncertain_regions

        review = uncertain_regions(out.uncertainty, out.labels, class_names=plan.label_names, top_k=review_top_k)
    written = None
    report("write", 0.0, f"writing {output}")
    with timer.stage("write"):
        _write_outputs(out, review, output=output, uncertainty_output=uncertainty_output,
                       review_output=review_output, plan=plan, overwrite=overwrite)
        written = Path(output) if output is not None else None
        provenance = _provenance(input, model_path, plan, ensemble, str(torch_device), smoothing_mm=smoothing_mm,
                                 blend=blend, stride_zyx=stride_zyx, tta=tta, keep_islands=keep_islands,
                                 whole_volume=whole_volume, levels=levels)
        if resampled is not None:  # --allow-gaps resampled the series: the labels are on that grid
            provenance["input_resampled"] = resampled
        if level_path is not None:  # the levels came from a second model
            from spinect.io.provenance import model_identity

            provenance["level_model"] = model_identity(level_path, level_plan)
        if dicom_seg_output is not None:
            from spinect.io.dicom_seg import write_result_dicom_seg

            provenance = write_result_dicom_seg(out.labels, dicom_seg_output, source_files=dicom_sources, plan=plan,
                                                provenance=provenance, levels=out.levels, overwrite=overwrite)
            written = written or Path(dicom_seg_output)
        write_sidecars({"segmentation": output, "levels": _levels_file(output, out.levels),
                        "uncertainty": uncertainty_output, "review": review_output, "dicom-seg": dicom_seg_output},
                       provenance, overwrite=overwrite)
    report("done", 1.0, "finished")
    vram = torch.cuda.max_memory_allocated(torch_device) / 2**20 if torch_device.type == "cuda" else None
    return SegmentationResult(
        labels=out.labels, output_path=written, plan=plan, model_path=model_path, device=str(torch_device),
        timings_s=dict(timer.seconds), peak_rss_mb=peak_rss_mb(), peak_vram_mb=vram, removed_islands=islands,
        uncertainty=out.uncertainty, vvc=out.vvc, review=review, members=out.members,
        window_counts=dict(timer.counts), levels=out.levels, provenance=provenance,
    )


def _refuse_resampled_dicom_seg(ct: sitk.Image, dicom_seg_output) -> dict | None:
    """What ``--allow-gaps`` did to the CT (None: nothing); a DICOM SEG of a resampled series is refused."""
    from spinect.errors import InputError
    from spinect.io.reading import gap_resampling

    resampled = gap_resampling(ct)
    if resampled is not None and dicom_seg_output is not None:
        raise InputError(
            "--allow-gaps resampled the DICOM series onto an even grid, so its labels do not lie on the source "
            "slices that a DICOM SEG must reference; write a .seg.nrrd or .nii.gz label map instead, or export the "
            "complete series again"
        )
    return resampled


def _levels_file(output, levels) -> Path | None:
    """The separate level-map file written beside a label-image output (None for .seg.nrrd or no levels)."""
    if output is None or levels is None:
        return None
    from spinect.io.writing import levels_output_path

    path = levels_output_path(output)
    return None if path == Path(output) else path


def _dicom_seg_split(output, dicom_seg_output):
    """An ``output`` ending in ``.dcm`` is the DICOM SEG: (label output, DICOM SEG output)."""
    from spinect.io.atomic import full_suffix

    if output is None or full_suffix(output) != ".dcm":
        return output, dicom_seg_output
    if dicom_seg_output is not None:
        raise SpinectError(f"two DICOM SEG outputs ({output} and --dicom-seg {dicom_seg_output}); give one")
    return None, output


def _dicom_seg_sources(input, dicom_seg_output, overwrite: bool):
    """The source slices of a DICOM SEG output, checked before any computation (None without one)."""
    if dicom_seg_output is None:
        return None
    from spinect.io.dicom_seg import check_dicom_seg_request

    return check_dicom_seg_request(input, dicom_seg_output, overwrite=overwrite)


def _provenance(input, model_path, plan: ModelPlan, ensemble, device: str, **settings) -> dict:
    """What made this result (:func:`spinect.io.provenance.segment_provenance`); settings as applied."""
    from spinect.io.provenance import segment_provenance, segment_settings

    return segment_provenance(
        input=None if isinstance(input, sitk.Image) else input, model_path=model_path, plan=plan, ensemble=ensemble,
        settings=segment_settings(plan, ensemble=ensemble, **settings), label_names=plan.label_names, device=device)


def _load_level_model(level_model, device, allow_untrained: bool):
    """The level model for ``levels`` (given, or the shipped one); refused if it names no levels."""
    from spinect.model_file import default_level_model_path, load_model

    path = Path(level_model) if level_model is not None else default_level_model_path()
    if level_model is None and not path.is_file():
        raise ModelError("--levels needs a model that labels vertebral levels: the model has no level classes and no "
                         f"level model is installed at {path}; pass --level-model with a model trained by "
                         "`spinect train --classes levels`, or omit --levels")
    network, plan = load_model(path, device=device, allow_untrained=allow_untrained)
    if not plan.has_levels:
        raise ModelError(f"--levels needs a model that labels vertebral levels, but {path} predicts only "
                         f"{', '.join(plan.class_names[1:])}; pass --level-model with a level model "
                         "(trained with `spinect train --classes levels`) or omit --levels")
    return network, plan, path


def _in_memory_ct(image: sitk.Image) -> sitk.Image:
    """Validate an in-memory CT and cast it to float32 HU, exactly as :func:`read_ct` does for files."""
    from spinect.io import validate_ct

    validate_ct(image, source="the input image")
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)


def _island_dict(island, centroid_lps_mm, plan: ModelPlan) -> dict:
    return {"class_name": plan.label_names[island.label_value], "voxels": island.voxels,
            "volume_mm3": island.volume_mm3, "centroid_lps_mm": tuple(centroid_lps_mm),
            "distance_mm": island.distance_mm, "reason": island.reason}


#: More sliding windows than this is a mistake (a stride of 1), not a CT: refuse before hours of work.
MAX_WINDOWS = 200_000


def _check_segment_options(smoothing_mm, stride_zyx, batch_size) -> None:
    """Refuse option values that would crash deep inside, hang, or silently do nothing useful.

    Raises:
        SpinectError: naming the option, the value and the allowed range.
    """
    if smoothing_mm is not None:
        if (not isinstance(smoothing_mm, (int, float, np.integer, np.floating)) or isinstance(smoothing_mm, bool)
                or not 0.0 <= smoothing_mm <= 10.0):  # NaN fails too; no float(): a huge int would overflow
            raise SpinectError(f"--smoothing-mm must be a number of mm within 0-10 (0 = off), got {smoothing_mm!r}")
    if stride_zyx is not None:
        if (not isinstance(stride_zyx, (tuple, list, np.ndarray)) or len(stride_zyx) != 3
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 1 <= v <= 100_000
                           for v in stride_zyx)):
            raise SpinectError(f"--stride must be 3 positive integers (voxels along z y x), got {stride_zyx!r}")
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or not 1 <= batch_size <= 1024:
        raise SpinectError(f"--batch-size must be an integer within 1-1024, got {batch_size!r}")


@dataclass(frozen=True)
class _HeaderGeometry:
    """Size and spacing (x, y, z) of an image file from its header, for the work checks."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]

    def GetSize(self) -> tuple[int, ...]:  # noqa: N802 - the SimpleITK names the checks call
        return self.size

    def GetSpacing(self) -> tuple[float, ...]:  # noqa: N802
        return self.spacing


def _header_geometry(path) -> _HeaderGeometry | None:
    """The header's size and spacing of a single image file, without reading its voxels; None for
    a DICOM folder or a header that cannot be read (reading the CT then reports the problem)."""
    path = Path(path)
    try:
        str(path).encode("utf-8")  # SimpleITK aborts the process on a name that is not UTF-8
    except UnicodeEncodeError:
        return None  # read_ct refuses it with a clear message
    if not path.is_file():
        return None
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size, spacing = tuple(int(v) for v in reader.GetSize()), tuple(float(v) for v in reader.GetSpacing())
    except Exception:  # noqa: BLE001 - any unreadable header is left to read_ct's clear error
        return None
    if len(size) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        return None
    return _HeaderGeometry(size, spacing)


def _network_grid_shape(ct: sitk.Image, plan: ModelPlan) -> np.ndarray:
    """(z, y, x) voxel counts of the CT's extent on the network's grid (the plan's spacing, 1 mm)."""
    extent_mm = np.asarray(ct.GetSize()[::-1], float) * np.asarray(ct.GetSpacing()[::-1], float)
    return np.ceil(extent_mm / np.asarray(plan.spacing_zyx_mm, float))


def _check_window_count(ct: sitk.Image, plan: ModelPlan, stride_zyx, *, force: bool = False) -> None:
    """Estimate the sliding windows on the network's grid; refuse absurd counts (hours of work) unless ``force``."""
    voxels = _network_grid_shape(ct, plan)
    stride = np.asarray(stride_zyx if stride_zyx is not None else plan.stride_zyx, float)
    patch = np.asarray(plan.patch_size_zyx, float)
    if np.any(stride > patch):
        raise SpinectError(
            f"--stride {tuple(int(v) for v in stride)} is larger than the network's window {tuple(int(v) for v in patch)}: "
            "voxels between windows would never be labelled; use a stride no larger than the window"
        )
    windows = int(np.prod(np.ceil(np.maximum(voxels - patch, 0) / stride) + 1))
    if windows > MAX_WINDOWS:
        message = (f"this CT needs about {windows:,} sliding windows with stride {tuple(int(v) for v in stride)} (limit "
                   f"{MAX_WINDOWS:,}); that would run for hours")
        if force:
            log.warning("%s; running anyway (--force)", message)
            return
        raise SpinectError(f"{message}. Use the default stride {tuple(plan.stride_zyx)} or a smaller CT, or add --force "
                           "to run anyway")


#: Refuse a segmentation whose working arrays would need more memory than this (``--force`` overrides).
MAX_MEMORY_BYTES = 16 * 2**30


def estimate_memory(ct: sitk.Image, plan: ModelPlan) -> tuple[int, int]:
    """Working memory of a segmentation, estimated from the CT's header before any work.

    Counted on the network's grid (the plan's spacing, 1 mm: the CT's extent, not its voxel count,
    decides): the float32 input, the blended class scores (``num_classes`` float32), the blending
    weights (float32) and the labels (uint8). The network's windows themselves are small and fixed.

    Returns:
        (voxels on the network grid, bytes).
    """
    voxels = int(np.prod(_network_grid_shape(ct, plan)))
    bytes_per_voxel = 4 + 4 * plan.num_classes + 4 + 1
    return voxels, voxels * bytes_per_voxel


def _check_memory(ct: sitk.Image, plan: ModelPlan, *, force: bool = False) -> None:
    """Refuse a segmentation estimated to need more than :data:`MAX_MEMORY_BYTES` unless ``force``."""
    voxels, needed = estimate_memory(ct, plan)
    if needed <= MAX_MEMORY_BYTES:
        return
    shape = tuple(int(v) for v in _network_grid_shape(ct, plan))
    extent = tuple(round(n * s) for n, s in zip(ct.GetSize(), ct.GetSpacing()))
    def xyz(values) -> str:
        return " x ".join(f"{v:g}" for v in values)

    message = (f"this CT spans {xyz(extent)} mm ({xyz(ct.GetSize())} voxels of {xyz(round(v, 3) for v in ct.GetSpacing())} "
               f"mm), which is {voxels:,} voxels ({xyz(shape[::-1])}) on the network's "
               f"{xyz(plan.spacing_zyx_mm[::-1])} mm grid: about {needed / 2**30:.1f} GiB of working memory "
               f"(limit {MAX_MEMORY_BYTES / 2**30:.0f} GiB)")
    if force:
        log.warning("%s; running anyway (--force)", message)
        return
    raise SpinectError(f"{message}. Check the voxel size in the header (a wrong header makes a small CT look huge), "
                       "crop the CT to the lumbar spine, or add --force to run anyway")


def _refuse_clashing_paths(paths: dict[str, str | os.PathLike | None]) -> None:
    """Two roles may never name one file: the output would destroy the input, or one output another.

    Raises:
        SpinectError: two of the given paths are one file (same resolved path, or hard links
            to the same inode).
    """
    seen: dict[object, tuple[str, str]] = {}
    for role, value in paths.items():
        if value is None:
            continue
        resolved = Path(value).resolve()
        keys = [resolved]
        if resolved.exists():
            stat = resolved.stat()
            keys.append((stat.st_dev, stat.st_ino))
        for key in keys:
            if key in seen:
                other_role, other_value = seen[key]
                raise SpinectError(
                    f"the {role} ({value}) and the {other_role} ({other_value}) are the same file; writing would "
                    "destroy it. Give the output another name"
                )
        seen.update({key: (role, str(value)) for key in keys})


def _write_outputs(out, review, *, output, uncertainty_output, review_output, plan: ModelPlan, overwrite: bool) -> None:
    from spinect.io import write_image, write_labelmap
    from spinect.uncertainty import write_review

    if output is not None:
        write_labelmap(out.labels, output, class_names=plan.label_names, overwrite=overwrite, levels=out.levels)
    if uncertainty_output is not None:
        write_image(out.uncertainty, uncertainty_output, overwrite=overwrite)
    if review_output is not None:
        write_review(review, review_output)


def _load_compatible(path, plan: ModelPlan, device, allow_untrained: bool):
    """Load an ensemble member; its preprocessing must match the first model's."""
    from spinect.model_file import load_model

    network, other = load_model(path, device=device, allow_untrained=allow_untrained)
    same = (other.class_names == plan.class_names and other.spacing_zyx_mm == plan.spacing_zyx_mm
            and other.hu_window == plan.hu_window and other.patch_size_zyx == plan.patch_size_zyx
            and abs(other.intensity_mean - plan.intensity_mean) <= 0.01 * plan.intensity_std
            and abs(other.intensity_std - plan.intensity_std) <= 0.01 * plan.intensity_std)
    if not same:
        raise ModelError(f"ensemble member {path} preprocesses differently from the first model "
                         "(classes, spacing, HU window, patch or normalisation); ensemble models of one training setup")
    return network


class _Reporter:
    """Turns (stage, fraction within stage) into an overall fraction for the callback."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._order = list(STAGE_WEIGHTS)

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        if self._callback is None:
            return
        if stage == "done":
            self._callback(stage, 1.0, message)
            return
        before = sum(STAGE_WEIGHTS[s] for s in self._order[: self._order.index(stage)])
        self._callback(stage, min(1.0, before + STAGE_WEIGHTS[stage] * fraction), message)


def segment_batch(
    inputs: Sequence[str | os.PathLike] = (),
    *,
    list_file: str | os.PathLike | None = None,
    out_dir: str | os.PathLike,
    suffix: str = ".nii.gz",
    csv_path: str | os.PathLike | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
    **segment_options,
):
    """``spinect segment-batch INPUTS... | --list cases.csv --out DIR``: segment a cohort with one loaded model.

    Each case is :func:`segment` (same checks, atomic outputs, provenance sidecars) written to
    ``OUT_DIR/<case><suffix>``; the model is loaded once. Cases whose output and sidecar exist are
    skipped (resume); a failing case is recorded and the batch goes on; the per-case CSV (status,
    error, timings, volumes) is rewritten atomically after each case. See :mod:`spinect.batch`.

    Args:
        inputs: CT files or DICOM folders; ``list_file``: a CSV with an ``input`` column (and
            optionally ``case``), relative paths relative to its folder. Either or both.
        out_dir: output folder (created if missing); ``suffix``: output format.
        csv_path: the per-case CSV (default ``OUT_DIR/segment-batch.csv``).
        progress: optional ``progress(done, total, row)`` after each case.
        segment_options: :func:`segment` options for every case (``model``, ``device``,
            ``smoothing_mm``, ``batch_size``, ``keep_islands``, ``whole_volume``, ``levels``, ...;
            :data:`spinect.batch.SEGMENT_OPTIONS`).

    Returns:
        :class:`spinect.batch.BatchResult` (``rows``, ``csv_path``, ``counts``, ``failed``).

    Raises:
        InputError, OutputError, SpinectError: no case, two cases with one output name, a bad case
            list, an unknown option or an unusable output folder, before any case runs.
    """
    from spinect.batch import collect_cases, run_batch

    cases = collect_cases(inputs, list_file=list_file, out_dir=out_dir, suffix=suffix)
    return run_batch(cases, csv_path=csv_path, progress=progress, **segment_options)


def phantom(out_dir: str | os.PathLike, *, n: int = 1, seed: int = 0, **options) -> list[Path]:
    """``spinect phantom OUT_DIR --n N --seed S ...``: write synthetic lumbosacral CT cases with truth.

    ``options`` are those of :func:`spinect.phantom.make_phantom` (``shape_zyx``,
    ``spacing_zyx_mm``, ``randomise_appearance``, ``appearance``, ``preview``, ``degeneration``, ``progress``).
    Returns the case folders written.
    """
    from spinect.phantom import make_phantom

    return make_phantom(out_dir, n=n, seed=seed, **options)


def train(data: str | os.PathLike, out: str | os.PathLike, **options):
    """``spinect train DATA --out RUN_DIR ...``: train a SPINECT model (SPINECT's recipe by default).

    ``options`` are the fields of :class:`spinect.train.TrainingConfig` (``fold``, ``folds``,
    ``epochs``, ``iterations``, ``base_width``, ``device``, ``resume``, ...). Returns
    :class:`spinect.train.TrainingResult` (``best_model`` is a model file :func:`segment` takes).
    """
    from spinect.train import TrainingConfig
    from spinect.train import train as run_training

    return run_training(TrainingConfig(data=Path(data), out=Path(out), **options))


def evaluate(
    out_dir: str | os.PathLike,
    *,
    pred: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    cases: Sequence[str] | None = None,
    device: str = "auto",
    class_names: Sequence[str] = ("background", "bone", "nerve"),
    resample_prediction: bool = False,
    show_progress: bool = False,
    overwrite: bool = False,
):
    """``spinect evaluate``: score predictions against labels, or a model on a dataset.

    Give ``pred`` and ``labels`` (files or folders matched by case id), or ``data`` (a dataset
    folder; ``model`` defaults to the shipped model). Writes the per-case CSV, the summary CSV,
    the Table-2-style Markdown and a box plot into ``out_dir`` (refused if it already holds a
    report, unless ``overwrite``). Returns ``(EvaluationResult, EvaluationFiles)`` of :mod:`spinect.metrics`.
    """
    from spinect.commands.evaluate import _model_pairs, run_evaluation
    from spinect.errors import InputError
    from spinect.metrics import check_report_folder, match_case_files

    if data is not None or model is not None:
        if pred is not None or labels is not None:
            raise InputError("give either pred/labels (score files) or model/data (segment a dataset), not both")
        if data is None:
            raise InputError("model needs data=DATASET_FOLDER to segment")
        pairs = _model_pairs(None if model is None else Path(model), Path(data),
                             cases=",".join(cases) if cases else None, device=device)
    elif pred is None or labels is None:
        raise InputError("give pred= and labels=, or data= (and optionally model=)")
    else:
        pairs = match_case_files(pred, labels)
    check_report_folder(Path(out_dir), overwrite=overwrite)
    return run_evaluation(pairs, Path(out_dir), class_names=tuple(class_names),
                          resample_prediction=resample_prediction, show_progress=show_progress)


def triangles(seg, *, level: str, side: str, **options):
    """``spinect triangles SEG --level L --side S ...``: Kambin / safe triangle and best oblique view.

    ``options`` are those of :func:`spinect.geometry.measure.measure_triangle` (``triangle``,
    ``ct``, ``points_lps_mm``, ``seed_lps_mm``, ``auto``, ``structures``, ``optimize``,
    ``json_path``, ``heatmap_path``, ...). Returns its :class:`TrianglesResult`.
    """
    from spinect.geometry.measure import measure_triangle

    return measure_triangle(seg, level=level, side=side, **options)


def open_triangles(seg, *, level: str, side: str, **options):
    """A :class:`spinect.geometry.TriangleSession` on ``seg``: read, crop, fields and frame once,
    then ``session.measure(mode, theta_deg=..., phi_deg=..., points_lps_mm=...)`` per view and
    ``session.optimize(...)`` (what :func:`triangles` does once; the same numbers).

    ``options`` are those of :meth:`TriangleSession.open` (``triangle``, ``ct``, ``structures``,
    ``endplate_lps_mm``, ``around_lps_mm``, ``auto``, ``reach_skin``, ...).
    """
    from spinect.geometry.session import TriangleSession

    return TriangleSession.open(seg, level=level, side=side, **options)


def measure_kambin(seg, *, level: str, side: str, **options):
    """:func:`triangles` with ``triangle="kambin"`` (the common case, named for readers of the papers)."""
    return triangles(seg, level=level, side=side, triangle="kambin", **options)


def report(output: str | os.PathLike, *, seg=None, triangles: Sequence[str | os.PathLike] = (), provenance=None,
           ct=None, case_id: str | None = None, pdf: str | os.PathLike | None = None, overwrite: bool = True):
    """``spinect report OUT.html --seg SEG --triangles T.json ...``: one HTML page (and PDF) for a case.

    Returns ``{"html": path, "pdf": path}`` (``pdf`` only when asked). See :mod:`spinect.report`.
    """
    from spinect.report import gather_report, write_report

    content = gather_report(seg=seg, triangles=triangles, provenance=provenance, ct=ct, case_id=case_id)
    return write_report(content, output, pdf=pdf, overwrite=overwrite)
