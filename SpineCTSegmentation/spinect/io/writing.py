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

__all__ = ["write_labelmap", "levels_output_path", "write_image", "verify_image_file", "check_gzip_stream", "LABEL_OUTPUT_SUFFIXES",
           "IMAGE_OUTPUT_SUFFIXES"]

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
    levels: sitk.Image | None = None,
) -> Path:
    """Write a label map (class index per voxel) to ``path``.

    Args:
        label: 3D integer label map, values in ``range(len(class_names))``.
        path: output file; its suffix picks the format: ``.seg.nrrd`` (3D Slicer segmentation,
            one segment per class except background, named, identified and valued as the class)
            or ``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha`` (UInt8 label image, compressed).
        class_names: class names; index = label value, index 0 is background.
        overwrite: replace an existing file (otherwise OutputError).
        levels: optional vertebral level map on the same grid (values index
            :data:`spinect.plan.LEVEL_MAP_NAMES`). ``.seg.nrrd``: its segments (``L1`` ... ``sacrum``,
            SNOMED CT vertebra codes) go into a second layer, overlapping ``bone``. Label images:
            written to :func:`levels_output_path` (``<name>_levels<suffix>``) before ``path``.

    Returns:
        ``path`` as a Path.

    Raises:
        OutputError: unknown suffix, missing or unwritable folder, existing file with
            ``overwrite=False``, or the write failed (nothing is left under ``path``).
        InputError: ``label`` is not a 3D label map with values in ``range(len(class_names))``.
    """
    from spinect.plan import LEVEL_MAP_NAMES

    path = _checked_path(path, LABEL_OUTPUT_SUFFIXES, "label map", overwrite=overwrite)
    check_labelmap(label, class_names=class_names)
    layers = [] if levels is None else [(levels, LEVEL_MAP_NAMES)]
    if levels is not None:
        check_labelmap(levels, class_names=LEVEL_MAP_NAMES, source="the level map")
    if full_suffix(path) == ".seg.nrrd":
        _refuse_foreign_segments(path, tuple(class_names) + LEVEL_MAP_NAMES[1:])
        segmentation = labelmap_to_segmentation(label, class_names=class_names, layers=layers)
        with atomic_output(path, verify=lambda tmp: _verify_segmentation(tmp, segmentation), overwrite=overwrite) as tmp:
            import slicerio  # lazy: Slicer's own process imports spinect without slicerio
            _guarded(lambda: slicerio.write_segmentation(str(tmp), segmentation), path)
        return path
    if levels is not None:
        write_image(_as_uint8(levels), levels_output_path(path), overwrite=overwrite)
    return write_image(_as_uint8(label), path, overwrite=overwrite)


def _as_uint8(image: sitk.Image) -> sitk.Image:
    """``image`` as UInt8; a UInt8 image as it is (``sitk.Cast`` would copy its voxels: 150 MiB more at the
    peak of writing a 512×512×600 label map, issue 17)."""
    return image if image.GetPixelID() == sitk.sitkUInt8 else sitk.Cast(image, sitk.sitkUInt8)


def levels_output_path(path: str | os.PathLike) -> Path:
    """Where a label-image output's level map goes: ``out.nii.gz`` -> ``out_levels.nii.gz``;
    a ``.seg.nrrd`` holds its levels itself (returned unchanged)."""
    path = Path(path)
    suffix = full_suffix(path)
    if suffix == ".seg.nrrd":
        return path
    return path.with_name(path.name[: len(path.name) - len(suffix)] + "_levels" + suffix)


