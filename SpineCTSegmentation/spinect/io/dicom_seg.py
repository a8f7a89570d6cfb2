"""DICOM SEG output: the label map as a DICOM Segmentation object that references its source CT series.

``spinect segment DICOM_FOLDER out.dcm`` (or ``--dicom-seg out.dcm`` beside another output) writes one
multi-frame DICOM Segmentation (highdicom) on the source series' own grid: frame k of segment s is
slice k of the CT (the file :func:`spinect.io.reading.dicom_series_files` puts at index z = k), with
the source slice's position, orientation and pixel spacing. Frames where a segment is empty are
left out (highdicom's default); every frame names its source slice.

Segments: one per label value except background (``bone``, ``nerve``), then, when the model labels
vertebral levels, one per level (``L1``...``L5``, ``sacrum``; they overlap ``bone``, which DICOM SEG
allows). The SEG is BINARY: spinect's labels are argmax decisions, not probabilities (a
FRACTIONAL SEG would claim a probability the pipeline does not keep). Codes, colours and names come
from :data:`spinect.io.labels.SEGMENT_STYLES`, the same SNOMED CT codes as the Slicer segments
(Tissue / Bone SCT 272673000, Tissue / Nerve SCT 119410002, Anatomical Structure / L1 vertebra
SCT 66794005, ...). A class without a style is written as "Anatomical Structure" with its name
as the segment label (and a warning).

Algorithm identification (every segment): name ``spinect <model file stem>``, family Artificial
Intelligence (DCM 123110), version ``<model_version> sha256:<first 16 hex digits>``, and as
parameters the full model sha256, model version, spinect and PyTorch versions and the
label-changing settings (see :mod:`spinect.io.provenance`).

**Source series without UIDs.** Anonymisation sometimes empties Study, Series and SOP Instance UIDs
(``../shared/data/dicom_ct_series_jpeg2000/`` is such a series). Then no reference to the source can be
made: a PACS finds instances only by those UIDs. The SEG is still written, on the same grid and
in the source's FrameOfReferenceUID (kept when present, so a viewer can overlay it on the CT), but
in a NEW study, with no source references (no Referenced Series and no Derivation Image
sequences), and its series description says so; a warning is logged and the provenance sidecar
records ``"source_references": "none"`` with the reason. Missing patient data stay empty.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from spinect.errors import InputError, OutputError
from spinect.io.atomic import atomic_output, check_output_path, full_suffix

__all__ = [
    "DICOM_SEG_SUFFIXES",
    "DicomSegResult",
    "check_dicom_seg_request",
    "labelmap_segments",
    "write_dicom_seg",
    "write_result_dicom_seg",
]

log = logging.getLogger(__name__)

#: Output names that mean "write a DICOM SEG".
DICOM_SEG_SUFFIXES: tuple[str, ...] = (".dcm",)

#: CT Image Storage, for a source slice whose SOP Class UID is empty.
_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Category and type for a class without a style in SEGMENT_STYLES.
_ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
#: Largest tolerated distance (mm) between a slice's DICOM position and the volume's slice position.
_POSITION_TOLERANCE_MM = 0.05
#: DICOM LO (long string) limit.
_LO = 64


@dataclass(frozen=True)
class DicomSegResult:
    """What :func:`write_dicom_seg` wrote.

    Attributes:
        path: the DICOM SEG file.
        segment_names: segment labels in segment-number order (segment k+1 = ``segment_names[k]``).
        referenced: True when the SEG references the source series; False for a source without UIDs.
        reason: why no references were made (empty when ``referenced``).
        series_instance_uid / sop_instance_uid: the SEG's own UIDs.
    """

    path: Path
    segment_names: tuple[str, ...]
    referenced: bool
    reason: str
    series_instance_uid: str
    sop_instance_uid: str


def check_dicom_seg_request(input, output: str | os.PathLike, *, overwrite: bool = True) -> tuple[str, ...]:
    """Before any computation: can a DICOM SEG be written for this input to this path?

    Args:
        input: the ``segment`` input (path, or a SimpleITK image).
        output: the DICOM SEG file to write (``.dcm``).
        overwrite: replace an existing file.

    Returns:
        The source series' files in slice order.

    Raises:
        InputError: the input is not a DICOM series (an in-memory image or a NIfTI/NRRD/MHA file):
            a DICOM SEG must reference the DICOM slices it was made from.
        OutputError: wrong suffix, unwritable folder, or highdicom is not installed.
    """
    from spinect.io.reading import dicom_series_files

    if full_suffix(output) not in DICOM_SEG_SUFFIXES:
        raise OutputError(f"a DICOM SEG is written to a .dcm file, got {output}; name it e.g. segmentation.dcm")
    if isinstance(input, sitk.Image):
        raise InputError("a DICOM SEG output needs a DICOM series as input (it references the source slices), but the "
                         "input is an in-memory image; give the DICOM folder, or write .seg.nrrd / .nii.gz instead")
    files = dicom_series_files(input)
    if not files:
        raise InputError(
            f"a DICOM SEG output needs a DICOM series as input (it references the source slices and their grid), but "
            f"{input} is not one; give the CT's DICOM folder, or write a .seg.nrrd or .nii.gz output instead")
    _require_highdicom()
    check_output_path(output, overwrite=overwrite)
    return tuple(files)


def labelmap_segments(label: sitk.Image, label_names: Sequence[str], *, levels: sitk.Image | None = None,
                      level_names: Sequence[str] = ()) -> list[tuple[str, np.ndarray]]:
    """Segments to write: ``(name, mask)``, masks boolean (z, y, x) on the label map's grid.

    One segment per label value 1..n of ``label`` (named by ``label_names``) and, when given, one per
    value 1..m of the ``levels`` map (named by ``level_names``). Every name is written, also an
    empty segment (the model found nothing of that class: that is a result too).
    """
    values = sitk.GetArrayViewFromImage(label)
    segments = [(name, values == index) for index, name in enumerate(label_names) if index > 0]
    if levels is not None:
        level_values = sitk.GetArrayViewFromImage(levels)
        segments += [(name, level_values == index) for index, name in enumerate(level_names) if index > 0]
    return segments


def write_dicom_seg(
    label: sitk.Image,
    path: str | os.PathLike,
    *,
    source_files: Sequence[str],
    label_names: Sequence[str],
    provenance: Mapping[str, Any],
    levels: sitk.Image | None = None,
    level_names: Sequence[str] = (),
    overwrite: bool = True,
) -> DicomSegResult:
    """Write ``label`` (and ``levels``) as a binary DICOM SEG referencing ``source_files``.

    Args:
        label: UInt8 label map on the source series' grid (z = slice index in ``source_files``).
        path: the ``.dcm`` file to write (atomically; read back with highdicom before it is published).
        source_files: the CT slices in volume order (:func:`spinect.io.reading.dicom_series_files`).
        label_names: names of ``label``'s values (index = value, 0 = background, not written).
        provenance: :func:`spinect.io.provenance.segment_provenance` record (model, versions, settings).
        levels / level_names: optional level map on the same grid and the names of its values.
        overwrite: replace an existing file.

    Returns:
        :class:`DicomSegResult`.

    Raises:
        InputError: the label map's grid is not the source series' grid.
        OutputError: the write or its read-back failed (nothing is left under ``path``).
    """
    import highdicom as hd

    headers = _read_headers(source_files)
    _check_same_grid(label, headers, source_files)
    segments = labelmap_segments(label, label_names, levels=levels, level_names=level_names)
    references, reason = _reference_state(headers)
    sources = headers if references else _stand_ins(headers)
    algorithm = _algorithm_identification(provenance)
    descriptions = [_segment_description(number, name, algorithm) for number, (name, _) in enumerate(segments, start=1)]
    pixels = np.stack([mask for _, mask in segments], axis=-1).astype(np.uint8)  # (frames, rows, columns, segments)
    from spinect import __version__

    description = "spinect " + "/".join(name for name, _ in segments)
    if not references:
        description = "spinect segmentation; source not referenced (no UIDs)"
    with _quiet_highdicom():
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=_series_number(headers),
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="spinect",
            manufacturer_model_name=f"spinect {provenance['model']['name']}"[:_LO],
            software_versions=__version__, device_serial_number="none",
            content_label="SPINECT", content_description="research use, not validated for clinical use",
            series_description=description[:_LO], omit_empty_frames=bool(pixels.any()),
        )
    if not references:
        _remove_source_references(seg)
    with atomic_output(path, verify=lambda tmp: _verify(tmp, len(segments)), overwrite=overwrite) as tmp:
        _guarded_save(seg, tmp, Path(path))
    if not references:
        log.warning("DICOM SEG %s does not reference its source series: %s. It keeps the source's grid and frame of "
                    "reference, in a new study", path, reason)
    return DicomSegResult(Path(path), tuple(name for name, _ in segments), references, reason,
                          str(seg.SeriesInstanceUID), str(seg.SOPInstanceUID))


def write_result_dicom_seg(label: sitk.Image, path: str | os.PathLike, *, source_files: Sequence[str], plan,
                           provenance: Mapping[str, Any], levels: sitk.Image | None = None,
                           overwrite: bool = True) -> dict[str, Any]:
    """Write a ``segment`` result as DICOM SEG; return ``provenance`` with a ``dicom_seg`` entry added.

    The entry names the SEG's UIDs, its segments and whether (and why not) the source is referenced.
    Level segments are written when ``levels`` is given (names from ``spinect.plan.LEVEL_MAP_NAMES``).
    """
    level_names: Sequence[str] = ()
    if levels is not None:
        from spinect.plan import LEVEL_MAP_NAMES

        level_names = LEVEL_MAP_NAMES
    names = getattr(plan, "label_names", plan.class_names)
    result = write_dicom_seg(label, path, source_files=source_files, label_names=names, provenance=provenance,
                             levels=levels, level_names=level_names, overwrite=overwrite)
    return {**provenance, "dicom_seg": {
        "file": result.path.name, "segments": list(result.segment_names),
        "source_references": "series and every slice" if result.referenced else "none",
        "reason_unreferenced": result.reason or None,
        "series_instance_uid": result.series_instance_uid, "sop_instance_uid": result.sop_instance_uid,
    }}


@contextlib.contextmanager
def _quiet_highdicom():
    """highdicom logs every module it copies (INFO) and warns about the source's own data (a one-part
    patient name...): keep its log to warnings, and pass its Python warnings on as one log line each."""
    logger = logging.getLogger("highdicom")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for item in caught:
            log.info("highdicom: %s", str(item.message).split(". ")[0])
    finally:
        logger.setLevel(level)


# --- source slices -----------------------------------------------------------------------------


def _require_highdicom() -> None:
    try:
        import highdicom  # noqa: F401
    except ImportError as exc:
        raise OutputError(
            "writing DICOM SEG needs the highdicom package, which is not installed; install it with "
            "`pip install highdicom==0.28.2` (or `pip install spinect[dicom]`)"
        ) from exc


def _read_headers(files: Sequence[str]) -> list:
    """The slices' headers (pixel data not read: highdicom needs only the header attributes)."""
    import pydicom

    headers = []
    for file in files:
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises InvalidDicomError, OSError, ...
            raise InputError(f"cannot read the DICOM header of {file} ({exc}); the DICOM SEG needs every source slice") from exc
        if "SpecificCharacterSet" in header and not str(header.SpecificCharacterSet or "").strip():
            del header.SpecificCharacterSet  # empty means the default repertoire; highdicom refuses ''
        headers.append(header)
    return headers


def _check_same_grid(label: sitk.Image, headers: Sequence, files: Sequence[str]) -> None:
    """Slice k of ``label`` must lie where source slice k lies, with the source's rows and columns.

    Raises:
        InputError: naming the first slice that differs.
    """
    columns, rows, count = label.GetSize()
    if count != len(headers) or any((int(h.Rows), int(h.Columns)) != (rows, columns) for h in headers):
        raise InputError(f"the label map ({columns}x{rows}x{count} voxels) is not on the grid of the DICOM series "
                         f"({len(headers)} slices of {headers[0].Columns}x{headers[0].Rows}); segment the series itself")
    for k, (header, file) in enumerate(zip(headers, files)):
        expected = np.asarray(label.TransformIndexToPhysicalPoint((0, 0, k)), float)
        actual = np.asarray([float(v) for v in header.ImagePositionPatient], float)
        tolerance = max(_POSITION_TOLERANCE_MM, 0.5 * label.GetSpacing()[2])
        if np.max(np.abs(expected - actual)) > tolerance:
            raise InputError(f"slice {k} of the label map lies at {tuple(np.round(expected, 2))} mm but its source "
                             f"{Path(file).name} at {tuple(np.round(actual, 2))} mm; the label map does not belong to "
                             "this series")


def _reference_state(headers: Sequence) -> tuple[bool, str]:
    """Can the SEG reference its sources? (True, "") or (False, why not)."""
    missing = [name for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
               if any(not str(h.get(name, "") or "").strip() for h in headers)]
    if missing:
        return False, f"the source slices have empty {', '.join(missing)} (anonymised?)"
    if len({str(h.SeriesInstanceUID) for h in headers}) > 1:
        return False, "the source slices belong to different series"
    return True, ""


