"""spinect.io: CT reading (files, DICOM series), CT validation, label maps and Slicer segmentations.

Real data (see /work/shared/data/README.md): ``dicom_ct_series_jpeg2000`` (TotalSegmentator
repository test files, Apache-2.0; JPEG 2000, empty UIDs), ``dicom_ct_3slice`` (dcmqi repository
test data, BSD-3-Clause style), ``lumbar_ct_crop`` (TPTBox repository test sample, Apache-2.0;
VerSe data, CC BY-SA 4.0). Everything else is synthetic with known geometry and values.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

import spinect.io.writing as writing_module
from spinect.errors import InputError, OutputError
from spinect.io import (
    image_info,
    read_ct,
    read_labelmap,
    validate_ct,
    write_image,
    write_labelmap,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # shared/ sits beside the clone
JPEG2000_SERIES = DATA / "dicom_ct_series_jpeg2000"
THREE_SLICE_SERIES = DATA / "dicom_ct_3slice"
LUMBAR_CROP = DATA / "lumbar_ct_crop" / "sub-ct_label-22_ct.nii.gz"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared real CT samples not available")


# --- helpers ------------------------------------------------------------------------------


def _rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    axis_v = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis_v[2], axis_v[1]], [axis_v[2], 0, -axis_v[0]], [-axis_v[1], axis_v[0], 0]])
    angle = np.deg2rad(degrees)
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _oblique(image: sitk.Image) -> sitk.Image:
    """Give ``image`` an anisotropic, oblique (20 deg about a tilted axis) grid."""
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((-31.4, 12.5, 203.25))
    image.SetDirection(tuple(_rotation((0.2, 1.0, 0.5), 20.0).ravel()))
    return image


def _synthetic_ct(shape_zyx: tuple[int, int, int] = (6, 20, 24)) -> sitk.Image:
    """Air (-1000 HU) around a soft-tissue block (40 HU) holding a bone block (700 HU)."""
    hu = np.full(shape_zyx, -1000.0, np.float32)
    hu[:, 3:-3, 3:-3] = 40.0
    hu[1:-1, 8:12, 9:14] = 700.0
    return _oblique(sitk.GetImageFromArray(hu))


def _synthetic_label(shape_zyx: tuple[int, int, int] = (6, 20, 24)) -> sitk.Image:
    label = np.zeros(shape_zyx, np.uint8)
    label[1:5, 4:12, 5:15] = 1
    label[2:4, 13:17, 8:11] = 2
    return _oblique(sitk.GetImageFromArray(label))


def _assert_same_geometry(a: sitk.Image, b: sitk.Image, *, tol: float = 1e-5) -> None:
    assert a.GetSize() == b.GetSize()
    assert a.GetSpacing() == pytest.approx(b.GetSpacing(), abs=tol)
    assert a.GetOrigin() == pytest.approx(b.GetOrigin(), abs=tol)
    assert a.GetDirection() == pytest.approx(b.GetDirection(), abs=tol)


def _dicom_tags(file: Path) -> dict[str, str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    reader.ReadImageInformation()
    return {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}


def _floats(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.strip().split("\\")])


def _first_slice_geometry(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(origin, 3x3 direction) from the files' own tags: the lowest slice along the normal."""
    tags = [_dicom_tags(f) for f in sorted(folder.iterdir()) if f.name != "LICENSE.txt" and f.suffix != ".nrrd"]
    orientation = _floats(tags[0]["0020|0037"])
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [_floats(t["0020|0032"]) for t in tags]
    origin = min(positions, key=lambda p: float(np.dot(p, normal)))
    return origin, np.column_stack([orientation[:3], orientation[3:], normal])


def _write_dicom_series(
    folder: Path,
    slices: int,
    *,
    series_uid: str,
    prefix: str,
    frame_uid: str = "1.2.826.0.1.3680043.2.1125.1",
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
) -> sitk.Image:
    """Write a small int16 CT series (HU stored as is) one file per slice; return its volume."""
    from spinect.io.reading import _locale_kept

    with _locale_kept():  # GDCM's DICOM writer leaves the process locale at "C"
        return _write_dicom_series_files(folder, slices, series_uid=series_uid, prefix=prefix,
                                         frame_uid=frame_uid, orientation=orientation)


def _write_dicom_series_files(folder, slices, *, series_uid, prefix, frame_uid, orientation) -> sitk.Image:
    hu = np.full((slices, 12, 14), -1000, np.int16)
    hu[:, 3:9, 4:10] = (40 + 25 * np.arange(slices)).astype(np.int16)[:, None, None]
    volume = sitk.GetImageFromArray(hu)
    volume.SetSpacing((0.6, 0.6, 1.5))
    volume.SetOrigin((-20.0, 31.0, -112.5))
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    volume.SetDirection(tuple(np.column_stack([row, col, np.cross(row, col)]).ravel()))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index in range(slices):
        image = volume[:, :, index]
        position = volume.TransformIndexToPhysicalPoint((0, 0, index))
        tags = {
            "0008|0060": "CT",
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.{ord(prefix)}.{index + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.9",
            "0020|000e": series_uid,
            "0020|0052": frame_uid,
            "0020|0013": str(index + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in position),
            "0020|0037": "\\".join(f"{v:g}" for v in orientation),
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{prefix}{index:03d}.dcm"))
        writer.Execute(image)
    return volume


# --- real DICOM ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jpeg2000_ct() -> sitk.Image:
    return read_ct(JPEG2000_SERIES)


@needs_data
def test_jpeg2000_series_with_empty_uids_reads_with_its_geometry(jpeg2000_ct):
    image = jpeg2000_ct
    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetSize() == (512, 512, 20)
    pixel_spacing = _floats(_dicom_tags(next(JPEG2000_SERIES.glob("CT.*")))["0028|0030"])
    assert image.GetSpacing() == pytest.approx((pixel_spacing[1], pixel_spacing[0], 2.0), abs=1e-4)
    assert image.GetSpacing()[0] == pytest.approx(0.977, abs=1e-3)
    origin, direction = _first_slice_geometry(JPEG2000_SERIES)
    assert image.GetOrigin() == pytest.approx(tuple(origin), abs=1e-3)
    assert image.GetDirection() == pytest.approx(tuple(direction.ravel()), abs=1e-6)
    hu = sitk.GetArrayViewFromImage(image)
    # Air outside the body is about -1000 HU (rescale intercept applied), bone reaches > 300 HU.
    air = hu[(hu > -1100) & (hu < -900)]
    assert air.size > 0.1 * hu.size and abs(float(np.median(air)) + 1000) < 30
    assert hu.max() > 300


@needs_data
def test_a_file_of_the_series_reads_the_whole_series(jpeg2000_ct):
    one_file = sorted(JPEG2000_SERIES.glob("CT.*"))[7]
    image = read_ct(one_file)
    _assert_same_geometry(image, jpeg2000_ct)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(jpeg2000_ct))


@needs_data
def test_three_slice_series_reads():
    image = read_ct(THREE_SLICE_SERIES)
    assert image.GetSize() == (512, 512, 3)
    assert image.GetSpacing() == pytest.approx((0.8105, 0.8105, 1.0), abs=1e-4)
    origin, direction = _first_slice_geometry(THREE_SLICE_SERIES)
    assert image.GetOrigin() == pytest.approx(tuple(origin), abs=1e-3)
    assert image.GetDirection() == pytest.approx(tuple(direction.ravel()), abs=1e-6)
    # Stored -2000 outside the field of view + intercept -1024; air inside is about -1000.
    hu = sitk.GetArrayViewFromImage(image)
    tags = _dicom_tags(THREE_SLICE_SERIES / "01.dcm")
    assert hu.min() == pytest.approx(float(tags["0028|0120"]) + float(tags["0028|1052"]))
    assert np.count_nonzero((hu > -1100) & (hu < -900)) > 0.05 * hu.size


@needs_data
def test_real_lumbar_crop_validates_and_keeps_pir_orientation():
    raw = sitk.ReadImage(str(LUMBAR_CROP))
    image = read_ct(LUMBAR_CROP)
    _assert_same_geometry(image, raw, tol=1e-9)
    assert image_info(image)["orientation"] == "PIR"
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(raw).astype(np.float32))


# --- synthetic DICOM folders ----------------------------------------------------------------


