"""MRML <-> files: volume export, label map import as fixed segments, export for training.

Only Slicer's MRML/segmentation classes are used (no ``slicer.app``, ``slicer.mrmlScene`` or
``slicer.modules``): every function finds the scene through the nodes it is given, so the
same code runs inside Slicer and under pytest with the ``slicer-core`` wheel.

Geometry stays Slicer's: volumes are written and read by Slicer's own storage nodes (RAS <->
LPS handled there), and segments are compared or exported on the grid of a reference volume.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import slicer
import vtk

from SpineCTSegmentationLib.options import ExistingSegments
from SpineCTSegmentationLib.terminology import SEGMENTS, SegmentSpec, apply_segment_spec

__all__ = [
    "ExistingSegmentsError",
    "write_volume",
    "read_labelmap",
    "conflicting_segment_ids",
    "new_segmentation_node",
    "import_labelmap_segments",
    "segment_label_array",
    "write_segment_labels",
    "export_for_training",
]


class ExistingSegmentsError(RuntimeError):
    """The output segmentation already has ``bone``/``nerve`` segments and no choice was made."""

    def __init__(self, node_name: str, segment_ids: Sequence[str]):
        self.segment_ids = tuple(segment_ids)
        super().__init__(
            f"segmentation '{node_name}' already has segment(s) {', '.join(self.segment_ids)}; choose "
            "'Replace bone and nerve segments only' or 'Write to a new segmentation' (nothing was changed)"
        )


def write_volume(volume_node, path: str | os.PathLike, *, compress: bool = False) -> Path:
    """Write a volume node to ``path`` (format from the extension: ``.nrrd``, ``.nii.gz``, ...).

    Uses a temporary ``vtkMRMLVolumeArchetypeStorageNode`` so the node's own storage node
    (and its "modified since read" state) is left untouched. A parent transform is ignored
    (the voxels and their IJK-to-RAS matrix are written).

    Raises:
        OSError: the file could not be written.
    """
    path = Path(path)
    # Written under a temporary name (same folder, same extension) then renamed: no partial files.
    partial = path.with_name(f".partial-{os.getpid()}-{path.name}")
    scene = volume_node.GetScene()
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(str(partial))
        storage.SetUseCompression(bool(compress))
        if not storage.WriteData(volume_node) or not partial.is_file():
            raise OSError(f"could not write volume '{volume_node.GetName()}' to {path}")
        os.replace(partial, path)
    finally:
        scene.RemoveNode(storage)
        if partial.exists():
            partial.unlink()
    return path


def read_labelmap(path: str | os.PathLike, scene, *, name: str = "spinect labels"):
    """Read a label map file into a new ``vtkMRMLLabelMapVolumeNode`` in ``scene``.

    Raises:
        OSError: the file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise OSError(f"backend result {path} is missing")
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            scene.RemoveNode(node)
            raise OSError(f"could not read label map {path}")
    finally:
        scene.RemoveNode(storage)
    return node


def conflicting_segment_ids(segmentation_node, specs: Sequence[SegmentSpec] = SEGMENTS) -> list[str]:
    """IDs of ``specs`` that already exist in ``segmentation_node`` (empty list for ``None``)."""
    if segmentation_node is None:
        return []
    segmentation = segmentation_node.GetSegmentation()
    return [s.segment_id for s in specs if segmentation.GetSegment(s.segment_id) is not None]


def new_segmentation_node(reference_volume, *, name: str | None = None):
    """A new segmentation node (with display node) on ``reference_volume``'s geometry."""
    scene = reference_volume.GetScene()
    name = name or scene.GenerateUniqueName(f"{reference_volume.GetName()} spine segmentation")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    return node


def _binary_image(labelmap_image, label_value: int):
    """``vtkOrientedImageData`` (uint8 0/1) of the voxels equal to ``label_value``."""
    threshold = vtk.vtkImageThreshold()
    threshold.SetInputData(labelmap_image)
    threshold.ThresholdBetween(label_value, label_value)
    threshold.SetInValue(1)
    threshold.SetOutValue(0)
    threshold.SetOutputScalarTypeToUnsignedChar()
    threshold.Update()
    binary = slicer.vtkOrientedImageData()
    binary.ShallowCopy(threshold.GetOutput())
    binary.CopyDirections(labelmap_image)
    return binary


def import_labelmap_segments(
    labelmap_node,
    segmentation_node,
    *,
    reference_volume=None,
    existing: ExistingSegments = ExistingSegments.ASK,
    specs: Sequence[SegmentSpec] = SEGMENTS,
    closed_surfaces: bool = True,
):
    """Put each class of a label map into its fixed segment (``bone``, ``nerve``).

    Each segment gets its own binary labelmap layer, so voxels of the user's other segments
    are never overwritten. Classes absent from the label map still get an (empty) segment.

    Args:
        labelmap_node: ``vtkMRMLLabelMapVolumeNode`` with values ``spec.label_value``.
        segmentation_node: target node, or ``None`` for a new node.
        reference_volume: volume whose geometry a new node adopts (default: the label map).
        existing: what to do if ``bone``/``nerve`` already exist (see :class:`ExistingSegments`).
        specs: the classes to import.
        closed_surfaces: also build closed surfaces for the 3D view.

    Returns:
        The segmentation node written to (a new one for ``None`` or ``NEW_NODE``).

    Raises:
        ExistingSegmentsError: conflicting segments exist and ``existing`` is ``ASK``.
    """
    reference = reference_volume if reference_volume is not None else labelmap_node
    conflicts = conflicting_segment_ids(segmentation_node, specs)
    if conflicts and existing == ExistingSegments.ASK:
        raise ExistingSegmentsError(segmentation_node.GetName(), conflicts)
    if segmentation_node is None or (conflicts and existing == ExistingSegments.NEW_NODE):
        segmentation_node = new_segmentation_node(reference)
        conflicts = []
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference)

    image = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(labelmap_node)
    labelmap_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    for spec in specs:
        insert_before = _next_segment_id(segmentation, spec.segment_id) if spec.segment_id in conflicts else ""
        if spec.segment_id in conflicts:
            segmentation.RemoveSegment(spec.segment_id)  # REPLACE: only this fixed ID goes
        segment = slicer.vtkSegment()
        apply_segment_spec(segment, spec)
        segment.AddRepresentation(labelmap_name, _binary_image(image, spec.label_value))
        segmentation.AddSegment(segment, spec.segment_id, insert_before)
    if closed_surfaces:
        segmentation_node.CreateClosedSurfaceRepresentation()
    return segmentation_node


