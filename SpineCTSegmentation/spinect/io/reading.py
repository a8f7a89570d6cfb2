"""Read a CT volume (NIfTI, NRRD, MetaImage or a DICOM series) and check that it is a usable 3D CT.

:func:`read_ct` returns a ``sitkFloat32`` image in Hounsfield units with the file's geometry
(origin, spacing, direction cosines; LPS mm, as SimpleITK and DICOM use). DICOM series are read
with SimpleITK's ``ImageSeriesReader`` (GDCM), which applies rescale slope and intercept.

DICOM folders may hold several series, and anonymised series may have an empty
SeriesInstanceUID. Series with a UID are grouped by GDCM; files without one are grouped by their
own tags (FrameOfReferenceUID, ImageOrientationPatient, rows, columns, pixel spacing, slice
thickness) and sorted by ImagePositionPatient projected on the slice normal. The longest series
is read and the choice is logged on the ``spinect`` logger.

A series that would stack into a wrong grid is refused (:class:`InputError` naming the files):
a file in the folder that looks like DICOM but cannot be read (truncated, damaged: GDCM would
silently leave it out), slices of different sizes or orientations, two slices at one position,
or a missing slice (a gap more than 1.5 times the usual spacing). Smaller variations of the
spacing are logged as a warning. (dcm2niix and Slicer's DICOM import flag the same faults.)
"""

from __future__ import annotations

import contextlib
import gzip
import locale
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinect.errors import InputError
from spinect.io.atomic import check_name_encoding, full_suffix

__all__ = [
    "check_nifti_integrity",
    "dicom_series_files",
    "gap_resampling",
    "check_geometry",
    "read_ct",
    "validate_ct",
    "image_info",
    "CT_FILE_SUFFIXES",
    "AIR_HU",
    "AIR_MIN_HU",
    "AIR_FRACTION_MIN",
    "FAT_HU",
    "FAT_FRACTION_MIN",
    "MIN_VOXELS_PER_AXIS",
]

logger = logging.getLogger(__name__)

#: Single-file formats read_ct accepts (besides DICOM: a folder, or a file inside one).
CT_FILE_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

# "Is this CT?" rule (see validate_ct). Real CT in HU contains air (outside the body, bowel,
# lungs: -1000 HU) or the scanner's padding outside the field of view (-1024..-3024 HU); a crop
# tight enough to hold no air still holds fat (-120..-30 HU). MR, PET and CT stored without
# rescale have no such negative values.
AIR_HU = -500.0  #: voxels below this are air
AIR_MIN_HU = -800.0  #: a minimum at or below this means air or scanner padding is present
AIR_FRACTION_MIN = 1e-3  #: fraction of air voxels that is enough on its own
FAT_HU = -30.0  #: voxels below this are fat (or air)
FAT_FRACTION_MIN = 1e-2  #: fraction of fat-or-air voxels that is enough on its own
MIN_VOXELS_PER_AXIS = 2  #: fewer voxels along an axis makes the image 2D

_DICOM_IO = "GDCMImageIO"
_TAG_SERIES_UID = "0020|000e"
_TAG_FRAME_OF_REFERENCE = "0020|0052"
_TAG_ORIENTATION = "0020|0037"
_TAG_POSITION = "0020|0032"
_TAG_INSTANCE = "0020|0013"
_TAG_ROWS = "0028|0010"
_TAG_COLUMNS = "0028|0011"
_TAG_PIXEL_SPACING = "0028|0030"
_TAG_IMAGER_PIXEL_SPACING = "0018|1164"
_TAG_SLICE_THICKNESS = "0018|0050"


@dataclass(frozen=True)
class _DicomSeries:
    """One DICOM series: a description for messages and its files in slice order."""

    label: str
    files: tuple[str, ...]


#: Pixel types every value of which float32 holds exactly: a CT of these types may be kept as read.
EXACT_IN_FLOAT32 = (sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkInt16, sitk.sitkUInt16, sitk.sitkFloat32)


def read_ct(path: str | os.PathLike, *, allow_gaps: bool = False, keep_integer_type: bool = False) -> sitk.Image:
    """Read a 3D CT volume in Hounsfield units.

    Args:
        path: a NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) or MetaImage
            (``.mha``, ``.mhd``) file; a folder holding a DICOM series (the longest series is
            taken when there are several); or one DICOM file (its series is read from its folder).
        allow_gaps: a DICOM series with missing slices is resampled onto an even grid (linear
            interpolation across the gaps, a warning) instead of refused; the image then carries
            what was done (:func:`gap_resampling`).
        keep_integer_type: an image stored as 8- or 16-bit integers (most CTs: int16) is returned
            as stored instead of as float32 (half the memory; every value is exact in float32,
            and :func:`spinect.pipeline.prepare_network_input` resamples it straight to float32,
            bit for bit as from the float32 image). Other types are cast to float32 either way.

    Returns:
        3D ``sitkFloat32`` image (or, with ``keep_integer_type``, of a type in
        :data:`EXACT_IN_FLOAT32`), HU, with the file's origin, spacing and direction (LPS mm).

    Raises:
        InputError: the path does not exist, is not a readable image, or is not a 3D CT
            (see :func:`validate_ct`).
    """
    path = Path(path)
    with _locale_kept():
        image = _read_image(path, allow_gaps=allow_gaps)
    validate_ct(image, source=str(path))
    return as_float32(image, keep_integer_type=keep_integer_type)


