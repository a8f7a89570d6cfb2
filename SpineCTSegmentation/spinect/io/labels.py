"""Label maps: read them (plain label images or 3D Slicer ``.seg.nrrd``) and convert to Slicer's format.

A label map here is a 3D ``sitkUInt8`` image whose value is the class index in ``class_names``
(SPINECT: 0 background, 1 bone, 2 nerve). Slicer segmentations are matched to classes by
segment NAME (case-insensitive), never by their label value, because Slicer numbers segments in
the order they were created and may store overlapping segments in several layers.

Geometry: slicerio gives the 4x4 ``ijkToLPS`` matrix whose columns 0-2 are the voxel axes'
direction times spacing and column 3 the origin; SimpleITK is LPS as well, so spacing is the
column norms, direction the normalised columns and origin the last column. Voxel arrays from
slicerio are indexed (i, j, k) = (x, y, z), the transpose of SimpleITK's (z, y, x) arrays.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from spinect.errors import InputError
from spinect.io.atomic import check_name_encoding, full_suffix
from spinect.plan import CLASS_NAMES

__all__ = [
    "read_labelmap",
    "check_labelmap",
    "labelmap_to_segmentation",
    "segmentation_to_labelmap",
    "SegmentStyle",
    "SEGMENT_STYLES",
    "LABEL_FILE_SUFFIXES",
]

logger = logging.getLogger(__name__)

#: Files read_labelmap accepts; a ``.nrrd`` holding Slicer segment fields is read as a segmentation.
LABEL_FILE_SUFFIXES: tuple[str, ...] = (".seg.nrrd", ".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

_SLICER_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_TISSUE = ["SCT", "85756007", "Tissue"]


@dataclass(frozen=True)
class SegmentStyle:
    """How a class is shown and coded in a Slicer segmentation.

    Attributes:
        color_rgb: display colour, each channel 0..1.
        terminology: slicerio terminology dict (``contextName``, ``category``, ``type``, ...:
            coding scheme, code value, code meaning), or None for no terminology entry.
    """

    color_rgb: tuple[float, float, float]
    terminology: dict[str, Any] | None = None


# Entries and colours of 3D Slicer's own "General Anatomy" terminology list
# (Modules/Loadable/Terminologies/Resources/SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json):
# category Tissue (SCT 85756007); Bone SCT 272673000 shown (241, 214, 145)/255, Nerve SCT 119410002
# shown (244, 214, 49)/255. Using Slicer's own codes lets its terminology selector recognise them.
SEGMENT_STYLES: dict[str, SegmentStyle] = {
    "bone": SegmentStyle(
        (241 / 255, 214 / 255, 145 / 255),
        {"contextName": _SLICER_CONTEXT, "category": _TISSUE, "type": ["SCT", "272673000", "Bone"],
         "anatomicContextName": _ANATOMIC_CONTEXT},
    ),
    "nerve": SegmentStyle(
        (244 / 255, 214 / 255, 49 / 255),
        {"contextName": _SLICER_CONTEXT, "category": _TISSUE, "type": ["SCT", "119410002", "Nerve"],
         "anatomicContextName": _ANATOMIC_CONTEXT},
    ),
}

# Vertebral levels (``--levels``): category Anatomical Structure (SCT 123037004) and the vertebra
# codes of the DICOM master list, as SlicerTotalSegmentator names them; colours are distinct hues.
_ANATOMICAL_STRUCTURE = ["SCT", "123037004", "Anatomical Structure"]
_DICOM_MASTER = "Segmentation category and type - DICOM master list"
_LEVEL_CODES = {
    "L1": ("66794005", "L1 vertebra", (0.90, 0.45, 0.35)), "L2": ("14293000", "L2 vertebra", (0.95, 0.70, 0.30)),
    "L3": ("36470004", "L3 vertebra", (0.55, 0.80, 0.35)), "L4": ("11994002", "L4 vertebra", (0.35, 0.75, 0.85)),
    "L5": ("49668003", "L5 vertebra", (0.50, 0.50, 0.95)), "sacrum": ("54735007", "Sacrum", (0.85, 0.45, 0.85)),
}
SEGMENT_STYLES.update({
    name: SegmentStyle(rgb, {"contextName": _DICOM_MASTER, "category": _ANATOMICAL_STRUCTURE,
                             "type": ["SCT", code, meaning], "anatomicContextName": _ANATOMIC_CONTEXT})
    for name, (code, meaning, rgb) in _LEVEL_CODES.items()
})

# Colours for classes without a style (distinct from bone and nerve).
_FALLBACK_COLORS = ((0.50, 0.68, 0.50), (0.85, 0.40, 0.31), (0.44, 0.72, 0.82), (0.69, 0.48, 0.86))


def read_labelmap(
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] = CLASS_NAMES,
    reference: sitk.Image | None = None,
) -> sitk.Image:
    """Read a label map: class index per voxel.

    Args:
        path: a label image (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``...) whose values are class
            indices, or a 3D Slicer segmentation (``.seg.nrrd``, or any ``.nrrd`` with segment
            fields) whose segments are matched to ``class_names[1:]`` by name, case-insensitive.
            Segments with other names are ignored (logged); a class without a segment is empty
            (warned).
        class_names: class names; index = label value, index 0 is background.
        reference: if given, the label map is resampled (nearest neighbour) onto this image's grid
            when its own grid differs (Slicer may crop a segmentation to its segments' extent).

    Returns:
        3D ``sitkUInt8`` label map with the file's geometry (or ``reference``'s).

    Raises:
        InputError: missing or unreadable file, not 3D, or values outside ``range(len(class_names))``.
    """
    check_name_encoding(path, what="label map", error=InputError)
    path = Path(path)
    if not path.is_file():
        raise InputError(f"label map {path} does not exist; check the path")
    if full_suffix(path) not in LABEL_FILE_SUFFIXES:
        raise InputError(
            f"{path} is not a label map format spinect reads; give a {', '.join(LABEL_FILE_SUFFIXES)} file"
        )
    if _is_slicer_segmentation(path):
        label = _read_segmentation_file(path, class_names)
    else:
        label = _read_label_image(path, class_names)
    if reference is not None and not _same_grid(label, reference):
        logger.info("resampling label map %s onto the reference grid (nearest neighbour)", path)
        label = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return label


def check_labelmap(
    label: sitk.Image, *, class_names: Sequence[str] = CLASS_NAMES, source: str = "the label map"
) -> None:
    """Check that ``label`` is a 3D single-component image of integers in ``range(len(class_names))``.

    Raises:
        InputError: naming what is wrong and what to do.
    """
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{source} must be a 3D image with one value per voxel, got {label.GetDimension()}D with "
            f"{label.GetNumberOfComponentsPerPixel()} component(s); export a 3D label map"
        )
    values = np.unique(sitk.GetArrayViewFromImage(label))
    bad = [v for v in values.tolist() if not (np.isfinite(v) and v == int(v) and 0 <= v < len(class_names))]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        classes = ", ".join(f"{i} {n}" for i, n in enumerate(class_names))
        raise InputError(
            f"{source} has label values {shown} outside the classes ({classes}); relabel it, or give a "
            f"Slicer .seg.nrrd whose segments are named {' and '.join(class_names[1:])}"
        )


def segmentation_to_labelmap(
    segmentation: dict[str, Any], *, class_names: Sequence[str] = CLASS_NAMES, source: str = "segmentation"
) -> sitk.Image:
    """Convert a slicerio segmentation (read with voxels) to a label map, matching segments by name.

    Several segments with one class name are merged. Where segments of two classes overlap, the
    class listed later in ``class_names`` wins (nerve over bone); the overlap is logged.

    Returns:
        3D ``sitkUInt8`` label map on the segmentation's grid.
    """
    voxels = segmentation.get("voxels")
    if voxels is None or voxels.ndim not in (3, 4):
        raise InputError(f"{source} holds no 3D voxel data; save the segmentation again from Slicer")
    shape_ijk = voxels.shape[-3:]
    if shape_ijk == (1, 1, 1):
        raise InputError(f"{source} is an empty Slicer segmentation (no voxels were saved); segment something first")
    labels_ijk = np.zeros(shape_ijk, dtype=np.uint8)
    segments = segmentation.get("segments", [])
    wanted = {name.lower(): index for index, name in enumerate(class_names) if index > 0}
    ignored = [s.get("name", s.get("id", "?")) for s in segments if s.get("name", "").strip().lower() not in wanted]
    if ignored:
        logger.info(
            "%s: ignoring segments %s (not among %s)", source, ", ".join(map(repr, ignored)), list(class_names[1:])
        )
    for name, index in wanted.items():
        matches = [s for s in segments if s.get("name", "").strip().lower() == name]
        if not matches:
            logger.warning("%s has no segment named %r; treating %s as empty", source, name, name)
            continue
        mask = np.zeros(shape_ijk, dtype=bool)
        for segment in matches:
            import slicerio  # lazy: Slicer's own process imports spinect without slicerio
            mask |= slicerio.segment_mask(segmentation, segment)
        overlap = int(np.count_nonzero(mask & (labels_ijk > 0)))
        if overlap:
            logger.warning("%s: %d voxels of %r overlap an earlier class; they become %r", source, overlap, name, name)
        labels_ijk[mask] = index
    return _image_from_ijk(labels_ijk, np.asarray(segmentation["ijkToLPS"], dtype=float))


def labelmap_to_segmentation(
    label: sitk.Image, *, class_names: Sequence[str] = CLASS_NAMES,
    layers: Sequence[tuple[sitk.Image, Sequence[str]]] = (),
) -> dict[str, Any]:
    """Convert a label map to a slicerio segmentation: one segment per class except background.

    Segments are named and identified by their class name, keep the class index as label value
    and get colour and terminology from :data:`SEGMENT_STYLES`. ``label`` is layer 0; each of
    ``layers`` (label map on the same grid, its class names) adds a layer whose segments may
    overlap those of the layers before (e.g. vertebral levels inside ``bone``).
    """
    check_labelmap(label, class_names=class_names)
    all_layers = [(label, tuple(class_names))] + [(image, tuple(names)) for image, names in layers]
    arrays, segments = [], []
    for layer, (image, names) in enumerate(all_layers):
        check_labelmap(image, class_names=names, source=f"layer {layer}")
        arrays.append(np.ascontiguousarray(sitk.GetArrayFromImage(image).astype(np.uint8).transpose(2, 1, 0)))
        if arrays[-1].shape != arrays[0].shape:
            raise InputError(f"layer {layer} has {arrays[-1].shape} voxels, layer 0 {arrays[0].shape}; layers share one grid")
        segments += [_segment_entry(name, index, layer, arrays[0].shape) for index, name in enumerate(names) if index > 0]
    voxels_ijk = arrays[0] if len(arrays) == 1 else np.stack(arrays)
    return {
        "voxels": voxels_ijk,
        "ijkToLPS": _ijk_to_lps(label),
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": segments,
    }


# --- helpers --------------------------------------------------------------------------------


def _segment_entry(name: str, index: int, layer: int, shape_ijk: tuple[int, ...]) -> dict[str, Any]:
    """slicerio segment dict of class ``name`` (label value ``index`` in ``layer``)."""
    style = SEGMENT_STYLES.get(name, SEGMENT_STYLES.get(name.lower(), SegmentStyle(_FALLBACK_COLORS[index % len(_FALLBACK_COLORS)])))
    segment: dict[str, Any] = {
        "id": name,
        "name": name,
        "nameAutoGenerated": False,
        "color": [round(c, 6) for c in style.color_rgb],
        "colorAutoGenerated": False,
        "labelValue": index,
        "layer": layer,
        # Full extent even for sparse segments: older Slicer versions cropped layers otherwise.
        "extent": [0, shape_ijk[0] - 1, 0, shape_ijk[1] - 1, 0, shape_ijk[2] - 1],
    }
    if style.terminology is not None:
        segment["terminology"] = style.terminology
    return segment


def _is_slicer_segmentation(path: Path) -> bool:
    if full_suffix(path) == ".seg.nrrd":
        return True
    if full_suffix(path) not in (".nrrd", ".nhdr"):
        return False
    try:
        import slicerio  # lazy: Slicer's own process imports spinect without slicerio
        header = slicerio.read_segmentation(str(path), skip_voxels=True)
    except Exception:  # noqa: BLE001 - any header slicerio cannot parse is left to SimpleITK
        return False
    return bool(header.get("segments"))


def _read_segmentation_file(path: Path, class_names: Sequence[str]) -> sitk.Image:
    try:
        import slicerio  # lazy: Slicer's own process imports spinect without slicerio
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as exc:  # slicerio raises IOError, ValueError, pynrrd errors...
        raise InputError(
            f"cannot read Slicer segmentation {path} ({exc}); the file is damaged or not a .seg.nrrd: "
            "save the segmentation again from Slicer"
        ) from exc
    return segmentation_to_labelmap(segmentation, class_names=class_names, source=str(path))


def _read_label_image(path: Path, class_names: Sequence[str]) -> sitk.Image:
    if full_suffix(path) in (".nii", ".nii.gz"):
        from spinect.io.reading import check_nifti_integrity

        check_nifti_integrity(path)
    try:
        label = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(
            f"cannot read label map {path}; the file is damaged or not a {full_suffix(path)} image: export it again"
        ) from exc
    if full_suffix(path) in (".nii", ".nii.gz"):
        from spinect.io.reading import _check_finite_nifti_file

        try:  # niftilib reads NaN and inf as 0: they would pass as background
            _check_finite_nifti_file(path)
        except InputError as exc:
            raise InputError(f"{str(exc).split(';')[0]} (read as 0, background, by the NIfTI reader); label values "
                             "must be whole class numbers: export the label map again") from None
    check_labelmap(label, class_names=class_names, source=str(path))
    return sitk.Cast(label, sitk.sitkUInt8)


def _ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """4x4 matrix from voxel index (i, j, k) to LPS mm."""
    matrix = np.eye(4)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=float)  # scales columns
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def _image_from_ijk(voxels_ijk: np.ndarray, ijk_to_lps: np.ndarray) -> sitk.Image:
    """SimpleITK image from an (i, j, k) array and its ijkToLPS matrix."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels_ijk.transpose(2, 1, 0)))
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in (axes / spacing).ravel()))
    image.SetOrigin(tuple(float(v) for v in ijk_to_lps[:3, 3]))
    return image


def _same_grid(a: sitk.Image, b: sitk.Image, *, tolerance: float = 1e-4) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )
