"""Uncertainty of a flip-TTA run in Slicer: the map as a colour overlay, the review list as a table.

``spinect segment --tta --uncertainty U --review R.json`` writes the voxel-wise vote entropy
(nats) and the most uncertain regions (``{"regions": [{rank, class_name, volume_mm3, voxels,
mean_uncertainty, max_uncertainty, centroid_lps_mm, centroid_zyx}]}``). This module loads them
into MRML nodes. Only Slicer's MRML classes are used (no ``slicer.app``), so it runs under pytest
with the ``slicer-core`` wheel.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import slicer
import vtk

from SpineCTSegmentationLib.view import lps_to_ras

__all__ = [
    "OVERLAY_OPACITY",
    "PREFERRED_COLORS",
    "REVIEW_COLUMNS",
    "read_scalar_volume",
    "uncertainty_color_node",
    "show_uncertainty_overlay",
    "read_review",
    "review_table",
    "review_row_centroid_ras",
]

#: Foreground opacity of the uncertainty overlay in the slice views.
OVERLAY_OPACITY = 0.5
#: Colour tables tried in order (Slicer's colour files); a rainbow table is made if none is loaded.
PREFERRED_COLORS = ("Inferno", "ColdToHotRainbow")
#: Voxels below this entropy (nats) are transparent: certain voxels leave the CT visible.
VISIBLE_FROM_NATS = 0.01
#: (column, type) of the review table; centroids in RAS mm, as Slicer shows them.
REVIEW_COLUMNS = (
    ("rank", "int"), ("class_name", "string"), ("volume_mm3", "double"), ("voxels", "int"),
    ("mean_uncertainty", "double"), ("max_uncertainty", "double"),
    ("centroid_R_mm", "double"), ("centroid_A_mm", "double"), ("centroid_S_mm", "double"),
)


def read_scalar_volume(path: str | os.PathLike, scene, *, name: str):
    """Read a scalar volume file into a new ``vtkMRMLScalarVolumeNode`` (with display node).

    Raises:
        OSError: the file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise OSError(f"backend result {path} is missing")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            scene.RemoveNode(node)
            raise OSError(f"could not read volume {path}")
    finally:
        scene.RemoveNode(storage)
    node.CreateDefaultDisplayNodes()
    return node


def uncertainty_color_node(scene, preferred: Sequence[str] = PREFERRED_COLORS):
    """The first of ``preferred`` colour tables in the scene, else a rainbow table made once."""
    for name in preferred:
        node = scene.GetFirstNodeByName(name)
        if node is not None and node.IsA("vtkMRMLColorNode"):
            return node
    fallback = scene.GetFirstNodeByName("SpineCT uncertainty")
    if fallback is None:
        fallback = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "SpineCT uncertainty")
        fallback.SetTypeToRainbow()
    return fallback


def show_uncertainty_overlay(volume_node, *, opacity: float = OVERLAY_OPACITY, max_nats: float | None = None) -> None:
    """Show the map as a colour overlay (foreground layer) in every slice view of its scene.

    Args:
        volume_node: the uncertainty map (entropy, nats).
        opacity: foreground opacity.
        max_nats: top of the colour scale (default: the map's maximum, at least ln 2).
    """
    scene = volume_node.GetScene()
    display = volume_node.GetDisplayNode()
    if display is None:
        volume_node.CreateDefaultDisplayNodes()
        display = volume_node.GetDisplayNode()
    image = volume_node.GetImageData()
    top = max_nats if max_nats is not None else max(float(image.GetScalarRange()[1]) if image else 0.0, math.log(2.0))
    display.SetAndObserveColorNodeID(uncertainty_color_node(scene).GetID())
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, top)
    display.SetAutoThreshold(False)
    display.SetLowerThreshold(VISIBLE_FROM_NATS)
    display.SetUpperThreshold(max(top, VISIBLE_FROM_NATS) * 10.0)
    display.SetApplyThreshold(True)  # certain voxels are transparent in the overlay
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        composite.SetForegroundVolumeID(volume_node.GetID())
        composite.SetForegroundOpacity(opacity)


def read_review(path: str | os.PathLike) -> list[dict]:
    """Regions of a review JSON (``{"regions": [...]}``), ranked.

    Raises:
        OSError: missing file. ValueError: not a review list.
    """
    path = Path(path)
    if not path.is_file():
        raise OSError(f"backend result {path} is missing")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("regions"), list):
        raise ValueError(f"{path} is not a review list (expected {{'regions': [...]}})")
    return sorted(data["regions"], key=lambda r: r["rank"])


def review_table(regions: Sequence[dict], scene, *, table_node=None, name: str = "Uncertain regions"):
    """Fill a table node (created if None) with one row per region; returns it.

    Centroids are converted from the backend's LPS to RAS (R = −x, A = −y, S = z).
    """
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    arrays = {}
    for column, kind in REVIEW_COLUMNS:
        array = {"int": vtk.vtkIntArray, "double": vtk.vtkDoubleArray, "string": vtk.vtkStringArray}[kind]()
        array.SetName(column)
        arrays[column] = array
    for region in regions:
        ras = lps_to_ras(region["centroid_lps_mm"])
        values = dict(region, centroid_R_mm=ras[0], centroid_A_mm=ras[1], centroid_S_mm=ras[2])
        for column, kind in REVIEW_COLUMNS:
            value = values[column]
            arrays[column].InsertNextValue(str(value) if kind == "string" else (int(value) if kind == "int" else float(value)))
    was = table_node.StartModify()
    table_node.RemoveAllColumns()
    for array in arrays.values():
        table_node.AddColumn(array)
    table_node.SetColumnUnitLabel("mean_uncertainty", "nats")
    table_node.SetColumnUnitLabel("max_uncertainty", "nats")
    table_node.SetColumnDescription("mean_uncertainty", "mean vote entropy of the region's voxels (flip TTA)")
    table_node.SetAttribute("SpineCTSegmentation.role", "uncertainty-review")
    table_node.EndModify(was)
    return table_node


def review_row_centroid_ras(table_node, row: int) -> np.ndarray:
    """Centroid (3,) RAS mm of a review table row (where the slice views should jump)."""
    if not 0 <= row < table_node.GetNumberOfRows():
        raise IndexError(f"row {row} is not in the review table ({table_node.GetNumberOfRows()} rows)")
    # full precision (GetCellText rounds to 6 digits)
    return np.array([slicer.util.arrayFromTableColumn(table_node, c)[row] for c in ("centroid_R_mm", "centroid_A_mm", "centroid_S_mm")], float)