def _next_segment_id(segmentation, segment_id: str) -> str:
    """ID of the segment after ``segment_id`` (keeps a replaced segment in its list position)."""
    index = segmentation.GetSegmentIndex(segment_id)
    return segmentation.GetNthSegmentID(index + 1) if 0 <= index < segmentation.GetNumberOfSegments() - 1 else ""


def segment_label_array(segmentation_node, reference_volume, specs: Sequence[SegmentSpec] = SEGMENTS) -> np.ndarray:
    """Label map of ``specs`` on ``reference_volume``'s grid.

    Segments are found by fixed ID, else by name (case-insensitive). Where segments overlap,
    the later spec wins (nerve over bone: the smaller structure is the one at risk).

    Returns:
        uint8 array (k, j, i) = (z, y, x) of the reference volume, values ``spec.label_value``.

    Raises:
        ValueError: a segment of ``specs`` is missing from the node.
    """
    scene = reference_volume.GetScene()
    labels = np.zeros(slicer.util.arrayFromVolume(reference_volume).shape, np.uint8)
    for spec in specs:
        segment_id = _find_segment_id(segmentation_node, spec.segment_id)
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        export = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        try:
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, export, reference_volume
            )
            if not ok:
                raise ValueError(f"could not export segment '{segment_id}' onto '{reference_volume.GetName()}'")
            labels[slicer.util.arrayFromVolume(export) > 0] = spec.label_value
        finally:
            scene.RemoveNode(export)
    return labels


def _find_segment_id(segmentation_node, segment_id: str) -> str:
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(segment_id) is not None:
        return segment_id
    for index in range(segmentation.GetNumberOfSegments()):
        candidate = segmentation.GetNthSegmentID(index)
        if (segmentation.GetSegment(candidate).GetName() or "").lower() == segment_id:
            return candidate
    raise ValueError(
        f"segmentation '{segmentation_node.GetName()}' has no '{segment_id}' segment; "
        "run Segment first or name the segments 'bone' and 'nerve'"
    )


def write_segment_labels(
    segmentation_node,
    reference_volume,
    path: str | os.PathLike,
    *,
    specs: Sequence[SegmentSpec] = SEGMENTS,
    labels: np.ndarray | None = None,
    compress: bool = False,
) -> Path:
    """Write the bone/nerve segments as a label map file on ``reference_volume``'s grid.

    Args:
        segmentation_node: node with the ``bone``/``nerve`` segments (by ID or name).
        reference_volume: the grid (usually the CT).
        path: ``.nrrd``/``.nii.gz`` file to write (atomically).
        specs: the classes (values ``spec.label_value``; nerve wins where they overlap).
        labels: the array if already computed by :func:`segment_label_array`.
        compress: compress the file.

    Raises:
        ValueError: a segment is missing. OSError: the file could not be written.
    """
    if labels is None:
        labels = segment_label_array(segmentation_node, reference_volume, specs)
    scene = reference_volume.GetScene()
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        matrix = vtk.vtkMatrix4x4()
        reference_volume.GetIJKToRASMatrix(matrix)
        label_node.SetIJKToRASMatrix(matrix)
        slicer.util.updateVolumeFromArray(label_node, labels)
        return write_volume(label_node, path, compress=compress)
    finally:
        scene.RemoveNode(label_node)


def export_for_training(
    volume_node,
    segmentation_node,
    folder: str | os.PathLike,
    case_id: str,
    *,
    specs: Sequence[SegmentSpec] = SEGMENTS,
) -> Path:
    """Write the CT and its bone/nerve segments as one training case of a spinect dataset.

    Writes ``<case_id>_ct.nii.gz`` (the volume, HU) and ``<case_id>_labels.nii.gz`` (uint8,
    0 background / 1 bone / 2 nerve, same grid) into ``folder`` and adds the pair to
    ``folder/manifest.json`` (replacing a case with the same ID), the form ``spinect train`` reads.

    Returns:
        Path of the manifest.

    Raises:
        ValueError: bad case ID or missing segments.
        OSError: a file could not be written.
    """
    from spinect.manifest import DatasetCase, add_case  # light: no torch/MONAI

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", case_id or ""):
        raise ValueError(f"case ID {case_id!r} must be letters, digits, '_', '-' or '.' (e.g. patient_012)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = segment_label_array(segmentation_node, volume_node, specs)
    image_path = write_volume(volume_node, folder / f"{case_id}_ct.nii.gz", compress=True)
    label_path = write_segment_labels(segmentation_node, volume_node, folder / f"{case_id}_labels.nii.gz",
                                      specs=specs, labels=labels, compress=True)
    return add_case(folder, DatasetCase(id=case_id, image=image_path, label=label_path, source="slicer-export"))