def test_folder_with_two_series_takes_the_longest_and_logs_it(tmp_path, caplog):
    long = _write_dicom_series(tmp_path, 5, series_uid="1.2.826.0.1.3680043.2.1125.21", prefix="a")
    _write_dicom_series(tmp_path, 3, series_uid="1.2.826.0.1.3680043.2.1125.22", prefix="b")
    with caplog.at_level(logging.INFO, logger="spinect"):
        image = read_ct(tmp_path)
    _assert_same_geometry(image, long)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(long))
    log = caplog.text
    assert "1.2.826.0.1.3680043.2.1125.21 (5 slices)" in log
    assert "skipped" in log and "1.2.826.0.1.3680043.2.1125.22 (3 slices)" in log


def test_series_without_uids_are_told_apart_by_their_tags(tmp_path, caplog):
    axial = _write_dicom_series(tmp_path, 4, series_uid="", prefix="a", frame_uid="1.2.3.1")
    coronal = _write_dicom_series(
        tmp_path, 6, series_uid="", prefix="c", frame_uid="1.2.3.2", orientation=(1, 0, 0, 0, 0, -1)
    )
    with caplog.at_level(logging.INFO, logger="spinect"):
        image = read_ct(tmp_path)
    _assert_same_geometry(image, coronal)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(coronal))
    assert "skipped" in caplog.text
    # A file of the shorter series reads that series.
    image = read_ct(tmp_path / "a002.dcm")
    _assert_same_geometry(image, axial)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(axial))


def test_missing_slice_is_refused(tmp_path):
    _write_dicom_series(tmp_path, 6, series_uid="1.2.826.0.1.3680043.2.1125.31", prefix="a")
    (tmp_path / "a002.dcm").unlink()
    with pytest.raises(InputError, match=r"slices are missing \(gap of 3 mm between a001.dcm and a003.dcm"):
        read_ct(tmp_path)


# --- file formats -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_ct_round_trip_keeps_oblique_geometry_and_values(tmp_path, suffix):
    ct = _synthetic_ct()
    path = write_image(ct, tmp_path / f"ct{suffix}")
    back = read_ct(path)
    _assert_same_geometry(back, ct)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(ct))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd"])
def test_labelmap_round_trip(tmp_path, suffix):
    label = _synthetic_label()
    path = write_labelmap(label, tmp_path / f"label{suffix}")
    assert path == tmp_path / f"label{suffix}"
    back = read_labelmap(path)
    assert back.GetPixelID() == sitk.sitkUInt8
    _assert_same_geometry(back, label)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(label))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_seg_nrrd_has_slicer_segments_terminology_and_geometry(tmp_path):
    label = _synthetic_label()
    path = write_labelmap(label, tmp_path / "out.seg.nrrd")
    segmentation = slicerio.read_segmentation(str(path))
    by_name = {s["name"]: s for s in segmentation["segments"]}
    assert set(by_name) == {"bone", "nerve"}
    ids_and_values = {name: (s["id"], s["labelValue"]) for name, s in by_name.items()}
    assert ids_and_values == {"bone": ("bone", 1), "nerve": ("nerve", 2)}
    # Slicer's General Anatomy list: Tissue / Bone, Tissue / Nerve, with its recommended colours.
    assert by_name["bone"]["terminology"]["type"] == ["SCT", "272673000", "Bone"]
    assert by_name["nerve"]["terminology"]["type"] == ["SCT", "119410002", "Nerve"]
    assert by_name["bone"]["terminology"]["category"] == ["SCT", "85756007", "Tissue"]
    assert by_name["bone"]["color"] == pytest.approx([241 / 255, 214 / 255, 145 / 255], abs=1e-5)
    assert by_name["nerve"]["color"] == pytest.approx([244 / 255, 214 / 255, 49 / 255], abs=1e-5)
    header = path.read_bytes()[:4000].decode("latin-1")
    assert (
        "TerminologyEntry:Segmentation category and type - 3D Slicer General Anatomy list"
        "~SCT^85756007^Tissue~SCT^272673000^Bone~^^~Anatomic codes - DICOM master list~^^~^^|"
    ) in header
    # Voxel (i, j, k) lies at ijkToLPS @ (i, j, k, 1) in the file and in the label map.
    matrix = np.asarray(segmentation["ijkToLPS"])
    for ijk in [(0, 0, 0), (23, 0, 0), (3, 17, 4), (23, 19, 5)]:
        assert tuple(matrix @ (*ijk, 1))[:3] == pytest.approx(label.TransformIndexToPhysicalPoint(ijk), abs=1e-5)
    bone_ijk = slicerio.segment_mask(segmentation, "bone")
    assert np.array_equal(bone_ijk.transpose(2, 1, 0), sitk.GetArrayViewFromImage(label) == 1)


