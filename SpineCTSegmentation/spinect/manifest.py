"""Dataset manifest: the one file that says which image goes with which label.

A training dataset is a folder with ``manifest.json``::

    {"format": "spinect-dataset", "version": 1,
     "class_names": ["background", "bone", "nerve"],
     "cases": [{"id": "case_000", "image": "case_000_ct.nii.gz",
                "label": "case_000_labels.nii.gz", "source": "phantom"}, ...]}

Paths are relative to the folder. Labels may be label maps (NIfTI/NRRD/MHA, values = class
index) or Slicer ``.seg.nrrd`` files (read by segment name). The phantom generator, Slicer's
"Export for training" and ``spinect train`` all use this file; a folder without one is scanned
for ``*_ct.*`` / ``*_labels.*`` (or ``*.seg.nrrd``) pairs by :func:`discover_cases`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spinect.errors import InputError
from spinect.io.atomic import atomic_output
from spinect.plan import CLASS_NAMES

__all__ = ["DatasetCase", "read_manifest", "write_manifest", "add_case", "discover_cases", "MANIFEST_NAME"]

MANIFEST_NAME = "manifest.json"
_FORMAT = "spinect-dataset"
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass(frozen=True)
class DatasetCase:
    """One image/label pair; ``image`` and ``label`` are absolute paths once read."""

    id: str
    image: Path
    label: Path
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def read_manifest(folder: str | os.PathLike) -> list[DatasetCase]:
    """Cases listed in ``folder/manifest.json`` (absolute paths); files must exist."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"no {MANIFEST_NAME} in {folder}; create one (see docs) or use discover_cases")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from exc
    if data.get("format") != _FORMAT:
        raise InputError(f"{path} is not a spinect dataset manifest (format != {_FORMAT!r})")
    cases = []
    for entry in data.get("cases", []):
        case = DatasetCase(
            id=str(entry["id"]),
            image=(folder / entry["image"]).resolve(),
            label=(folder / entry["label"]).resolve(),
            source=str(entry.get("source", "")),
            extra={k: v for k, v in entry.items() if k not in ("id", "image", "label", "source")},
        )
        if isinstance(case.extra.get("structures"), str):  # a phantom's structure map, relative like the others
            case.extra["structures"] = str((folder / case.extra["structures"]).resolve())
        for p in (case.image, case.label):
            if not p.exists():
                raise InputError(f"case {case.id} in {path}: file {p} is missing")
        cases.append(case)
    if not cases:
        raise InputError(f"{path} lists no cases")
    return cases


def write_manifest(folder: str | os.PathLike, cases: list[DatasetCase], *, class_names: tuple[str, ...] = CLASS_NAMES) -> Path:
    """Write ``folder/manifest.json`` atomically; paths are stored relative to ``folder``."""
    folder = Path(folder)
    entries = []
    for case in cases:
        entry = {
            "id": case.id,
            "image": os.path.relpath(case.image, folder),
            "label": os.path.relpath(case.label, folder),
            "source": case.source,
        }
        entry.update(case.extra)
        entries.append(entry)
    data = {"format": _FORMAT, "version": 1, "class_names": list(class_names), "cases": entries}
    path = folder / MANIFEST_NAME
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def add_case(folder: str | os.PathLike, case: DatasetCase) -> Path:
    """Append (or replace, by id) one case in ``folder``'s manifest, creating it if needed."""
    folder = Path(folder)
    existing = read_manifest(folder) if (folder / MANIFEST_NAME).is_file() else []
    kept = [c for c in existing if c.id != case.id]
    return write_manifest(folder, kept + [case])


def discover_cases(folder: str | os.PathLike) -> list[DatasetCase]:
    """Pair ``<id>_ct.<ext>`` with ``<id>_labels.<ext>`` or ``<id>.seg.nrrd`` in ``folder``."""
    folder = Path(folder)
    if (folder / MANIFEST_NAME).is_file():
        return read_manifest(folder)
    images = {}
    for path in sorted(folder.iterdir()):
        stem = _strip_suffix(path.name)
        match = re.fullmatch(r"(.+)_ct", stem or "")
        if match:
            images[match.group(1)] = path
    cases = []
    for case_id, image in images.items():
        candidates = [folder / f"{case_id}_labels{s}" for s in _IMAGE_SUFFIXES] + [folder / f"{case_id}.seg.nrrd", folder / f"{case_id}_seg.seg.nrrd"]
        label = next((c for c in candidates if c.exists()), None)
        if label is not None:
            cases.append(DatasetCase(id=case_id, image=image.resolve(), label=label.resolve()))
    if not cases:
        raise InputError(f"no image/label pairs found in {folder}: expected {MANIFEST_NAME} or files named <id>_ct.nii.gz + <id>_labels.nii.gz (or <id>.seg.nrrd)")
    return cases


def _strip_suffix(name: str) -> str | None:
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix) and not name.lower().endswith(".seg.nrrd"):
            return name[: -len(suffix)]
    return None