def as_float32(image: sitk.Image, *, keep_integer_type: bool = False) -> sitk.Image:
    """``image`` cast to float32, or as it is when float32 already or (``keep_integer_type``) a
    type of :data:`EXACT_IN_FLOAT32`."""
    if image.GetPixelID() == sitk.sitkFloat32 or (keep_integer_type and image.GetPixelID() in EXACT_IN_FLOAT32):
        return image
    return sitk.Cast(image, sitk.sitkFloat32)


def validate_ct(image: sitk.Image, *, source: str | None = None) -> None:
    """Check that ``image`` is a 3D, single-component CT volume in HU.

    The rules:

    * 3 dimensions with at least :data:`MIN_VOXELS_PER_AXIS` voxels along each axis (a single
      slice is 2D; a thin 3-slice volume is fine); no 4D (time series) and no vector/colour pixels.
    * a trustworthy grid (:func:`check_geometry`): voxel sizes finite and within 0.1-10 mm,
      an orthonormal direction matrix.
    * every voxel finite (no NaN or inf).
    * it looks like CT in HU: the minimum is at or below -800 HU (air or scanner padding), or at
      least 0.1 % of voxels are below -500 HU (air), or at least 1 % are below -30 HU (fat: a crop
      tight enough to hold no air). MR, PET, z-scored images and CT saved without its rescale
      intercept (all values >= 0) fail all three.

    Args:
        image: the volume to check (any pixel type).
        source: file or folder name used in error messages.

    Raises:
        InputError: naming the problem and what to do about it.
    """
    name = source or "the input image"
    _check_shape(image, name)
    check_geometry(image, name)
    values = sitk.GetArrayViewFromImage(image)
    _check_finite(values, name)
    _check_looks_like_ct(values, name)


def image_info(image: sitk.Image) -> dict[str, object]:
    """Facts about an image's grid, for logs and reports.

    Returns:
        ``size_xyz`` (voxels), ``spacing_xyz_mm``, ``origin_xyz_mm`` (LPS), ``orientation`` (the
        three-letter DICOM code of the axes' directions, such as ``LPS`` or ``PIR``; ``None``
        unless 3D), ``pixel_type`` and ``components``.
    """
    orientation = None
    if image.GetDimension() == 3:
        orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    return {
        "size_xyz": tuple(image.GetSize()),
        "spacing_xyz_mm": tuple(round(s, 4) for s in image.GetSpacing()),
        "origin_xyz_mm": tuple(round(o, 3) for o in image.GetOrigin()),
        "orientation": orientation,
        "pixel_type": image.GetPixelIDTypeAsString(),
        "components": image.GetNumberOfComponentsPerPixel(),
    }


# --- validation -----------------------------------------------------------------------------

#: Voxel sizes spinect accepts (mm); outside WARN_SPACING_MM a warning says results may suffer.
SPACING_LIMITS_MM = (0.1, 10.0)
WARN_SPACING_MM = (0.2, 6.0)


def check_geometry(image: sitk.Image, name: str = "the input image") -> None:
    """Refuse a grid that would put the segmentation in the wrong place or at the wrong size.

    Raises:
        InputError: a voxel size that is not finite or outside :data:`SPACING_LIMITS_MM`, or a
            direction matrix that is not orthonormal (sheared or scaled axes, NaN).
    """
    spacing = np.asarray(image.GetSpacing(), float)
    lo, hi = SPACING_LIMITS_MM
    if not np.all(np.isfinite(spacing)) or np.any(spacing < lo) or np.any(spacing > hi):
        raise InputError(
            f"{name} has voxel size {tuple(float(v) for v in spacing)} mm; spinect needs finite voxel sizes of "
            f"{lo:g}-{hi:g} mm. The file's header is probably wrong: export the CT again from the scanner or PACS"
        )
    if np.any(spacing < WARN_SPACING_MM[0]) or np.any(spacing > WARN_SPACING_MM[1]):
        logger.warning("%s has voxel size %s mm, outside the usual %g-%g mm: results may be poor",
                    name, tuple(round(float(v), 3) for v in spacing), *WARN_SPACING_MM)
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), float).reshape(dim, dim)
    if not np.all(np.isfinite(direction)) or not np.allclose(direction @ direction.T, np.eye(dim), atol=1e-4):
        raise InputError(
            f"{name} has a direction matrix that is not orthonormal ({np.round(direction, 4).tolist()}): its axes are "
            "sheared or scaled, so voxel positions would be wrong. Export the CT again (resampled to an orthogonal grid)"
        )