def _stand_ins(headers: Sequence) -> list:
    """Copies of the headers with the UIDs highdicom needs filled in (one new study and series UID;
    the Frame of Reference kept when present). Used only to build the SEG's frames; the references
    to them are removed afterwards (:func:`_remove_source_references`)."""
    import highdicom as hd

    study, series = str(hd.UID()), str(hd.UID())
    frame = str(headers[0].get("FrameOfReferenceUID", "") or "").strip() or str(hd.UID())
    if not str(headers[0].get("FrameOfReferenceUID", "") or "").strip():
        log.warning("the source slices have no FrameOfReferenceUID; the DICOM SEG gets a new one and cannot be "
                    "overlaid on the CT automatically")
    stand_ins = []
    for header in headers:
        copy_ = copy.deepcopy(header)
        copy_.StudyInstanceUID, copy_.SeriesInstanceUID, copy_.FrameOfReferenceUID = study, series, frame
        copy_.SOPInstanceUID = str(hd.UID())
        if not str(copy_.get("SOPClassUID", "") or "").strip():
            copy_.SOPClassUID = _CT_IMAGE_STORAGE
        stand_ins.append(copy_)
    return stand_ins


def _remove_source_references(seg) -> None:
    """Drop every reference to the stand-in source instances (they exist nowhere)."""
    for name in ("ReferencedSeriesSequence", "StudiesContainingOtherReferencedInstancesSequence",
                 "SourceImageSequence"):
        if name in seg:
            delattr(seg, name)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        if "DerivationImageSequence" in frame:
            del frame.DerivationImageSequence


