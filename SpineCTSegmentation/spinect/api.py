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
from spinect.requests import (EvaluateRequest, PhantomRequest, ReportRequest, RequestError, SegmentRequest,
                              TrianglesRequest, build_request)

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
    "serve",
    "SegmentationResult",
    "SegmentRequest",
    "TrianglesRequest",
    "EvaluateRequest",
    "PhantomRequest",
    "ReportRequest",
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
        settings: the :class:`spinect.pipeline.InferenceSettings` the inference ran with (plan
            and request resolved: precision, window skipping, island rules, smoothing, ...).
        request: the :class:`spinect.requests.SegmentRequest` that was run.
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
    settings: object | None = None
    request: SegmentRequest | None = None

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
    input: str | os.PathLike | sitk.Image | SegmentRequest | None = None,
    output: str | os.PathLike | None = None,
    *,
    request: SegmentRequest | None = None,
    progress: ProgressCallback | None = None,
    **options,
) -> SegmentationResult:
    """Segment lumbosacral bone and nerves on a CT (``spinect segment``).

    Takes a :class:`spinect.requests.SegmentRequest` (as ``request``, or as the first argument),
    or keyword arguments that make one: ``segment("ct.nii.gz", "ct.seg.nrrd", smoothing_mm=0)`` is
    ``segment(SegmentRequest(input="ct.nii.gz", output="ct.seg.nrrd", smoothing_mm=0))``. Keywords
    given with a request replace its fields. The request's fields are the options (their help
    is ``spinect segment --help``):

    Args:
        input: CT file (NIfTI, NRRD, MHA), DICOM series folder, or a SimpleITK image in HU.
        output: label file to write (``.seg.nrrd`` for Slicer, or ``.nii.gz``/``.nrrd``/``.mha``
            label map on the input grid), or None to only return the labels.
        request: the whole request (:class:`SegmentRequest`).
        progress: optional ``progress(stage, overall_fraction, message)`` callback.
        options: the other fields of :class:`SegmentRequest`: ``model`` (None = the shipped
            default), ``device``, ``smoothing_mm``/``blend``/``stride_zyx`` (None = the plan's),
            ``batch_size``, ``precision`` (auto, fp32, bf16), ``tta``, ``ensemble``,
            ``keep_islands``, ``whole_volume`` (by default windows farther than 30 mm from any
            bone-dense voxel are skipped; see :mod:`spinect.pipeline`), ``uncertainty_output``,
            ``review_output``, ``review_top_k``, ``overwrite``, ``allow_untrained``, ``force``
            (run beyond :data:`MAX_WINDOWS` windows or :data:`MAX_MEMORY_BYTES`),
            ``allow_gaps`` (resample a DICOM series with missing slices; recorded as
            ``input_resampled``), ``levels`` (also label L1-L5 and sacrum: a second layer in
            ``.seg.nrrd``, ``<name>_levels<suffix>`` beside a label image), ``level_model``,
            ``levels_by`` (``auto``: a level model if one is at hand, else counting the vertebrae
            up from the sacrum, recorded as ``provenance["levels"]``; ``model``; ``counting``: up
            from the sacrum or, without one in view, down from the last rib),
            ``dicom_seg_output`` (an ``output`` ending in ``.dcm`` means the same).

    Returns:
        :class:`SegmentationResult`; its ``settings`` and ``provenance["settings"]`` hold the
        label-changing settings as applied (also in every output's provenance sidecar).

    Raises:
        RequestError: a wrong option (before anything is read).
        InputError, OutputError, ModelError: with a message naming the problem; nothing is written.
    """
    import torch

    from spinect.inference import resolve_device
    from spinect.io import check_output_path, read_ct
    from spinect.io.provenance import write_sidecars
    from spinect.model_file import load_model
    from spinect.pipeline import InferenceSettings, network_input, segment_network_input
    from spinect.profiling import StageTimer, peak_rss_mb

    if output is not None:
        options["output"] = output
    r = _request(SegmentRequest, request, "input", input, options)
    input = r.input
    output, dicom_seg_output = _dicom_seg_split(r.output, r.dicom_seg_output)
    dicom_sources = _dicom_seg_sources(input, dicom_seg_output, r.overwrite)
    report = _Reporter(progress)
    for path in (output, r.uncertainty_output, r.review_output):
        if path is not None:
            check_output_path(path, overwrite=r.overwrite)  # fail before minutes of work, not after
    model_path = resolve_model_path(r.model)
    _refuse_clashing_paths({"input CT": None if isinstance(input, sitk.Image) else input, "model": model_path,
                            "output": output, "--uncertainty": r.uncertainty_output, "--review": r.review_output,
                            "DICOM SEG output": dicom_seg_output})
    torch_device = resolve_device(r.device)
    network, plan = load_model(model_path, device=torch_device, allow_untrained=r.allow_untrained)
    level_network = level_plan = level_path = None
    counting = r.levels and _levels_by_counting(r, plan)
    if r.levels and not counting and (r.level_model is not None or not plan.has_levels):
        level_network, level_plan, level_path = _load_level_model(r.level_model, torch_device, r.allow_untrained)
    if r.levels and output is not None:
        from spinect.io.writing import levels_output_path

        check_output_path(levels_output_path(output), overwrite=r.overwrite)
    networks = [network] + [_load_compatible(p, plan, torch_device, r.allow_untrained) for p in r.ensemble]
    if plan.training_status != "trained":
        log.warning("model %s is marked %r: its labels are not meaningful for patients", model_path, plan.training_status)
    # One settings object for the inference: the plan's defaults with the request's choices.
    settings = InferenceSettings.from_plan(plan, r, levels=r.levels and level_network is None and not counting)
    timer = StageTimer()
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)

    header = None if isinstance(input, sitk.Image) else _header_geometry(input)
    if header is not None:  # a huge CT is refused before it is read, not after
        _check_window_count(header, plan, r.stride_zyx, force=r.force)
        _check_memory(header, plan, force=r.force)
    report("read", 0.0, f"reading {input if not isinstance(input, sitk.Image) else 'image'}")
    with timer.stage("read"):
        # 16-bit CTs stay 16-bit (half the memory of float32; the same labels, bit for bit).
        ct = (_in_memory_ct(input) if isinstance(input, sitk.Image)
              else read_ct(input, allow_gaps=r.allow_gaps, keep_integer_type=True))
    resampled = _refuse_resampled_dicom_seg(ct, dicom_seg_output)
    if header is None or tuple(ct.GetSize()) != header.size:  # DICOM (a file names its series), in-memory image
        _check_window_count(ct, plan, r.stride_zyx, force=r.force)
        _check_memory(ct, plan, force=r.force)
    report("resample", 0.0, f"CT {ct.GetSize()} voxels, spacing {tuple(round(s, 3) for s in ct.GetSpacing())} mm")

    def on_window(done: int, total: int) -> None:
        report("infer", done / max(total, 1), f"window {done}/{total}")

    prepared = network_input(ct, plan, timer=timer)
    if level_network is None:
        del ct  # only its grid is needed from here on (kept in `prepared`): the CT's voxels are freed now
    out = segment_network_input(prepared, networks, plan, settings, device=torch_device, window_progress=on_window,
                                timer=timer)
    del prepared
    level_settings = None
    if level_network is not None:
        report("infer", 1.0, "vertebral levels (level model)")
        with timer.stage("level model"):
            from spinect.pipeline import transfer_levels

            level_settings = InferenceSettings.from_plan(level_plan, batch_size=r.batch_size, precision=r.precision,
                                                         levels=True, smoothing_mm=0.0,
                                                         bone_margin_mm=settings.bone_margin_mm)
            from spinect.pipeline import segment_image

            coarse = segment_image(ct, level_network, level_plan, level_settings, device=torch_device)
            out = dataclasses.replace(out, levels=transfer_levels(out.labels, coarse.levels))
    counted = None
    if counting:  # refused (nothing written) when no usable reference is in view or no lumbar level can be named
        report("infer", 1.0, "vertebral levels (counting)")
        with timer.stage("level counting"):
            from spinect.postprocess.levels_counting import ALL_REFERENCES, count_levels_image

            # auto counts from the sacrum only: a missed short 12th rib would shift every level by one
            references = ALL_REFERENCES if r.levels_by == "counting" else ("sacrum",)
            level_map, counted = count_levels_image(out.labels, bone_value=plan.label_names.index("bone"),
                                                    references=references)
            out = dataclasses.replace(out, levels=level_map)
        log.info("%s%s", counted.source, "".join(f"; {note}" for note in counted.notes))
    report("postprocess", 1.0, "smoothed and resampled to the input grid")
    islands = [_island_dict(i, lps, plan) for i, lps in zip(out.removed_islands, out.removed_islands_lps_mm)]
    for island in islands[:_ISLANDS_LOGGED]:
        log.info("removed %s island: %d voxels (%.0f mm³) at LPS %s mm, %.1f mm from the kept anatomy",
                 island["class_name"], island["voxels"], island["volume_mm3"],
                 tuple(round(v, 1) for v in island["centroid_lps_mm"]), island["distance_mm"])
    if len(islands) > _ISLANDS_LOGGED:
        log.info("... and %d smaller islands (all listed in the result's removed_islands)", len(islands) - _ISLANDS_LOGGED)
    review = []
    if out.uncertainty is not None:
        from spinect.uncertainty import uncertain_regions

        review = uncertain_regions(out.uncertainty, out.labels, class_names=plan.label_names, top_k=r.review_top_k)
    written = None
    report("write", 0.0, f"writing {output}")
    with timer.stage("write"):
        _write_outputs(out, review, output=output, uncertainty_output=r.uncertainty_output,
                       review_output=r.review_output, plan=plan, overwrite=r.overwrite)
        written = Path(output) if output is not None else None
        applied = settings.record(plan, ensemble_members=len(networks), device=torch_device)
        applied["levels"] = r.levels
        if r.levels:
            applied["levels_by"] = "counting" if counting else "model"
        provenance = _provenance(input, model_path, plan, r.ensemble, str(torch_device), applied)
        if resampled is not None:  # --allow-gaps resampled the series: the labels are on that grid
            provenance["input_resampled"] = resampled
        if level_path is not None:  # the levels came from a second model
            from spinect.io.provenance import model_identity

            provenance["level_model"] = model_identity(level_path, level_plan)
            provenance["level_model"]["settings"] = level_settings.record(level_plan, device=torch_device)
        if counted is not None:  # the levels came from counting vertebrae: how, and from which reference
            provenance["levels"] = counted.record()
        if dicom_seg_output is not None:
            from spinect.io.dicom_seg import write_result_dicom_seg

            provenance = write_result_dicom_seg(out.labels, dicom_seg_output, source_files=dicom_sources, plan=plan,
                                                provenance=provenance, levels=out.levels, overwrite=r.overwrite)
            written = written or Path(dicom_seg_output)
        write_sidecars({"segmentation": output, "levels": _levels_file(output, out.levels),
                        "uncertainty": r.uncertainty_output, "review": r.review_output, "dicom-seg": dicom_seg_output},
                       provenance, overwrite=r.overwrite)
    report("done", 1.0, "finished")
    vram = torch.cuda.max_memory_allocated(torch_device) / 2**20 if torch_device.type == "cuda" else None
    return SegmentationResult(
        labels=out.labels, output_path=written, plan=plan, model_path=model_path, device=str(torch_device),
        timings_s=dict(timer.seconds), peak_rss_mb=peak_rss_mb(), peak_vram_mb=vram, removed_islands=islands,
        uncertainty=out.uncertainty, vvc=out.vvc, review=review, members=out.members,
        window_counts=dict(timer.counts), levels=out.levels, provenance=provenance, settings=settings, request=r,
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


def _provenance(input, model_path, plan: ModelPlan, ensemble, device: str, settings: dict) -> dict:
    """What made this result (:func:`spinect.io.provenance.segment_provenance`); ``settings`` as
    applied (:meth:`spinect.pipeline.InferenceSettings.record`)."""
    from spinect.io.provenance import segment_provenance

    return segment_provenance(
        input=None if isinstance(input, sitk.Image) else input, model_path=model_path, plan=plan, ensemble=ensemble,
        settings=settings, label_names=plan.label_names, device=device)


def _levels_by_counting(r: SegmentRequest, plan: ModelPlan) -> bool:
    """True if ``--levels`` counts the vertebrae (:mod:`spinect.postprocess.levels_counting`) rather
    than using a level model: ``--levels-by counting``, or ``auto`` with no level model at hand
    (none given, the model has no level classes and none is installed)."""
    if r.levels_by != "auto":
        return r.levels_by == "counting"
    if r.level_model is not None or plan.has_levels:
        return False
    from spinect.model_file import default_level_model_path

    return not default_level_model_path().is_file()


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
    """Validate an in-memory CT and cast it to float32 HU unless float32 holds it exactly, as
    :func:`read_ct` does for files (``keep_integer_type``)."""
    from spinect.io import validate_ct
    from spinect.io.reading import as_float32

    validate_ct(image, source="the input image")
    return as_float32(image, keep_integer_type=True)


def _island_dict(island, centroid_lps_mm, plan: ModelPlan) -> dict:
    return {"class_name": plan.label_names[island.label_value], "voxels": island.voxels,
            "volume_mm3": island.volume_mm3, "centroid_lps_mm": tuple(centroid_lps_mm),
            "distance_mm": island.distance_mm, "reason": island.reason}


#: More sliding windows than this is a mistake (a stride of 1), not a CT: refuse before hours of work.
MAX_WINDOWS = 200_000


def _check_segment_options(smoothing_mm, stride_zyx, batch_size) -> None:
    """Refuse option values that would crash deep inside, hang, or silently do nothing useful
    (the checks of :class:`spinect.requests.SegmentRequest`'s fields).

    Raises:
        SpinectError: naming the option, the value and the allowed range.
    """
    SegmentRequest(input="-", smoothing_mm=smoothing_mm, stride_zyx=stride_zyx, batch_size=batch_size)


@dataclass(frozen=True)
class _HeaderGeometry:
    """Size and spacing (x, y, z) of an image file from its header, for the work checks."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def GetSize(self) -> tuple[int, ...]:  # noqa: N802 - the SimpleITK names the checks call
        return self.size

    def GetSpacing(self) -> tuple[float, ...]:  # noqa: N802
        return self.spacing

    def GetDirection(self) -> tuple[float, ...]:  # noqa: N802
        return self.direction


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
        direction = tuple(float(v) for v in reader.GetDirection())
    except Exception:  # noqa: BLE001 - any unreadable header is left to read_ct's clear error
        return None
    if len(size) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        return None
    return _HeaderGeometry(size, spacing, direction)


def _network_grid_shape(ct: sitk.Image, plan: ModelPlan) -> np.ndarray:
    """(z, y, x) voxel counts of the CT's extent on the network's grid (the plan's spacing, 1 mm; LPS axis order)."""
    from spinect.preprocess.resample import lps_axis_permutation

    order = lps_axis_permutation(ct.GetDirection())  # x, y, z of the network's grid
    extent_mm = np.array([ct.GetSize()[k] * ct.GetSpacing()[k] for k in order[::-1]], float)
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


def phantom(out_dir: str | os.PathLike | PhantomRequest | None = None, *, request: PhantomRequest | None = None,
            progress: ProgressCallback | None = None, **options) -> list[Path]:
    """``spinect phantom OUT_DIR --n N --seed S ...``: write synthetic lumbosacral CT cases with truth.

    Takes a :class:`spinect.requests.PhantomRequest` or keyword arguments that make one
    (``n``, ``seed``, ``shape_zyx``, ``spacing_zyx_mm``, ``appearance``, ``randomise_appearance``,
    ``degeneration``, ``anatomy``, ``preview``, ``field``); see :func:`spinect.phantom.make_phantom`.
    Returns the files written (per case, then the manifest).
    """
    from spinect.phantom import make_phantom

    r = _request(PhantomRequest, request, "out_dir", out_dir, options)
    return make_phantom(r.out_dir, n=r.n, seed=r.seed, shape_zyx=r.shape_zyx, spacing_zyx_mm=r.spacing_zyx_mm,
                        randomise_appearance=r.randomise_appearance, appearance=r.appearance, preview=r.preview,
                        degeneration=r.degeneration, progress=progress, anatomy=r.anatomy, field=r.field)


def train(data: str | os.PathLike | None = None, out: str | os.PathLike | None = None, *, config=None, **options):
    """``spinect train DATA --out RUN_DIR ...``: train a SPINECT model (SPINECT's recipe by default).

    Give a :class:`spinect.train.TrainingConfig` as ``config``, or ``data``, ``out`` and its other
    fields as keywords (``fold``, ``folds``, ``epochs``, ``iterations``, ``base_width``,
    ``device``, ``resume``, ...). Returns :class:`spinect.train.TrainingResult` (``best_model``
    is a model file :func:`segment` takes).
    """
    from spinect.train import TrainingConfig
    from spinect.train import train as run_training

    if config is None:
        if data is None or out is None:
            raise RequestError("train needs the dataset folder (data) and the run folder (out), or a TrainingConfig")
        config = TrainingConfig(data=Path(data), out=Path(out), **options)
    elif data is not None or out is not None or options:
        raise RequestError("give train a TrainingConfig or keyword options, not both")
    return run_training(config)


def evaluate(out_dir: str | os.PathLike | EvaluateRequest | None = None, *, request: EvaluateRequest | None = None,
             show_progress: bool = False, **options):
    """``spinect evaluate``: score predictions against labels, or a model on a dataset.

    Takes a :class:`spinect.requests.EvaluateRequest` or keyword arguments that make one: give
    ``pred`` and ``labels`` (files or folders matched by case id), or ``data`` (a dataset folder;
    ``model`` defaults to the shipped model; ``cases`` picks case ids; ``device``). Writes the
    per-case CSV, the summary CSV, the Table-2-style Markdown and a box plot into ``out_dir``
    (refused if it already holds a report, unless ``overwrite``). ``show_progress``: a progress
    bar on stderr. Returns ``(EvaluationResult, EvaluationFiles)`` of :mod:`spinect.metrics`.
    """
    from spinect.metrics import check_report_folder, match_case_files
    from spinect.metrics.runner import model_pairs, run_evaluation

    r = _request(EvaluateRequest, request, "out_dir", out_dir, options)
    if r.mode == "model":
        pairs = model_pairs(r.model, r.data, cases=r.cases, device=r.device)
    else:
        pairs = match_case_files(r.pred, r.labels)
    check_report_folder(r.out_dir, overwrite=r.overwrite)
    return run_evaluation(pairs, r.out_dir, class_names=r.class_names, resample_prediction=r.resample_prediction,
                          show_progress=show_progress)


def triangles(seg=None, *, request: TrianglesRequest | None = None, progress: ProgressCallback | None = None,
              settings=None, search=None, frame=None, **options):
    """``spinect triangles SEG --level L --side S ...``: Kambin / safe triangle and best oblique view.

    Takes a :class:`spinect.requests.TrianglesRequest` (as ``request`` or the first argument) or
    keyword arguments that make one (``level``, ``side``, ``triangle``, ``ct``, one of
    ``points_lps_mm`` / ``seed_lps_mm`` / ``auto``, ``structures``, ``endplate_lps_mm``,
    ``upper_line_lps_mm``, ``theta_deg``, ``phi_deg``, ``optimize``, ``step_deg``, ``objective``,
    ``reachable``, ``instrument_radius_mm``, ``pixel_mm``, ``allow_missing_nerve``,
    ``json_path``, ``heatmap_path``), as :func:`spinect.geometry.measure.measure_triangle` takes
    them. With ``optimize`` and a ``json_path`` the heat map goes beside the report unless
    ``heatmap_path`` says where (as on the CLI).

    Objects for callers that need them: ``settings`` (:class:`WindowSettings`, instead of
    ``pixel_mm``/``instrument_radius_mm``/``reachable``), ``search`` (:class:`SearchSettings`,
    instead of ``step_deg``/``objective``), ``frame`` (an :class:`EndplateFrame`).
    Returns the :class:`TrianglesResult`.
    """
    from spinect.geometry.measure import measure_triangle
    from spinect.geometry.trajectory import SearchSettings
    from spinect.geometry.window import WindowSettings

    r = _request(TrianglesRequest, request, "seg", seg, options)
    if settings is None:
        settings = WindowSettings(pixel_mm=r.pixel_mm, instrument_radius_mm=r.instrument_radius_mm,
                                  depth_before_mm=None if r.reachable else WindowSettings().depth_before_mm)
    elif (r.pixel_mm, r.instrument_radius_mm, r.reachable) != _TRIANGLE_WINDOW_DEFAULTS:
        raise RequestError("give settings= or pixel_mm/instrument_radius_mm/reachable, not both")
    if search is None:
        search = SearchSettings(objective=r.objective, step_deg=r.step_deg) if r.optimize else None
    elif (r.step_deg, r.objective) != _TRIANGLE_SEARCH_DEFAULTS:
        raise RequestError("give search= or step_deg/objective, not both")

    def array(value, single: bool = False):
        if value is None:
            return None
        import numpy as np

        return np.asarray(value, float).reshape(3) if single else np.asarray(value, float).reshape(-1, 3)

    return measure_triangle(
        r.seg, level=r.level, side=r.side, triangle=r.triangle, ct=r.ct, points_lps_mm=array(r.points_lps_mm),
        seed_lps_mm=array(r.seed_lps_mm, True), auto=r.auto, structures=r.structures,
        endplate_lps_mm=array(r.endplate_lps_mm), frame=frame, theta_deg=r.theta_deg, phi_deg=r.phi_deg,
        upper_line_lps_mm=array(r.upper_line_lps_mm, True), settings=settings, optimize=r.optimize, search=search,
        json_path=r.json_path, heatmap_path=r.heatmap_output(), progress=progress,
        allow_missing_nerve=r.allow_missing_nerve,
    )


def _defaults(cls, *names: str) -> tuple:
    return tuple(cls.__dataclass_fields__[name].default for name in names)


_TRIANGLE_WINDOW_DEFAULTS = _defaults(TrianglesRequest, "pixel_mm", "instrument_radius_mm", "reachable")
_TRIANGLE_SEARCH_DEFAULTS = _defaults(TrianglesRequest, "step_deg", "objective")


def open_triangles(seg, *, level: str, side: str, **options):
    """A :class:`spinect.geometry.TriangleSession` on ``seg``: read, crop, fields and frame once,
    then ``session.measure(mode, theta_deg=..., phi_deg=..., points_lps_mm=...)`` per view and
    ``session.optimize(...)`` (what :func:`triangles` does once; the same numbers).

    ``options`` are those of :meth:`TriangleSession.open` (``triangle``, ``ct``, ``structures``,
    ``endplate_lps_mm``, ``around_lps_mm``, ``auto``, ``reach_skin``, ...).
    """
    from spinect.geometry.session import TriangleSession

    return TriangleSession.open(seg, level=level, side=side, **options)


def measure_kambin(seg=None, **options):
    """:func:`triangles` with ``triangle="kambin"`` (the common case, named for readers of the papers)."""
    return triangles(seg, triangle="kambin", **options)


def report(output: str | os.PathLike | ReportRequest | None = None, *, request: ReportRequest | None = None,
           **options):
    """``spinect report OUT.html --seg SEG --triangles T.json ...``: one HTML page (and PDF) for a case.

    Takes a :class:`spinect.requests.ReportRequest` or keyword arguments that make one (``seg``,
    ``triangles``, ``provenance``, ``ct``, ``case_id``, ``pdf``, ``overwrite``). Returns
    ``{"html": path, "pdf": path}`` (``pdf`` only when asked). See :mod:`spinect.report`.
    """
    from spinect.report import gather_report, write_report

    r = _request(ReportRequest, request, "output", output, options)
    content = gather_report(seg=r.seg, triangles=r.triangles, provenance=r.provenance, ct=r.ct, case_id=r.case_id)
    return write_report(content, r.output, pdf=r.pdf, overwrite=r.overwrite)


def serve(stdin, stdout, *, idle_exit_s: float | None = None) -> int:
    """``spinect serve``: answer JSON-lines requests from ``stdin`` on ``stdout`` (see :mod:`spinect.serve`).

    Returns the exit code (0 after ``shutdown``, the end of ``stdin`` or ``idle_exit_s`` seconds idle).
    """
    from spinect.serve import serve as run

    if idle_exit_s is not None and not (isinstance(idle_exit_s, (int, float)) and idle_exit_s > 0):
        raise RequestError(f"--idle-exit must be > 0 seconds, got {idle_exit_s!r}")
    return run(stdin, stdout, idle_exit_s=idle_exit_s)


def _request(cls, request, first_name: str, first, options: dict):
    """The ``cls`` request of an API call: ``request`` (or a request given as the first argument),
    with the keywords as changes; or made from the first argument and the keywords."""
    if isinstance(first, cls):
        if request is not None:
            raise RequestError("give the request once: as the first argument or as request=, not both")
        request, first = first, None
    if request is not None:
        if not isinstance(request, cls):
            raise RequestError(f"request must be a {cls.__name__}, not {type(request).__name__}")
        changes = dict(options)
        if first is not None:
            changes[first_name] = first
        return request.replace(**changes) if changes else request
    return build_request(cls, **({first_name: first} if first is not None else {}), **options)