def _check_shape(image: sitk.Image, name: str) -> None:
    size = image.GetSize()
    if image.GetDimension() > 3:
        raise InputError(
            f"{name} is {image.GetDimension()}D (size {size}): a time series or several volumes in one "
            "file; export the single 3D CT volume you want to segment"
        )
    if image.GetDimension() < 3 or min(size) < MIN_VOXELS_PER_AXIS:
        raise InputError(
            f"{name} is 2D (size {size}): a 3D CT volume is needed; give the whole series "
            "(the DICOM folder, or a volume exported from it), not a single slice"
        )
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise InputError(
            f"{name} has {components} values per voxel (vector or colour image); a CT has one value "
            "(HU) per voxel: give the original grey-level CT, not a colour export or a derived field"
        )


def _check_finite(values: np.ndarray, name: str) -> None:
    if not np.issubdtype(values.dtype, np.floating):
        return
    _raise_if_nonfinite(int(values.size - np.count_nonzero(np.isfinite(values))), name)


def _raise_if_nonfinite(count: int, name: str) -> None:
    if count:
        raise InputError(
            f"{name} has {count} NaN or infinite voxels; the file is damaged or was produced by a failed "
            "computation: re-export the CT from the scanner data"
        )


def _check_looks_like_ct(values: np.ndarray, name: str) -> None:
    minimum = float(values.min())
    if minimum <= AIR_MIN_HU:
        return
    air_fraction = float(np.count_nonzero(values < AIR_HU)) / values.size
    fat_fraction = float(np.count_nonzero(values < FAT_HU)) / values.size
    if air_fraction >= AIR_FRACTION_MIN or fat_fraction >= FAT_FRACTION_MIN:
        return
    raise InputError(
        f"{name} does not look like a CT in Hounsfield units: its values run from {minimum:g} to "
        f"{float(values.max()):g} with no air (below {AIR_HU:g} HU) or fat (below {FAT_HU:g} HU). "
        "Is it an MR or PET image, or a CT saved without its rescale intercept? Give the CT "
        "(DICOM series, or a volume exported in HU)"
    )


# --- reading --------------------------------------------------------------------------------


@contextlib.contextmanager
def _locale_kept():
    """GDCM can switch the process locale to "C" (ASCII) and leave it so; put it back.

    (Seen with SimpleITK 2.5.7 writing DICOM tags; reading is guarded as well.) Otherwise every
    later text file or subprocess pipe of the process, Slicer's included, would decode as ASCII.
    """
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        if locale.setlocale(locale.LC_ALL) != saved:
            locale.setlocale(locale.LC_ALL, saved)


def _read_image(path: Path, *, allow_gaps: bool = False) -> sitk.Image:
    check_name_encoding(path, what="input", error=InputError)
    if not path.exists():
        kind = "folder" if not path.suffix else "file"
        raise InputError(f"input {kind} {path} does not exist; check the path (and the current folder)")
    if path.is_dir():
        return _read_dicom_folder(path, allow_gaps=allow_gaps)
    if not path.is_file():
        raise InputError(
            f"{path} is not a regular file (a pipe, socket or device); reading it could block forever. "
            "Give an image file or a DICOM folder"
        )
    if full_suffix(path) in CT_FILE_SUFFIXES:
        return _read_image_file(path)
    if full_suffix(path) == ".dcm" or _is_dicom_file(path):
        return _read_dicom_folder(path.parent, containing=path, allow_gaps=allow_gaps)
    raise InputError(
        f"{path} is not an image format spinect reads; give a DICOM folder or a "
        f"{', '.join(CT_FILE_SUFFIXES)} file"
    )


def check_nifti_integrity(path: str | os.PathLike) -> None:
    """Refuse a truncated or corrupted NIfTI file, which SimpleITK would zero-fill or garble silently.

    Checks the whole gzip stream (CRC and length, for ``.nii.gz``) and that the voxel data the
    header announces (offset + voxels x bytes per voxel) are all there.

    Raises:
        InputError: damaged gzip data, or fewer data bytes than the header promises; a ``x.nii.gz``
            beside a ``x.nii`` (niftilib would read ``x.nii`` instead).
    """
    path = Path(path)
    gz = full_suffix(path) == ".nii.gz"
    if gz and path.with_suffix("").is_file():
        raise InputError(
            f"{path} has an uncompressed twin {path.with_suffix('').name} in the same folder, and the NIfTI reader "
            f"(niftilib) silently reads {path.with_suffix('').name} instead of the file named. Remove or rename one of the two"
        )
    with (gzip.open if gz else open)(path, "rb") as stream:
        try:
            header = stream.read(348)
        except (EOFError, OSError, gzip.BadGzipFile) as exc:
            raise _damaged(path, f"unreadable gzip data: {exc}") from exc
    _check_nifti_header(path, header)
    needed = _nifti_data_end(header)
    if gz:
        from spinect.io.writing import check_gzip_stream

        try:
            available = check_gzip_stream(path)
        except ValueError as exc:
            raise _damaged(path, str(exc)) from exc
    else:
        available = path.stat().st_size
    if needed is not None and available < needed:
        raise _damaged(path, f"the header announces {needed} bytes of data, the file holds {available}")


