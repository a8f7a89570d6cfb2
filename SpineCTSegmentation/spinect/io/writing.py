"""Write label maps (and other images) atomically, in the format their suffix names.

``.seg.nrrd`` gives a 3D Slicer segmentation (segments ``bone`` and ``nerve`` with Slicer's
colours and terminology, see :data:`spinect.io.labels.SEGMENT_STYLES`); ``.nii``, ``.nii.gz``,
``.nrrd`` and ``.mha`` give a compressed UInt8 label image. The file is written on the grid the
image carries, first under a temporary name in the same folder and renamed at the end, so a
failure never leaves a partial file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import SimpleITK as sitk

from spinect.errors import OutputError
from spinect.io.atomic import atomic_output, check_output_path, full_suffix
from spinect.io.labels import check_labelmap, labelmap_to_segmentation
from spinect.plan import CLASS_NAMES

__all__ = ["write_labelmap", "write_image", "LABEL_OUTPUT_SUFFIXES", "IMAGE_OUTPUT_SUFFIXES"]

#: Single-file image formats (SimpleITK; .nhdr/.mhd are left out: they write two files).
IMAGE_OUTPUT_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha")
#: Label map outputs: a Slicer segmentation or a label image.
LABEL_OUTPUT_SUFFIXES: tuple[str, ...] = (".seg.nrrd",) + IMAGE_OUTPUT_SUFFIXES


def write_labelmap(
    label: sitk.Image,
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] = CLASS_NAMES,
    overwrite: bool = True,
) -> Path:
    """Write a label map (class index per voxel) to ``path``.

    Args:
        label: 3D integer label map, values in ``range(len(class_names))``.
        path: output file; its suffix picks the format: ``.seg.nrrd`` (3D Slicer segmentation,
            one segment per class except background, named, identified and valued as the class)
            or ``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha`` (UInt8 label image, compressed).
        class_names: class names; index = label value, index 0 is background.
        overwrite: replace an existing file (otherwise OutputError).

    Returns:
        ``path`` as a Path.

    Raises:
        OutputError: unknown suffix, missing or unwritable folder, existing file with
            ``overwrite=False``, or the write failed (nothing is left under ``path``).
        InputError: ``label`` is not a 3D label map with values in ``range(len(class_names))``.
    """
    path = _checked_path(path, LABEL_OUTPUT_SUFFIXES, "label map", overwrite=overwrite)
    check_labelmap(label, class_names=class_names)
    if full_suffix(path) == ".seg.nrrd":
        segmentation = labelmap_to_segmentation(label, class_names=class_names)
        with atomic_output(path) as tmp:
            import slicerio  # lazy: Slicer's own process imports spinect without slicerio
            _guarded(lambda: slicerio.write_segmentation(str(tmp), segmentation), path)
        return path
    return write_image(sitk.Cast(label, sitk.sitkUInt8), path, overwrite=overwrite)


def write_image(image: sitk.Image, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write any SimpleITK image (CT, probability map, label map) to ``path``, compressed.

    Args:
        image: the image; pixel type and geometry are written as they are.
        path: ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.mha`` file.
        overwrite: replace an existing file (otherwise OutputError).

    Returns:
        ``path`` as a Path.

    Raises:
        OutputError: unknown suffix, missing or unwritable folder, existing file with
            ``overwrite=False``, or the write failed (nothing is left under ``path``).
    """
    path = _checked_path(path, IMAGE_OUTPUT_SUFFIXES, "image", overwrite=overwrite)
    with atomic_output(path) as tmp:
        _guarded(lambda: sitk.WriteImage(image, str(tmp), True), path)
    return path


def _checked_path(path: str | os.PathLike, suffixes: tuple[str, ...], what: str, *, overwrite: bool) -> Path:
    if full_suffix(path) not in suffixes:
        raise OutputError(
            f"cannot write a {what} to {path}: unknown suffix {full_suffix(path)!r}; use one of "
            f"{', '.join(suffixes)}"
        )
    return check_output_path(path, overwrite=overwrite)


def _guarded(write, path: Path) -> None:
    """Run a writer; turn library errors (SimpleITK RuntimeError, pynrrd errors) into OutputError."""
    try:
        write()
    except OSError:
        raise  # atomic_output reports disk-full and permission errors itself
    except Exception as exc:  # noqa: BLE001 - any writer failure means no output
        raise OutputError(f"could not write {path}: {exc}; check the folder and free disk space") from exc