def test_seg_nrrd_segments_are_matched_by_name_not_label_value(tmp_path, caplog):
    truth = _synthetic_label()
    truth_zyx = sitk.GetArrayFromImage(truth)
    voxels_ijk = np.zeros(truth_zyx.shape[::-1], np.uint8)
    voxels_ijk[(truth_zyx == 2).transpose(2, 1, 0)] = 1  # nerve stored as 1
    voxels_ijk[(truth_zyx == 1).transpose(2, 1, 0)] = 5  # bone stored as 5
    liver_ijk = np.zeros_like(voxels_ijk, dtype=bool)
    liver_ijk[0:3, 0:2, 0] = True
    voxels_ijk[liver_ijk] = 3
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(truth.GetDirection()).reshape(3, 3) * np.asarray(truth.GetSpacing())
    matrix[:3, 3] = truth.GetOrigin()
    segmentation = {
        "voxels": voxels_ijk,
        "ijkToLPS": matrix,
        "segments": [
            {"id": "Segment_1", "name": "Nerve", "labelValue": 1, "layer": 0},
            {"id": "Segment_2", "name": "liver", "labelValue": 3, "layer": 0},
            {"id": "Segment_3", "name": "BONE", "labelValue": 5, "layer": 0},
        ],
    }
    path = tmp_path / "manual.seg.nrrd"
    slicerio.write_segmentation(str(path), segmentation)
    with caplog.at_level(logging.INFO, logger="spinect"):
        label = read_labelmap(path)
    _assert_same_geometry(label, truth)
    assert np.array_equal(sitk.GetArrayViewFromImage(label), truth_zyx)
    assert "liver" in caplog.text


def _segmentation_on(grid: sitk.Image) -> dict:
    matrix = np.diag([*grid.GetSpacing(), 1.0])
    matrix[:3, 3] = grid.GetOrigin()
    return slicerio.create_segmentation(grid.GetSize(), matrix)


def test_overlapping_segments_in_layers(tmp_path, caplog):
    grid = _synthetic_label()
    shape_ijk = grid.GetSize()
    segmentation = _segmentation_on(grid)
    bone_ijk = (sitk.GetArrayFromImage(grid) == 1).transpose(2, 1, 0)
    part_ijk = np.zeros(shape_ijk, bool)
    part_ijk[6:9, 5:8, 2:4] = True  # inside the bone: overlaps, so slicerio stores it in a new layer
    nerve_ijk = np.zeros(shape_ijk, bool)
    nerve_ijk[12:18, 9:11, 1:3] = True  # half inside the bone (i < 15), half outside
    slicerio.add_segment(segmentation, part_ijk, {"id": "s1", "name": "bone"})
    slicerio.add_segment(segmentation, bone_ijk, {"id": "s2", "name": "bone"})
    slicerio.add_segment(segmentation, nerve_ijk, {"id": "s3", "name": "nerve"})
    assert segmentation["voxels"].ndim == 4
    path = tmp_path / "layers.seg.nrrd"
    slicerio.write_segmentation(str(path), segmentation)
    with caplog.at_level(logging.WARNING, logger="spinect"):
        label = read_labelmap(path)
    expected_ijk = (bone_ijk | part_ijk).astype(np.uint8)
    expected_ijk[nerve_ijk] = 2  # nerve wins where it overlaps bone
    assert np.array_equal(sitk.GetArrayViewFromImage(label), expected_ijk.transpose(2, 1, 0))
    overlap = int(np.count_nonzero(nerve_ijk & (bone_ijk | part_ijk)))
    assert overlap > 0 and f"{overlap} voxels of 'nerve' overlap" in caplog.text