_NIFTI1_MAGIC = (b"n+1\0", b"ni1\0")


def _check_nifti_header(path: Path, header: bytes) -> None:
    """Refuse header fields niftilib would silently replace or guess.

    A voxel size (pixdim) of 0 or NaN is read as 1 mm; a header without the NIfTI magic is read as
    ANALYZE 7.5, whose orientation is guessed; a header size other than NIfTI-1's 348 (or
    NIfTI-2's 540) bytes means the file is not NIfTI or is damaged, yet niftilib may still read it.
    """
    if len(header) < 348:
        raise _damaged(path, f"{len(header)} bytes, shorter than a NIfTI header (348 bytes)")
    sizes = {struct.unpack(endian + "i", header[:4])[0]: endian for endian in "<>"}
    if 540 in sizes:
        return  # NIfTI-2: SimpleITK refuses it itself
    if 348 not in sizes:
        raise InputError(
            f"cannot read {path}: its header size field is {struct.unpack('<i', header[:4])[0]}, not 348, so it is not a "
            "NIfTI-1 file or its header is damaged. Export the image again as NIfTI"
        )
    endian = sizes[348]
    if header[344:348] not in _NIFTI1_MAGIC:
        raise InputError(
            f"cannot read {path}: its header has no NIfTI magic ('n+1', found {header[344:348]!r}): it is an old "
            "ANALYZE 7.5 file or a damaged one, whose orientation the reader would guess. Convert it to NIfTI "
            "(3D Slicer, dcm2niix) or export it again"
        )
    dims = struct.unpack(endian + "8h", header[40:56])
    pixdim = struct.unpack(endian + "8f", header[76:108])
    spatial = [float(v) for v in pixdim[1 : 1 + min(max(dims[0], 0), 3)]]
    if any(not math.isfinite(v) or v == 0.0 for v in spatial):
        raise InputError(
            f"{path} has voxel size {tuple(spatial)} mm in its header (pixdim), which the NIfTI reader would silently "
            f"replace with 1 mm; spinect needs finite voxel sizes of {SPACING_LIMITS_MM[0]:g}-{SPACING_LIMITS_MM[1]:g} "
            "mm. The file's header is wrong: export the image again"
        )


def _damaged(path: Path, why: str) -> InputError:
    return InputError(
        f"cannot read {path}: the file is truncated or corrupted ({why}); reading it would give wrong voxels. "
        "Copy or export the file again"
    )


def _nifti_data_end(header: bytes) -> int | None:
    """Byte offset where a NIfTI-1 file's voxel data end (None: not a NIfTI-1 header)."""
    for endian in "<>":
        if len(header) < 348 or struct.unpack(endian + "i", header[:4])[0] != 348:
            continue
        dims = struct.unpack(endian + "8h", header[40:56])
        bitpix = struct.unpack(endian + "h", header[72:74])[0]
        if not 1 <= dims[0] <= 7 or bitpix <= 0:
            return None
        offset = int(struct.unpack(endian + "f", header[108:112])[0])
        count = int(np.prod([max(d, 1) for d in dims[1 : dims[0] + 1]]))
        return offset + count * bitpix // 8
    return None


