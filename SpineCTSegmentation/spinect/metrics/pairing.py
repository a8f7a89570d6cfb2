"""Pair prediction files with label files by case id (file name without suffixes).

``case07_pred.nii.gz``, ``case07_labels.seg.nrrd`` and ``case07.nrrd`` all have the case id
``case07``: the image suffix is dropped, then any trailing role tokens (``_pred``, ``_labels``,
``_seg``...), case-insensitively. In a label folder, files named as something other than a label map
(``case07_ct.nii.gz``, ``case07_structures.nii.gz``: what ``spinect phantom`` writes beside the
labels) are skipped, so a phantom or dataset folder can be given as it is.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from spinect.errors import InputError
from spinect.io.atomic import full_suffix

__all__ = ["IMAGE_SUFFIXES", "case_id_from_path", "list_image_files", "match_case_files"]

#: File suffixes read as label maps (longest first, so ``.seg.nrrd`` wins over ``.nrrd``).
IMAGE_SUFFIXES: tuple[str, ...] = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

logger = logging.getLogger(__name__)

# Files in a folder that are not label maps: the CT (and other images) beside them.
_NOT_LABELS = re.compile(r"[_.-](ct|image|img|structures)$", re.IGNORECASE)

# Trailing role words, with _, - or . before them; repeated ("case1_pred_seg" -> "case1").
_ROLE_TOKEN = re.compile(
    r"[_.-](pred|preds|prediction|predictions|label|labels|labelmap|seg|segmentation|mask|gt|truth|auto|manual)$",
    re.IGNORECASE,
)


def _without_image_suffix(name: str) -> str:
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def case_id_from_path(path: str | os.PathLike) -> str:
    """Case id of an image file: its name without image suffix and trailing role tokens."""
    name = _without_image_suffix(Path(path).name)
    while True:
        stripped = _ROLE_TOKEN.sub("", name)
        if stripped == name or not stripped:
            return name
        name = stripped


def list_image_files(path: str | os.PathLike, *, what: str) -> dict[str, Path]:
    """Case id -> image file, for a single file or every image file in a folder (not recursive).

    Args:
        path: a label map file or a folder of them.
        what: what the files are ("prediction", "label"), for error messages.

    Raises:
        InputError: ``path`` does not exist, the folder holds no image file, or two files give
            the same case id.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} path {path} does not exist; give an existing file or folder")
    if path.is_file():
        return {case_id_from_path(path): path}
    images = sorted(
        p for p in path.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_SUFFIXES)
    )
    files = [p for p in images
             if what != "label" or full_suffix(p) == ".seg.nrrd" or not _NOT_LABELS.search(_without_image_suffix(p.name))]
    skipped = [p.name for p in images if p not in files]
    if skipped:
        logger.info("%s folder %s: skipping %d files that are not label maps (%s)", what, path, len(skipped),
                    ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    if not files:
        also = f" besides CT or structure images ({', '.join(skipped[:3])})" if skipped else ""
        raise InputError(
            f"{what} folder {path} holds no label map file ({', '.join(IMAGE_SUFFIXES)}){also}; check the folder"
        )
    by_case: dict[str, Path] = {}
    for file in files:
        case_id = case_id_from_path(file)
        if case_id in by_case:
            raise InputError(
                f"{what} files {by_case[case_id].name} and {file.name} both give case id {case_id!r}; "
                "keep one file per case"
            )
        by_case[case_id] = file
    return by_case


def match_case_files(
    pred_path: str | os.PathLike, label_path: str | os.PathLike
) -> list[tuple[str, Path, Path]]:
    """Pair predictions with labels by case id.

    Two single files are paired whatever their names (case id from the label file). Otherwise
    every prediction needs a label and every label a prediction.

    Args:
        pred_path: a prediction file or a folder of them.
        label_path: a label file or a folder of them.

    Returns:
        (case_id, prediction file, label file) sorted by case id.

    Raises:
        InputError: a path is missing or empty, or some case ids have no partner.
    """
    preds = list_image_files(pred_path, what="prediction")
    labels = list_image_files(label_path, what="label")
    if Path(pred_path).is_file() and Path(label_path).is_file():
        (pred_file,), ((case_id, label_file),) = preds.values(), labels.items()
        return [(case_id, pred_file, label_file)]
    missing_label = sorted(set(preds) - set(labels))
    missing_pred = sorted(set(labels) - set(preds))
    if missing_label or missing_pred:
        parts = []
        if missing_pred:
            parts.append(f"labels without prediction: {', '.join(missing_pred)}")
        if missing_label:
            parts.append(f"predictions without label: {', '.join(missing_label)}")
        raise InputError(
            "cannot pair predictions with labels by case id (" + "; ".join(parts) + "); "
            "name files <case>[_pred|_labels|_seg].<ext> so that case ids match"
        )
    return [(case_id, preds[case_id], labels[case_id]) for case_id in sorted(labels)]
