"""Provenance of a segmentation: which code, model and settings made it, written beside every output.

``spinect segment`` writes one JSON sidecar per output file, named ``<output file name>.provenance.json``
(``ct.seg.nrrd`` -> ``ct.seg.nrrd.provenance.json``), so that a label map found months later still says
which model (file name, ``model_version``, sha256 of the ``.pt`` file), which spinect and PyTorch
versions and which label-changing settings (smoothing, blending, stride, flips, ensemble, island
removal and its thresholds, skipped windows, arithmetic precision, device) produced it. DICOM SEG files carry the same facts inside the file
as well (:mod:`spinect.io.dicom_seg`).

The sidecar is written atomically after its output (:func:`spinect.io.atomic.atomic_output`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

from spinect.io.atomic import atomic_output

__all__ = ["PROVENANCE_SUFFIX", "provenance_path", "model_identity", "segment_provenance", "segment_settings",
           "write_provenance", "write_sidecars"]

#: Appended to an output file's full name to name its sidecar.
PROVENANCE_SUFFIX = ".provenance.json"


def provenance_path(output: str | os.PathLike) -> Path:
    """The sidecar of ``output``: the same folder, the full file name + :data:`PROVENANCE_SUFFIX`."""
    output = Path(output)
    return output.with_name(output.name + PROVENANCE_SUFFIX)


def model_identity(model_path: str | os.PathLike, plan) -> dict[str, Any]:
    """Name, version, sha256, training status and classes of a model file.

    Args:
        model_path: the ``.pt`` file (hashed here: a few MB, milliseconds).
        plan: its :class:`spinect.plan.ModelPlan`.
    """
    from spinect.model_file import sha256_of_file

    model_path = Path(model_path)
    return {
        "name": model_path.stem,
        "file": str(model_path),
        "sha256": sha256_of_file(model_path),
        "model_version": str(plan.model_version),
        "training_status": plan.training_status,
        "architecture": dict(plan.architecture),
        "class_names": list(plan.class_names),
    }


def segment_provenance(
    *,
    input: str | os.PathLike | None,
    model_path: str | os.PathLike,
    plan,
    ensemble: Sequence[str | os.PathLike] = (),
    settings: Mapping[str, Any],
    label_names: Sequence[str],
    device: str,
) -> dict[str, Any]:
    """Everything needed to say how a ``spinect segment`` result was made.

    Args:
        input: the CT path, or None for an in-memory image.
        model_path / plan: the (first) model and its plan.
        ensemble: further model files fused with it.
        settings: the label-changing settings as applied (defaults resolved from the plan),
            e.g. ``smoothing_mm`` (mm), ``blend``, ``stride_zyx`` (voxels, z y x), ``tta``,
            ``keep_islands``, ``whole_volume``.
        label_names: names of the label map's values (index = value).
        device: the torch device the network ran on (CPU and CUDA may differ in the last bits).

    Returns:
        A JSON-serialisable dict.
    """
    import torch

    from spinect import __version__
    from spinect.model_file import load_plan

    return {
        "software": {"name": "spinect", "version": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input": None if input is None else str(input),
        "model": model_identity(model_path, plan),
        "ensemble": [model_identity(p, load_plan(p)) for p in ensemble],
        "settings": {key: _jsonable(value) for key, value in settings.items()},
        "device": device,
        "label_values": {name: index for index, name in enumerate(label_names)},
    }


def write_provenance(output: str | os.PathLike, provenance: Mapping[str, Any], *, role: str = "segmentation",
                     overwrite: bool = True) -> Path:
    """Write ``provenance`` (plus the output's name and role) as the sidecar of ``output``.

    Args:
        output: the output file the facts describe.
        provenance: from :func:`segment_provenance`.
        role: what ``output`` holds (``segmentation``, ``uncertainty``, ``review``, ``dicom-seg``).
        overwrite: replace an existing sidecar (otherwise OutputError).

    Returns:
        The sidecar path.
    """
    path = provenance_path(output)
    record = {"output": Path(output).name, "role": role, **provenance}
    with atomic_output(path, verify=_verify_json, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def _verify_json(path: Path) -> None:
    json.loads(path.read_text(encoding="utf-8"))


def _jsonable(value: Any) -> Any:
    """Tuples to lists, paths to strings, numpy scalars to Python numbers."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def segment_settings(plan, *, smoothing_mm: float | None, blend: str | None, stride_zyx: Sequence[int] | None,
                     tta: bool, ensemble: Sequence[str | os.PathLike], keep_islands: bool, whole_volume: bool,
                     levels: bool = False, precision: str = "auto", mirror: str = "auto", device=None) -> dict[str, Any]:
    """The label-changing settings of a ``segment`` call as applied: None resolved to the plan's defaults
    (:meth:`spinect.pipeline.InferenceSettings.record`, which :func:`spinect.api.segment` records).

    Returns:
        ``smoothing_mm`` (median kernel, mm; 0 = off), ``blend``, ``stride_zyx`` (voxels, z y x),
        ``patch_size_zyx``, ``spacing_zyx_mm``, ``hu_window`` (HU), ``tta``, ``ensemble_members``
        (model files), ``remove_islands`` and ``island_rules`` (thresholds; None when kept),
        ``skip_air``/``air_hu``, ``bone_margin_mm``/``bone_hu`` (None = every window run),
        ``precision`` (and ``precision_applied`` with a ``device``), ``mirror`` (and ``mirror_axes_zyx``
        with a ``device``) and ``levels``.
    """
    from spinect.pipeline import BONE_MARGIN_MM, InferenceSettings

    settings = InferenceSettings.from_plan(
        plan, smoothing_mm=smoothing_mm, blend=blend, stride_zyx=stride_zyx, tta=bool(tta), precision=precision,
        mirror=mirror, remove_islands=not keep_islands, bone_margin_mm=None if whole_volume else BONE_MARGIN_MM, levels=bool(levels))
    return settings.record(plan, ensemble_members=1 + len(ensemble), device=device)


def write_sidecars(outputs: Mapping[str, str | os.PathLike | None], provenance: Mapping[str, Any], *,
                   overwrite: bool = True) -> list[Path]:
    """Write the provenance sidecar of each given output (role -> path; None entries are skipped).

    Returns:
        The sidecars written.
    """
    return [write_provenance(path, provenance, role=role, overwrite=overwrite)
            for role, path in outputs.items() if path is not None]