def _read_image_file(path: Path) -> sitk.Image:
    if full_suffix(path) in (".nii", ".nii.gz"):
        check_nifti_integrity(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(
            f"cannot read {path} as an image ({_first_line(exc)}); the file is damaged, truncated or "
            f"not really a {full_suffix(path)} file: export it again"
        ) from exc
    if full_suffix(path) in (".nii", ".nii.gz"):
        _check_finite_nifti_file(path)
    return image


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32, float64


def _check_finite_nifti_file(path: Path) -> None:
    """niftilib turns NaN and inf into 0 while reading, so count them in the stored floats."""
    with (gzip.open if full_suffix(path) == ".nii.gz" else open)(path, "rb") as stream:
        layout = _nifti_float_layout(stream.read(348))
        if layout is None:
            return
        dtype, offset, remaining = layout
        stream.seek(offset)
        bad = 0
        while remaining > 0:  # in chunks: a float CT can be gigabytes
            chunk = stream.read(min(remaining, 1 << 22) * dtype.itemsize)
            values = np.frombuffer(chunk[: len(chunk) - len(chunk) % dtype.itemsize], dtype)
            if values.size == 0:
                break
            bad += int(values.size - np.count_nonzero(np.isfinite(values)))
            remaining -= values.size
    _raise_if_nonfinite(bad, str(path))


def _nifti_float_layout(header: bytes) -> tuple[np.dtype, int, int] | None:
    """(dtype, voxel data offset, voxel count) of a float NIfTI-1 file, else None.

    (The NIfTI reader in SimpleITK 2.5 handles NIfTI-1 only, so NIfTI-2 never gets here.)
    """
    for endian in "<>":
        if len(header) < 348 or struct.unpack(endian + "i", header[:4])[0] != 348:
            continue
        datatype = struct.unpack(endian + "h", header[70:72])[0]
        dims = struct.unpack(endian + "8h", header[40:56])
        if datatype not in _NIFTI_FLOAT_TYPES or not 1 <= dims[0] <= 7:
            return None
        offset = int(struct.unpack(endian + "f", header[108:112])[0])
        count = int(np.prod([max(d, 1) for d in dims[1 : dims[0] + 1]]))
        return np.dtype(endian + _NIFTI_FLOAT_TYPES[datatype]), offset, count
    return None


def _read_dicom_folder(folder: Path, *, containing: Path | None = None, allow_gaps: bool = False) -> sitk.Image:
    for entry in folder.iterdir():  # GDCM lists every name; SimpleITK aborts on non-UTF-8 ones
        check_name_encoding(entry, what="file", error=InputError)
    series = _find_dicom_series(folder)
    _refuse_undecodable_files(folder, series)
    if not series:
        raise InputError(
            f"no DICOM image series found in {folder}; give the folder that holds the CT's .dcm files "
            "(or a NIfTI/NRRD file)"
        )
    chosen = _choose_series(series, folder, containing)
    return _read_dicom_series(chosen, folder, allow_gaps=allow_gaps)


def dicom_series_files(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The files of the DICOM series :func:`read_ct` reads from ``path``, in slice order (index z).

    Returns:
        The file paths (slice k of the volume is file k), or None when ``path`` is not a DICOM
        series (a NIfTI/NRRD/MHA file or a non-DICOM file).

    Raises:
        InputError: as :func:`read_ct` for a DICOM folder it cannot read.
    """
    path = Path(path)
    if path.is_dir():
        folder, containing = path, None
    elif path.is_file() and full_suffix(path) not in CT_FILE_SUFFIXES and (
            full_suffix(path) == ".dcm" or _is_dicom_file(path)):
        folder, containing = path.parent, path
    else:
        return None
    with _locale_kept():
        series = _find_dicom_series(folder)
        if not series:
            return None
        return _choose_series(series, folder, containing, quiet=True).files


def _choose_series(series: list[_DicomSeries], folder: Path, containing: Path | None, *,
                   quiet: bool = False) -> _DicomSeries:
    if containing is not None:
        target = os.path.realpath(containing)
        matches = [s for s in series if target in {os.path.realpath(f) for f in s.files}]
        if not matches:
            raise InputError(f"{containing} is not part of a readable DICOM image series in {folder}")
        return matches[0]
    chosen = max(series, key=lambda s: len(s.files))  # first of the longest on ties
    if quiet:  # the same choice again (read_ct logged it already)
        return chosen
    skipped = [s for s in series if s is not chosen]
    logger.info("DICOM %s: reading series %s (%d slices)", folder, chosen.label, len(chosen.files))
    if skipped:
        logger.warning(
            "DICOM %s holds %d series; took the longest, %s (%d slices), skipped: %s",
            folder,
            len(series),
            chosen.label,
            len(chosen.files),
            "; ".join(f"{s.label} ({len(s.files)} slices)" for s in skipped),
        )
    return chosen


#: Byte offset and value of the DICOM magic after the 128-byte preamble (DICOM part 10 files).
_DICM_OFFSET, _DICM = 128, b"DICM"


def _refuse_undecodable_files(folder: Path, series: list[_DicomSeries]) -> None:
    """GDCM leaves a truncated or damaged slice out of its series without a word, so the volume would
    stack the rest as if nothing were missing. Refuse a folder holding such a file.

    A file counts when it is in no series, looks like DICOM (``DICM`` magic, or a ``.dcm`` name;
    ``DICOMDIR`` excepted) and GDCM cannot read its header.

    Raises:
        InputError: naming the unreadable files.
    """
    listed = {os.path.realpath(f) for s in series for f in s.files}
    bad = []
    for path in sorted(folder.iterdir()):
        if (not path.is_file() or path.name.startswith(".") or path.name.upper() == "DICOMDIR"
                or os.path.realpath(path) in listed):
            continue
        if (full_suffix(path) == ".dcm" or _has_dicom_magic(path)) and _dicom_tags(str(path)) is None:
            bad.append(path.name)
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise InputError(
            f"DICOM folder {folder}: {shown} cannot be read (truncated or damaged file); a slice left out would "
            "silently shift the rest of the volume. Copy or export the series again, or move the file(s) out of "
            "the folder if they are not part of the CT"
        )


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(_DICM_OFFSET)
            return handle.read(len(_DICM)) == _DICM
    except OSError:
        return False


def _find_dicom_series(folder: Path) -> list[_DicomSeries]:
    """Series in ``folder`` (not its subfolders), each with its files in slice order."""
    series: list[_DicomSeries] = []
    grouped: set[str] = set()  # real paths of the files GDCM put in a series
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    for uid in uids:
        if not uid.strip():
            continue  # files without a UID are grouped by their tags below
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        if files:
            series.append(_DicomSeries(f"SeriesInstanceUID {uid}", files))
            grouped.update(os.path.realpath(f) for f in files)
    if uids and all(uid.strip() for uid in uids):
        return series
    rest = [
        str(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and os.path.realpath(p) not in grouped
    ]
    return series + _group_by_tags(rest)


def _group_by_tags(files: list[str]) -> list[_DicomSeries]:
    """Group DICOM files without a usable SeriesInstanceUID into series by their own tags.

    Key: FrameOfReferenceUID, ImageOrientationPatient (to 1e-3), rows, columns, pixel spacing and
    slice thickness; within a group, slices are sorted along the slice normal.
    """
    groups: dict[tuple, list[tuple[float, str]]] = {}
    for file in files:
        tags = _dicom_tags(file)
        if tags is None:
            continue  # not DICOM (a README, a licence, a DICOMDIR without pixels...)
        orientation = _floats(tags.get(_TAG_ORIENTATION, ""), 6)
        key = (
            tags.get(_TAG_SERIES_UID, "").strip(),
            tags.get(_TAG_FRAME_OF_REFERENCE, "").strip(),
            tuple(np.round(orientation, 3)) if orientation is not None else None,
            tags.get(_TAG_ROWS, "").strip(),
            tags.get(_TAG_COLUMNS, "").strip(),
            tags.get(_TAG_PIXEL_SPACING, "").strip(),
            tags.get(_TAG_SLICE_THICKNESS, "").strip(),
        )
        groups.setdefault(key, []).append((_slice_position(tags, orientation), file))
    series = []
    for number, (key, members) in enumerate(groups.items(), start=1):
        members.sort()
        frame = key[1] or "none"
        label = f"#{number} without SeriesInstanceUID (FrameOfReferenceUID {frame}, {key[4]}x{key[3]} pixels)"
        series.append(_DicomSeries(label, tuple(file for _, file in members)))
    return series


def _slice_position(tags: dict[str, str], orientation: np.ndarray | None) -> float:
    """Position along the slice normal (mm), or the InstanceNumber when positions are missing."""
    position = _floats(tags.get(_TAG_POSITION, ""), 3)
    if orientation is not None and position is not None:
        normal = np.cross(orientation[:3], orientation[3:])
        return float(np.dot(position, normal))
    instance = _floats(tags.get(_TAG_INSTANCE, ""), 1)
    return float(instance[0]) if instance is not None else 0.0


def _dicom_tags(file: str) -> dict[str, str] | None:
    """The public tags of one DICOM file (pixels not decoded), or None if it is not DICOM."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO(_DICOM_IO)
    reader.SetFileName(file)
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}


def _read_dicom_series(series: _DicomSeries, folder: Path, *, allow_gaps: bool = False) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    reader.SetOutputPixelType(sitk.sitkFloat32)  # rescale slope/intercept applied in float
    reader.MetaDataDictionaryArrayUpdateOn()  # per-slice positions, to check the slice gaps
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        _refuse_mixed_sizes(series, folder)
        raise InputError(
            f"cannot read DICOM series {series.label} in {folder} ({_first_line(exc)}); the files may be "
            "damaged or use a compression GDCM cannot decode: convert the series to NIfTI in 3D Slicer "
            "and give that file"
        ) from exc
    logger.info("read %s: %s", folder, image_info(image))
    gaps = _check_slices(reader, image, folder, allow_gaps=allow_gaps)
    return image if gaps is None else _resample_evenly(image, gaps, folder)


def _refuse_mixed_sizes(series: _DicomSeries, folder: Path) -> None:
    """After a failed read: name the slices whose size differs from the first one's, if that is the cause."""
    sizes = []
    for file in series.files:
        tags = _dicom_tags(file) or {}
        sizes.append((tags.get(_TAG_COLUMNS, "?").strip(), tags.get(_TAG_ROWS, "?").strip()))
    odd = [Path(f).name for f, size in zip(series.files, sizes) if size != sizes[0]]
    if odd:
        raise InputError(
            f"DICOM series {series.label} in {folder} mixes image sizes: {', '.join(odd[:10])} "
            f"{'is' if len(odd) == 1 else 'are'} not {sizes[0][0]}x{sizes[0][1]} pixels like {Path(series.files[0]).name}; "
            "one volume cannot be stacked from them. Give a folder holding only the CT series"
        )


#: Slices closer than this (mm) along the normal are at one position (Slicer's DICOM import uses 0.01 mm too).
DUPLICATE_SLICE_MM = 0.01
#: A gap larger than this times the usual slice spacing means missing slices.
MISSING_SLICE_FACTOR = 1.5


def _check_slices(reader: sitk.ImageSeriesReader, image: sitk.Image, folder: Path, *,
                  allow_gaps: bool = False) -> _SliceGaps | None:
    """Refuse a stack whose grid would be wrong; warn when the slice spacing varies a little.

    Returns:
        None, or with ``allow_gaps`` the slice positions of a series with missing slices (to be
        resampled by :func:`_resample_evenly`).

    Raises:
        InputError: slices with different orientations, slices at one position (duplicates),
            slices out of order, or a gap of more than :data:`MISSING_SLICE_FACTOR` times the usual
            spacing (missing slices), naming the files.
    """
    names = [Path(f).name for f in reader.GetFileNames()]
    count = len(names)
    orientations = [_floats(reader.GetMetaData(i, _TAG_ORIENTATION), 6) if reader.HasMetaDataKey(i, _TAG_ORIENTATION)
                    else None for i in range(count)]
    if all(o is not None for o in orientations):
        odd = [names[i] for i in range(count) if np.max(np.abs(orientations[i] - orientations[0])) > 1e-3]
        if odd:
            raise InputError(
                f"DICOM {folder}: the series mixes slice orientations ({', '.join(odd[:10])} "
                f"{'is' if len(odd) == 1 else 'are'} not oriented like {names[0]}: a localizer or a reformatted "
                "slice?); stacking them would give a wrong volume. Give a folder holding only the axial CT series"
            )
    _check_pixel_spacing(reader, names, folder)
    positions = [_floats(reader.GetMetaData(i, _TAG_POSITION), 3) if reader.HasMetaDataKey(i, _TAG_POSITION)
                 else None for i in range(count)]
    if count < 2 or any(p is None for p in positions):
        return
    normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]
    along = np.array([float(np.dot(p, normal)) for p in positions])
    steps = np.diff(along)
    same = np.flatnonzero(np.abs(steps) < DUPLICATE_SLICE_MM)
    if same.size:
        pairs = "; ".join(f"{names[i]} and {names[i + 1]} at {tuple(round(float(v), 2) for v in positions[i])} mm"
                          for i in same[:5])
        raise InputError(
            f"DICOM {folder}: {same.size} pair(s) of slices lie at the same position ({pairs}): duplicated files or "
            "two series mixed in one folder. Remove the duplicates (or give a folder holding one series only)"
        )
    if np.any(np.sign(steps) != np.sign(steps[0])):
        raise InputError(
            f"DICOM {folder}: the slice positions do not run in one direction ({', '.join(names[:10])}...); the "
            "series cannot be stacked into one volume. Convert it in 3D Slicer and give that file"
        )
    gaps_mm = np.abs(steps)
    usual_mm = float(np.percentile(gaps_mm, 25))
    missing = np.flatnonzero(gaps_mm > MISSING_SLICE_FACTOR * usual_mm)
    if missing.size:
        where = "; ".join(f"{gaps_mm[i]:.3g} mm between {names[i]} and {names[i + 1]}" for i in missing[:5])
        if allow_gaps:
            return _SliceGaps(along=along, first_position=positions[0], usual_mm=usual_mm, where=where,
                              gaps=[(names[i], names[i + 1], float(gaps_mm[i])) for i in missing])
        raise InputError(
            f"DICOM {folder}: slices are missing (gap of {where}, where the slices are {usual_mm:.3g} mm apart); "
            "stacking the rest would put every later slice in the wrong place. Copy or export the complete "
            "series again, or add --allow-gaps to resample it onto an even grid (interpolating across the gap)"
        )
    deviation_mm = float(np.max(np.abs(gaps_mm - image.GetSpacing()[2])))
    if count >= 3 and deviation_mm > max(0.1 * image.GetSpacing()[2], 0.01):
        logger.warning(
            "DICOM %s: slice gaps vary from %.3g to %.3g mm (variable spacing); the volume uses their mean, "
            "%.3g mm, so positions along the slice axis are off by up to %.3g mm",
            folder, gaps_mm.min(), gaps_mm.max(), image.GetSpacing()[2], deviation_mm,
        )