def _series_number(headers: Sequence) -> int:
    """The source's series number + 1000 (a SEG series number that does not clash), or 1000."""
    number = headers[0].get("SeriesNumber", None)
    try:
        return int(number) + 1000
    except (TypeError, ValueError):
        return 1000


# --- segment descriptions ----------------------------------------------------------------------


def _algorithm_identification(provenance: Mapping[str, Any]):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    model = provenance["model"]
    parameters = {
        "model_sha256": model["sha256"],
        "model_version": str(model["model_version"]),
        "model_training_status": str(model["training_status"]),
        "spinect_version": provenance["software"]["version"],
        "torch_version": provenance["software"]["torch"],
        "device": str(provenance.get("device", "")),
    }
    parameters.update({key: _short(value) for key, value in provenance.get("settings", {}).items()})
    return hd.AlgorithmIdentificationSequence(
        name=f"spinect {model['name']}"[:_LO], family=codes.cid7162.ArtificialIntelligence,
        version=f"{model['model_version']} sha256:{model['sha256'][:16]}"[:_LO],
        source="spinect (SPINECT 3D U-Net)", parameters=parameters,
    )


def _segment_description(number: int, name: str, algorithm):
    """highdicom SegmentDescription with the codes and colour of ``SEGMENT_STYLES[name]``."""
    import highdicom as hd

    from spinect.io.labels import SEGMENT_STYLES

    style = SEGMENT_STYLES.get(name) or SEGMENT_STYLES.get(name.lower())
    terminology = (style.terminology if style is not None else None) or {}
    if not terminology:
        log.warning("segment %r has no terminology in SEGMENT_STYLES; written as 'Anatomical Structure'", name)
    category = _coded(terminology.get("category", _ANATOMICAL_STRUCTURE))
    kind = _coded(terminology.get("type", _ANATOMICAL_STRUCTURE))
    regions = [_coded(terminology["anatomicRegion"])] if _has_code(terminology.get("anatomicRegion")) else None
    color = hd.color.CIELabColor.from_rgb(*(int(round(255 * c)) for c in style.color_rgb)) if style else None
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=name[:_LO], segmented_property_category=category,
        segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, tracking_uid=hd.UID(), tracking_id=f"spinect {name}"[:_LO],
        anatomic_regions=regions, display_color=color,
    )


def _coded(code: Sequence[str]):
    """A (scheme, value, meaning) triple as a highdicom coded concept."""
    import highdicom as hd

    scheme, value, meaning = (str(part) for part in code)
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _has_code(code) -> bool:
    return isinstance(code, (list, tuple)) and len(code) == 3 and all(str(part).strip() for part in code)


def _short(value: Any) -> str:
    text = " ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    return text[:_LO]


# --- writing -----------------------------------------------------------------------------------


def _guarded_save(seg, tmp: Path, path: Path) -> None:
    try:
        seg.save_as(str(tmp), enforce_file_format=True)
    except OSError:
        raise  # atomic_output reports disk-full and permission errors itself
    except Exception as exc:  # noqa: BLE001 - any writer failure means no output
        raise OutputError(f"could not write DICOM SEG {path}: {exc}") from exc


def _verify(path: Path, segments: int) -> None:
    """Read the written file back with highdicom: a SEG with the expected segments and decodable frames."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    if len(seg.SegmentSequence) != segments:
        raise ValueError(f"{len(seg.SegmentSequence)} segments read back, {segments} written")
    frames = seg.pixel_array  # decodes every frame (bit-packed BINARY data)
    if frames.shape[0] != int(seg.NumberOfFrames):
        raise ValueError(f"{frames.shape[0]} frames decoded, {seg.NumberOfFrames} announced")