def test_missing_segment_is_empty_with_a_warning(tmp_path, caplog):
    grid = _synthetic_label()
    segmentation = _segmentation_on(grid)
    bone_ijk = (sitk.GetArrayFromImage(grid) == 1).transpose(2, 1, 0)
    slicerio.add_segment(segmentation, bone_ijk, {"id": "b", "name": "Bone"})
    path = tmp_path / "bone_only.seg.nrrd"
    slicerio.write_segmentation(str(path), segmentation)
    with caplog.at_level(logging.WARNING, logger="spinect"):
        label = read_labelmap(path)
    assert np.array_equal(sitk.GetArrayViewFromImage(label), bone_ijk.transpose(2, 1, 0).astype(np.uint8))
    assert "no segment named 'nerve'" in caplog.text


def test_plain_nrrd_holding_slicer_segments_is_read_by_name(tmp_path):
    label = _synthetic_label()
    seg_path = write_labelmap(label, tmp_path / "a.seg.nrrd")
    plain = seg_path.rename(tmp_path / "a.nrrd")
    back = read_labelmap(plain, class_names=("background", "nerve", "bone"))
    swapped = sitk.GetArrayFromImage(label)
    swapped = np.choose(swapped, [0, 2, 1]).astype(np.uint8)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), swapped)


def test_labelmap_resampled_onto_reference_grid(tmp_path):
    label = sitk.Image([10, 10, 10], sitk.sitkUInt8)
    label.SetSpacing((2.0, 2.0, 2.0))
    label[4, 5, 6] = 2
    path = write_labelmap(label, tmp_path / "coarse.nii.gz")
    reference = sitk.Image([20, 20, 20], sitk.sitkFloat32)
    reference.SetSpacing((1.0, 1.0, 1.0))
    back = read_labelmap(path, reference=reference)
    _assert_same_geometry(back, reference)
    hot = np.argwhere(sitk.GetArrayViewFromImage(back) == 2)  # (z, y, x)
    centre_mm = hot.mean(axis=0)[::-1] * 1.0
    assert centre_mm == pytest.approx((8.0, 10.0, 12.0), abs=0.6)


def test_labelmap_with_values_outside_the_classes_is_refused(tmp_path):
    label = _synthetic_label()
    bad = sitk.Cast(label, sitk.sitkUInt8) * 3
    path = tmp_path / "bad.nii.gz"
    sitk.WriteImage(bad, str(path))
    with pytest.raises(InputError, match=r"label values 3, 6 outside the classes"):
        read_labelmap(path)
    with pytest.raises(InputError, match="outside the classes"):
        write_labelmap(bad, tmp_path / "out.nii.gz")
    assert not (tmp_path / "out.nii.gz").exists()


# --- bad CT input ---------------------------------------------------------------------------


def test_missing_input_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_ct(tmp_path / "nope.nii.gz")
    with pytest.raises(InputError, match="does not exist"):
        read_ct(tmp_path / "no_folder")
    with pytest.raises(InputError, match="does not exist"):
        read_labelmap(tmp_path / "nope.seg.nrrd")


def test_garbage_file_and_unknown_format(tmp_path):
    garbage = tmp_path / "scan.nii.gz"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputError, match="cannot read .*scan.nii.gz"):
        read_ct(garbage)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(InputError, match="not an image format"):
        read_ct(text)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(InputError, match="no DICOM image series"):
        read_ct(tmp_path)


def test_2d_images_are_refused_but_three_slices_are_fine(tmp_path):
    ct = _synthetic_ct((3, 20, 24))
    validate_ct(ct)
    flat = sitk.GetImageFromArray(sitk.GetArrayFromImage(ct)[1])
    with pytest.raises(InputError, match="is 2D"):
        validate_ct(flat)
    with pytest.raises(InputError, match="is 2D"):
        validate_ct(ct[:, :, 1:2])  # 3D with one slice
    path = write_image(flat, tmp_path / "slice.nrrd")
    with pytest.raises(InputError, match="is 2D"):
        read_ct(path)