#: Metadata key of a CT resampled across missing slices (:func:`gap_resampling`).
GAP_RESAMPLING_KEY = "spinect.gap_resampling"


@dataclass(frozen=True)
class _SliceGaps:
    """A DICOM series with missing slices: slice k lies at ``along[k]`` mm along the image's normal."""

    along: np.ndarray
    first_position: np.ndarray
    usual_mm: float
    where: str
    gaps: list[tuple[str, str, float]]


def gap_resampling(image: sitk.Image) -> dict | None:
    """What :func:`read_ct` with ``allow_gaps`` did to ``image`` (a JSON-ready dict), or None."""
    import json

    return json.loads(image.GetMetaData(GAP_RESAMPLING_KEY)) if image.HasMetaDataKey(GAP_RESAMPLING_KEY) else None


def _resample_evenly(image: sitk.Image, gaps: _SliceGaps, folder: Path) -> sitk.Image:
    """Put the slices of a series with missing slices on an even grid from its first to its last slice.

    Each new slice is interpolated linearly between the two acquired slices around it (inside a gap,
    between the slices on either side: anatomy there is guessed). The spacing is the usual one,
    adjusted so that the first and last acquired slices stay on the grid.
    """
    import json

    array = sitk.GetArrayViewFromImage(image)  # (z, y, x), slice k at gaps.along[k]
    sign = 1.0 if gaps.along[-1] > gaps.along[0] else -1.0
    relative = (gaps.along - gaps.along[0]) * sign  # increasing from 0
    count = int(round(relative[-1] / gaps.usual_mm)) + 1
    step = float(relative[-1] / (count - 1))
    targets = np.arange(count) * step
    upper = np.clip(np.searchsorted(relative, targets, side="right"), 1, len(relative) - 1)
    lower = upper - 1
    weight = np.clip((targets - relative[lower]) / (relative[upper] - relative[lower]), 0.0, 1.0).astype(np.float32)
    resampled = np.empty((count, *array.shape[1:]), np.float32)
    for k in range(count):  # slice by slice: no (count, y, x) temporaries
        resampled[k] = array[lower[k]] * (1.0 - weight[k]) + array[upper[k]] * weight[k]
    wide = (relative[upper] - relative[lower]) > MISSING_SLICE_FACTOR * gaps.usual_mm
    guessed = int(np.count_nonzero(wide & (weight > 1e-6) & (weight < 1 - 1e-6)))
    out = sitk.GetImageFromArray(resampled)
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3).copy()
    direction[:, 2] *= sign
    out.SetDirection(direction.ravel().tolist())
    out.SetOrigin(tuple(float(v) for v in gaps.first_position))
    out.SetSpacing((*image.GetSpacing()[:2], step))
    note = {
        "reason": "DICOM series with missing slices, read with --allow-gaps",
        "folder": str(folder),
        "gaps": [{"between": [a, b], "gap_mm": round(mm, 4)} for a, b, mm in gaps.gaps],
        "acquired_slices": int(len(gaps.along)),
        "resampled_slices": count,
        "slice_spacing_mm": round(step, 6),
        "interpolated_across_gaps": guessed,
        "method": "linear interpolation along the slice normal between the nearest acquired slices",
    }
    out.SetMetaData(GAP_RESAMPLING_KEY, json.dumps(note))
    logger.warning(
        "DICOM %s: slices are missing (gap of %s, where the slices are %.3g mm apart); --allow-gaps: resampled %d "
        "slices onto %d evenly spaced ones (%.4g mm), %d of them interpolated across the gap(s): the anatomy there is "
        "GUESSED, labels in the gap are unreliable. Recorded in the output's provenance",
        folder, gaps.where, gaps.usual_mm, len(gaps.along), count, step, guessed,
    )
    return out


