"""What a case report holds, gathered from the files spinect wrote (no Slicer, no network).

* **Segmentation**: segment volumes from a label map or a ``.seg.nrrd`` (every segment it holds,
  levels included), in mL = voxels x voxel volume (mm³) / 1000.
* **Provenance**: the segmentation's ``<file>.provenance.json`` sidecar (:mod:`spinect.io.provenance`):
  input, model name/version/sha256, training status, spinect and torch versions, settings.
* **Triangle measurements**: the JSON files ``spinect triangles --json`` writes, each with its
  definitions, view (θ, φ), C-arm angles, projected and true areas, r*, window outlines, and, with
  ``--optimize``, the best view, its heat map PNG and the planned needle path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from spinect.errors import InputError

__all__ = ["SegmentVolume", "Measurement", "CaseReport", "gather_report", "segment_volumes", "read_measurement"]


@dataclass(frozen=True)
class SegmentVolume:
    """One segment's size: ``voxels`` and ``volume_ml`` (mL = cm³)."""

    name: str
    voxels: int
    volume_ml: float


@dataclass(frozen=True)
class Measurement:
    """One ``spinect triangles`` JSON: its path and its parsed content."""

    path: Path
    data: dict[str, Any]

    @property
    def title(self) -> str:
        m = self.data["measurement"]
        return f"{m['triangle'].capitalize()} triangle {m['level']} {m['side']}"

    def heatmap_path(self) -> Path | None:
        """The heat map PNG the JSON names (relative names are taken from the JSON's folder), if it exists."""
        name = (self.data.get("files") or {}).get("heatmap_png")
        if not name:
            return None
        path = Path(name)
        path = path if path.is_absolute() else self.path.parent / path
        return path if path.is_file() else None


@dataclass(frozen=True)
class CaseReport:
    """Everything on one case's page.

    Attributes:
        case_id: shown as the page title.
        segmentation: the label map or segmentation file, or None.
        voxel_mm3: volume of one voxel (mm³) of the segmentation.
        volumes: per segment.
        provenance: the sidecar's record, or None when there is none.
        provenance_path: where it was read from.
        ct: the CT file named on the command line (or in the provenance), or None.
        measurements: triangle measurements in the order given.
    """

    case_id: str
    segmentation: Path | None
    voxel_mm3: float | None
    volumes: list[SegmentVolume]
    provenance: dict[str, Any] | None
    provenance_path: Path | None
    ct: str | None
    measurements: list[Measurement] = field(default_factory=list)


def gather_report(
    *,
    seg: str | os.PathLike | None = None,
    triangles: Sequence[str | os.PathLike] = (),
    provenance: str | os.PathLike | None = None,
    ct: str | os.PathLike | None = None,
    case_id: str | None = None,
) -> CaseReport:
    """Read everything a report shows; fail early with a clear message on a bad file.

    Args:
        seg: label map (``.nii.gz``, ``.nrrd``, ...) or Slicer ``.seg.nrrd``; optional.
        triangles: ``spinect triangles --json`` files.
        provenance: the segmentation's provenance sidecar (default: ``<seg>.provenance.json`` if present).
        ct: the CT file, shown as the input (default: the provenance's input).
        case_id: page title (default: the segmentation's or first measurement's file name).

    Raises:
        InputError: nothing to report, a missing or unreadable file, or a JSON that is not a
            ``spinect triangles`` result.
    """
    if seg is None and not triangles:
        raise InputError("nothing to report: give a segmentation (--seg) and/or triangle measurements (--triangles)")
    measurements = [read_measurement(path) for path in triangles]
    seg_path = None if seg is None else Path(seg)
    volumes, voxel_mm3 = segment_volumes(seg_path) if seg_path is not None else ([], None)
    prov_path = _provenance_path(seg_path, provenance)
    record = _read_json(prov_path, "provenance sidecar") if prov_path is not None else None
    ct_name = str(ct) if ct is not None else (record or {}).get("input")
    default_id = (seg_path.name if seg_path is not None else measurements[0].path.stem).split(".")[0]
    return CaseReport(case_id or default_id, seg_path, voxel_mm3, volumes, record, prov_path, ct_name, measurements)


def segment_volumes(path: Path) -> tuple[list[SegmentVolume], float]:
    """Voxels and mL of every segment of a ``.seg.nrrd``, or of every label value of a label image.

    Label image values are named by the provenance sidecar's ``label_values`` when there is one,
    else 1 ``bone``, 2 ``nerve`` and ``label k`` for others.

    Returns:
        (volumes, voxel volume in mm³).
    """
    from spinect.io.atomic import full_suffix

    if not path.is_file():
        raise InputError(f"segmentation {path} does not exist; check the path")
    if full_suffix(path) == ".seg.nrrd":
        return _seg_nrrd_volumes(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read segmentation {path}; give the label map or .seg.nrrd `spinect segment` wrote") from exc
    voxel_mm3 = float(np.prod(image.GetSpacing()))
    counts = np.bincount(sitk.GetArrayViewFromImage(image).astype(np.int64).ravel())
    names = _label_names(path)
    volumes = [SegmentVolume(names.get(value, f"label {value}"), int(n), n * voxel_mm3 / 1000.0)
               for value, n in enumerate(counts) if value > 0 and (n > 0 or value in names)]
    return volumes, voxel_mm3


def read_measurement(path: str | os.PathLike) -> Measurement:
    """Read a ``spinect triangles --json`` result.

    Raises:
        InputError: missing, not JSON, or not a triangles result.
    """
    path = Path(path)
    data = _read_json(path, "triangle measurement")
    if "measurement" not in data or "quantities" not in data.get("measurement", {}):
        raise InputError(f"{path} is not a `spinect triangles --json` result (no measurement with quantities); "
                         "give the JSON that `spinect triangles ... --json FILE` wrote")
    return Measurement(path, data)


def _seg_nrrd_volumes(path: Path) -> tuple[list[SegmentVolume], float]:
    import slicerio

    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as exc:  # noqa: BLE001 - slicerio raises IOError, ValueError, pynrrd errors
        raise InputError(f"cannot read Slicer segmentation {path} ({exc}); save it again from Slicer") from exc
    voxel_mm3 = float(abs(np.linalg.det(np.asarray(segmentation["ijkToLPS"], float)[:3, :3])))
    volumes = []
    for segment in segmentation.get("segments", []):
        voxels = int(np.count_nonzero(slicerio.segment_mask(segmentation, segment)))
        volumes.append(SegmentVolume(str(segment.get("name", segment.get("id"))), voxels, voxels * voxel_mm3 / 1000.0))
    return volumes, voxel_mm3


def _label_names(path: Path) -> dict[int, str]:
    from spinect.io.provenance import provenance_path

    sidecar = provenance_path(path)
    if sidecar.is_file():
        values = _read_json(sidecar, "provenance sidecar").get("label_values") or {}
        return {int(v): str(k) for k, v in values.items() if int(v) > 0}
    return {1: "bone", 2: "nerve"}


def _provenance_path(seg: Path | None, given: str | os.PathLike | None) -> Path | None:
    if given is not None:
        return Path(given)
    if seg is None:
        return None
    from spinect.io.provenance import provenance_path

    sidecar = provenance_path(seg)
    return sidecar if sidecar.is_file() else None


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist; check the path")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {what} {path} ({exc}); give the JSON file spinect wrote") from exc
    if not isinstance(data, dict):
        raise InputError(f"{what} {path} holds no JSON object; give the JSON file spinect wrote")
    return data