def _refuse_foreign_segments(path: Path, class_names: Sequence[str]) -> None:
    """An existing Slicer segmentation may hold the user's other work (liver, tumour, ...):
    replacing it with bone + nerve would lose it without a word.

    Raises:
        OutputError: ``path`` holds segments other than ``class_names`` (or cannot be read as a
            segmentation, so what it holds is unknown).
    """
    if not path.exists():
        return
    import slicerio

    try:
        existing = slicerio.read_segmentation(str(path), skip_voxels=True)
    except Exception as exc:  # noqa: BLE001 - unreadable: we cannot know what would be lost
        raise OutputError(
            f"{path} exists and is not a readable segmentation ({exc}); it will not be replaced. Choose another output name"
        ) from exc
    ours = {name.lower() for name in class_names[1:]}
    foreign = [s.get("name", "?") for s in existing.get("segments", []) if str(s.get("name", "")).lower() not in ours]
    if foreign:
        raise OutputError(
            f"{path} already holds other segments ({', '.join(foreign)}); writing bone and nerve would replace them. "
            "Choose another output name, or load both in Slicer and merge them there"
        )


def write_image(image: sitk.Image, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write any SimpleITK image (CT, probability map, label map) to ``path``, compressed.

    Args:
        image: the image; pixel type and geometry are written as they are.
        path: ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.mha`` file.
        overwrite: replace an existing file (otherwise OutputError).
        levels: optional vertebral level map on the same grid (values index
            :data:`spinect.plan.LEVEL_MAP_NAMES`). ``.seg.nrrd``: its segments (``L1`` ... ``sacrum``,
            SNOMED CT vertebra codes) go into a second layer, overlapping ``bone``. Label images:
            written to :func:`levels_output_path` (``<name>_levels<suffix>``) before ``path``.

    Returns:
        ``path`` as a Path.

    Raises:
        OutputError: unknown suffix, missing or unwritable folder, existing file with
            ``overwrite=False``, or the write failed (nothing is left under ``path``).
    """
    path = _checked_path(path, IMAGE_OUTPUT_SUFFIXES, "image", overwrite=overwrite)
    with atomic_output(path, verify=lambda tmp: verify_image_file(tmp, image), overwrite=overwrite) as tmp:
        _guarded(lambda: sitk.WriteImage(image, str(tmp), True), path)
    return path


def verify_image_file(path: str | os.PathLike, expected: sitk.Image) -> None:
    """Read ``path`` back and check it holds ``expected`` (size, spacing, voxels).

    SimpleITK zero-fills a truncated NIfTI without an error, so the voxels are compared, and a
    gzip stream is decompressed in full first (its CRC and length are checked at the end).

    Raises:
        ValueError: the file differs from ``expected`` or is not readable.
    """
    import numpy as np

    if full_suffix(path) == ".nii.gz":
        check_gzip_stream(path)
    actual = sitk.ReadImage(str(path))
    if actual.GetSize() != expected.GetSize():
        raise ValueError(f"size {actual.GetSize()} read back, {expected.GetSize()} written")
    if not np.allclose(actual.GetSpacing(), expected.GetSpacing(), rtol=1e-5):
        raise ValueError(f"spacing {actual.GetSpacing()} read back, {expected.GetSpacing()} written")
    a, b = sitk.GetArrayViewFromImage(actual), sitk.GetArrayViewFromImage(expected)
    if b.dtype.kind in "fc":
        finite = np.isfinite(b)  # NIfTI's reader turns NaN/inf into 0: compare the rest
        same = np.array_equal(a[finite], b[finite]) and bool(np.all((a[~finite] == 0) | ~np.isfinite(a[~finite])))
    else:
        same = np.array_equal(a, b)
    if not same:
        raise ValueError("voxel values read back differ from those written")


def check_gzip_stream(path: str | os.PathLike, *, chunk_bytes: int = 1 << 22) -> int:
    """Decompress a whole gzip file; return its uncompressed size.

    Raises:
        ValueError: truncated stream or bad CRC (the gzip module checks both at the end).
    """
    import gzip
    import zlib

    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while block := stream.read(chunk_bytes):
                total += len(block)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise ValueError(f"damaged gzip data ({exc})") from exc
    return total


def _verify_segmentation(path: Path, written: dict) -> None:
    import numpy as np
    import slicerio

    back = slicerio.read_segmentation(str(path))
    if not np.array_equal(np.asarray(back["voxels"]), np.asarray(written["voxels"])):
        raise ValueError("segment voxels read back differ from those written")


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