def _check_pixel_spacing(reader: sitk.ImageSeriesReader, names: list[str], folder: Path) -> None:
    """Refuse a PixelSpacing (0028,0030) that is missing, 0, negative or not two numbers: GDCM reads such slices as 1 mm."""
    for i, name in enumerate(names):
        if not reader.HasMetaDataKey(i, _TAG_PIXEL_SPACING):
            if reader.HasMetaDataKey(i, _TAG_IMAGER_PIXEL_SPACING):
                continue  # GDCM falls back to Imager Pixel Spacing; check_geometry judges the result
            raise InputError(
                f"DICOM {folder}: {name} has no Pixel Spacing (0028,0030), which a CT image must have; the reader "
                "would silently assume 1 mm and the segmentation would have the wrong size. Export the series again "
                "from the scanner or PACS (or convert it with dcm2niix and check the voxel size)"
            )
        text = reader.GetMetaData(i, _TAG_PIXEL_SPACING)
        values = _floats(text, 2)
        if values is None or not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise InputError(
                f"DICOM {folder}: {name} has Pixel Spacing {text.strip()!r}, which is not two voxel sizes > 0 mm; the "
                "reader would silently use 1 mm and the segmentation would have the wrong size. Export the series "
                "again from the scanner or PACS"
            )


def _is_dicom_file(path: Path) -> bool:
    try:
        return sitk.ImageFileReader.GetImageIOFromFileName(str(path)) == _DICOM_IO
    except RuntimeError:
        return False


def _floats(text: str, count: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in text.strip().split("\\")], dtype=float)
    except ValueError:
        return None
    return values if values.size == count else None


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