def test_4d_and_vector_images_are_refused(tmp_path):
    ct = _synthetic_ct()
    series = sitk.JoinSeries([ct, ct])  # two time points
    assert series.GetDimension() == 4
    sitk.WriteImage(series, str(tmp_path / "series.nii.gz"))
    with pytest.raises(InputError, match="4D"):
        read_ct(tmp_path / "series.nii.gz")
    hu = sitk.GetArrayFromImage(ct)
    rgb = sitk.GetImageFromArray(np.stack([hu] * 3, axis=-1), isVector=True)
    with pytest.raises(InputError, match="3 values per voxel"):
        validate_ct(rgb)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_voxels_are_refused(tmp_path, suffix, dtype):
    hu = sitk.GetArrayFromImage(_synthetic_ct()).astype(dtype)
    hu[2, 5, 5] = np.nan
    hu[3, 5, 5] = -np.inf
    hu[4, 6, 7] = np.inf
    path = write_image(sitk.GetImageFromArray(hu), tmp_path / f"nan{suffix}")
    # (NIfTI's reader turns non-finite values into 0, so read_ct checks the stored floats.)
    with pytest.raises(InputError, match="3 NaN or infinite voxels"):
        read_ct(path)


def test_mr_like_image_is_refused(tmp_path):
    mr = np.random.default_rng(1).uniform(0.0, 1500.0, size=(8, 20, 20)).astype(np.float32)
    path = write_image(sitk.GetImageFromArray(mr), tmp_path / "t1.nii.gz")
    with pytest.raises(InputError, match="does not look like a CT"):
        read_ct(path)
    # The same CT stored without its rescale intercept (HU + 1024, all >= 0) is refused too.
    raw = sitk.GetArrayFromImage(_synthetic_ct()) + 1024
    with pytest.raises(InputError, match="rescale intercept"):
        validate_ct(sitk.GetImageFromArray(raw))


def test_tight_crop_without_air_is_accepted_by_its_fat():
    hu = np.full((6, 20, 20), 40.0, np.float32)  # muscle
    hu[:, :4, :] = -100.0  # fat: 20 % of voxels
    hu[2:4, 8:12, 8:12] = 900.0  # bone
    validate_ct(sitk.GetImageFromArray(hu))
    hu[:, :4, :] = 20.0  # no fat, no air: not CT-like any more
    with pytest.raises(InputError, match="does not look like a CT"):
        validate_ct(sitk.GetImageFromArray(hu))


# --- bad output -----------------------------------------------------------------------------


def test_missing_output_folder(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        write_labelmap(_synthetic_label(), tmp_path / "missing" / "out.seg.nrrd")


def test_unknown_output_suffix_lists_the_accepted_ones(tmp_path):
    with pytest.raises(OutputError, match=r"unknown suffix '\.png'.*\.seg\.nrrd.*\.nii\.gz"):
        write_labelmap(_synthetic_label(), tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder(tmp_path, monkeypatch):
    import spinect.io.atomic as atomic

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)  # root ignores chmod, so simulate
    with pytest.raises(OutputError, match="Permission denied"):
        write_labelmap(_synthetic_label(), tmp_path / "out.nii.gz")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("suffix", "writer"), [(".nii.gz", "sitk.WriteImage"), (".seg.nrrd", "slicerio.write_segmentation")]
)
def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch, suffix, writer):
    def half_write(*args, **kwargs):
        Path(args[0] if isinstance(args[0], str) else args[1]).write_bytes(b"partial")
        raise RuntimeError("simulated failure after writing part of the file")

    import slicerio

    module_name, function = writer.split(".")
    module = slicerio if module_name == "slicerio" else getattr(writing_module, module_name)
    monkeypatch.setattr(module, function, half_write)
    target = tmp_path / f"out{suffix}"
    with pytest.raises(OutputError, match="simulated failure"):
        write_labelmap(_synthetic_label(), target)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_kept_without_overwrite(tmp_path):
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists"):
        write_labelmap(_synthetic_label(), target, overwrite=False)
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]
    write_labelmap(_synthetic_label(), target)  # overwrite=True (default) replaces it
    written = sitk.GetArrayFromImage(read_labelmap(target))
    assert np.array_equal(written, sitk.GetArrayFromImage(_synthetic_label()))


def test_writers_accept_str_paths(tmp_path):
    path = write_labelmap(_synthetic_label(), os.fspath(tmp_path / "s.seg.nrrd"))
    assert isinstance(path, Path) and path.is_file()
