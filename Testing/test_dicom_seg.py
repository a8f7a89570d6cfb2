"""DICOM SEG output: re-read with highdicom and pydicom, frame for frame against the source slices.

Sources: a phantom CT written as an oblique DICOM series with pydicom (full UIDs: the SEG must
reference the series and every slice), and the real 20-slice JPEG 2000 series in ``../shared/data``
whose Study/Series/SOP Instance UIDs are empty (the SEG cannot reference it; it must keep the grid
and the frame of reference). Each frame of the SEG is matched to its source slice by
ImagePositionPatient read with pydicom, independently of spinect, and compared voxel for voxel.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

from conftest import SHARED_DATA  # noqa: E402

from spinect.api import segment  # noqa: E402
from spinect.errors import InputError  # noqa: E402
from spinect.io import read_ct  # noqa: E402
from spinect.io.dicom_seg import write_dicom_seg  # noqa: E402
from spinect.io.labels import SEGMENT_STYLES  # noqa: E402
from spinect.io.provenance import provenance_path  # noqa: E402
from spinect.io.reading import dicom_series_files  # noqa: E402
from spinect.plan import LEVEL_MAP_NAMES  # noqa: E402

JPEG2000_SERIES = SHARED_DATA / "dicom_ct_series_jpeg2000"
needs_data = pytest.mark.skipif(not JPEG2000_SERIES.is_dir(), reason="shared/data sample CT not present")

STUDY_UID = "1.2.826.0.1.3680043.8.498.100"
SERIES_UID = "1.2.826.0.1.3680043.8.498.101"
FRAME_UID = "1.2.826.0.1.3680043.8.498.102"
ANGLE = np.deg2rad(20.0)  # in-plane rotation of the rows/columns: an oblique series
ROW = (float(np.cos(ANGLE)), float(np.sin(ANGLE)), 0.0)
COLUMN = (float(-np.sin(ANGLE)), float(np.cos(ANGLE)), 0.0)
SPACING_ROW_COL_MM = (0.9, 0.8)  # PixelSpacing: between rows, between columns
SLICE_MM = 2.0
ORIGIN = np.array([-31.0, 12.5, -140.0])


# --- a phantom written as DICOM with pydicom ---------------------------------------------------


@pytest.fixture(scope="module")
def phantom_dicom(tmp_path_factory):
    """(folder, truth labels (z, y, x), SOP Instance UIDs by slice index) of a phantom written as DICOM.

    Files are named in reverse slice order so that file order and slice order differ.
    """
    from spinect.phantom import make_phantom

    root = tmp_path_factory.mktemp("phantom_dicom")
    written = make_phantom(root / "case", n=1, seed=3, shape_zyx=(24, 72, 64), spacing_zyx_mm=(2.0, 0.9, 0.8))
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(next(p for p in written if p.name.endswith("_ct.nii.gz")))))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(next(p for p in written if p.name.endswith("_labels.nii.gz")))))
    folder = root / "dicom"
    folder.mkdir()
    uids = [_write_slice(folder, k, ct[k], len(ct)) for k in range(ct.shape[0])]
    return folder, truth.astype(np.uint8), uids


def _slice_position(k: int) -> np.ndarray:
    normal = np.cross(ROW, COLUMN)
    return ORIGIN + k * SLICE_MM * normal


def _write_slice(folder: Path, k: int, hu: np.ndarray, count: int) -> str:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    sop_uid = generate_uid(prefix="1.2.826.0.1.3680043.8.498.")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, sop_uid, "CT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = STUDY_UID, SERIES_UID, FRAME_UID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Lumbar", "PH0001", "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20261205", "120000", "1", "A1"
    ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 7, k + 1
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*ROW, *COLUMN)]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in _slice_position(k)]
    ds.PixelSpacing = [str(v) for v in SPACING_ROW_COL_MM]
    ds.SliceThickness = str(SLICE_MM)
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.PixelData = (np.round(hu) + 1024).astype(np.int16).tobytes()
    ds.save_as(folder / f"IM{count - k:04d}.dcm", enforce_file_format=True)
    return sop_uid


# --- reading a SEG back independently --------------------------------------------------------


def _source_positions(files) -> list[np.ndarray]:
    return [np.array([float(v) for v in pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient]) for f in files]


def _seg_masks_by_position(seg_path: Path, positions: list[np.ndarray], shape_zyx) -> dict[str, np.ndarray]:
    """Segment label -> boolean (z, y, x) mask, rebuilt from the SEG's frames with pydicom alone.

    Each frame goes to the source slice at its PlanePositionSequence position (to 0.01 mm).
    """
    ds = pydicom.dcmread(seg_path)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    masks = {name: np.zeros(shape_zyx, bool) for name in names.values()}
    for index, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        where = np.array([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient])
        k = int(np.argmin([np.abs(where - p).max() for p in positions]))
        assert np.abs(where - positions[k]).max() < 0.01, f"frame {index} lies at {where}, on no source slice"
        masks[names[number]][k] = frames[index].astype(bool)
    return masks


def _assert_labels_equal(masks: dict[str, np.ndarray], labels: np.ndarray, names) -> None:
    for value, name in enumerate(names):
        if value == 0:
            continue
        expected = labels == value
        assert np.array_equal(masks[name], expected), (
            f"{name}: {int((masks[name] != expected).sum())} voxels differ of {int(expected.sum())}")


def _coded(item) -> tuple[str, str, str]:
    return (str(item.CodingSchemeDesignator), str(item.CodeValue), str(item.CodeMeaning))


# --- tests ---------------------------------------------------------------------------------------


def test_phantom_truth_round_trips_frame_for_frame_with_source_references(phantom_dicom, tmp_path):
    folder, truth, uids = phantom_dicom
    files = dicom_series_files(folder)
    ct = read_ct(folder)
    label = sitk.GetImageFromArray(truth)
    label.CopyInformation(ct)
    out = tmp_path / "truth.dcm"
    result = write_dicom_seg(label, out, source_files=files, label_names=("background", "bone", "nerve"),
                             provenance=_provenance(), overwrite=True)
    assert result.referenced and result.segment_names == ("bone", "nerve")
    masks = _seg_masks_by_position(out, _source_positions(files), truth.shape)
    _assert_labels_equal(masks, truth, ("background", "bone", "nerve"))
    assert truth.max() == 2 and (truth == 1).sum() > 1000  # the phantom really has bone and nerve

    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.Modality == "SEG"
    assert ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == STUDY_UID and ds.FrameOfReferenceUID == FRAME_UID
    assert ds.PatientID == "PH0001" and str(ds.PatientName) == "Phantom^Lumbar"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    assert {r.ReferencedSOPInstanceUID for r in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(uids)
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == pytest.approx(SPACING_ROW_COL_MM)
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == pytest.approx(
        [*ROW, *COLUMN], abs=1e-6)
    # every frame names the very slice it lies on
    positions = _source_positions(files)
    by_uid = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: k for k, f in enumerate(files)}
    for group in ds.PerFrameFunctionalGroupsSequence:
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        where = np.array([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient])
        assert np.abs(where - positions[by_uid[source]]).max() < 0.01

    # highdicom's own reader, by source instance, gives the same masks
    seg = hd.seg.segread(out)
    ordered_uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=ordered_uids, segment_numbers=[1, 2])
    assert np.array_equal(pixels[..., 0].astype(bool), truth == 1)
    assert np.array_equal(pixels[..., 1].astype(bool), truth == 2)


def test_segment_codes_match_the_slicer_segments_and_name_the_model(phantom_dicom, tmp_path, tiny_model):
    folder, _, _ = phantom_dicom
    out = tmp_path / "seg.dcm"
    result = segment(folder, out, model=tiny_model, device="cpu")
    assert result.output_path == out
    ds = pydicom.dcmread(out)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SpineCTSegmentation"))
    from SpineCTSegmentationLib.terminology import BONE, NERVE

    by_label = {str(s.SegmentLabel): s for s in ds.SegmentSequence}
    for spec in (BONE, NERVE):
        item = by_label[spec.segment_id]
        assert _coded(item.SegmentedPropertyCategoryCodeSequence[0]) == spec.category
        assert _coded(item.SegmentedPropertyTypeCodeSequence[0]) == spec.type
        assert tuple(SEGMENT_STYLES[spec.segment_id].terminology["type"]) == spec.type
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "spinect tiny"
        digest = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
        assert digest[:16] in algorithm.AlgorithmVersion
        assert f"model_sha256={digest}" in str(algorithm.AlgorithmParameters)
        rgb = hd.color.CIELabColor.from_dicom_value(tuple(item.RecommendedDisplayCIELabValue)).to_rgb()
        assert np.allclose(rgb, [255 * c for c in spec.color_rgb], atol=2)
    # the SEG holds exactly the returned labels, frame for frame
    files = dicom_series_files(folder)
    labels = sitk.GetArrayFromImage(result.labels)
    assert (labels > 0).any()
    masks = _seg_masks_by_position(out, _source_positions(files), labels.shape)
    _assert_labels_equal(masks, labels, ("background", "bone", "nerve"))
    record = json.loads(provenance_path(out).read_text())
    assert record["role"] == "dicom-seg" and record["dicom_seg"]["source_references"] == "series and every slice"


@needs_data
def test_real_series_with_empty_uids_is_written_unreferenced_on_its_own_grid(tmp_path, tiny_model):
    out = tmp_path / "real.dcm"
    nrrd = tmp_path / "real.seg.nrrd"
    result = segment(JPEG2000_SERIES, nrrd, model=tiny_model, device="cpu", dicom_seg_output=out)
    assert nrrd.is_file() and out.is_file()
    files = dicom_series_files(JPEG2000_SERIES)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert source.SeriesInstanceUID == "" and source.SOPInstanceUID == ""  # the premise of this test
    labels = sitk.GetArrayFromImage(result.labels)
    assert labels.shape == (20, 512, 512)
    masks = _seg_masks_by_position(out, _source_positions(files), labels.shape)
    _assert_labels_equal(masks, labels, ("background", "bone", "nerve"))
    assert (labels > 0).any()

    ds = pydicom.dcmread(out)
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID  # can still be overlaid on the CT
    assert ds.StudyInstanceUID and ds.SeriesInstanceUID and ds.SOPInstanceUID
    assert "ReferencedSeriesSequence" not in ds
    assert all("DerivationImageSequence" not in g for g in ds.PerFrameFunctionalGroupsSequence)
    assert "not referenced" in ds.SeriesDescription
    record = json.loads(provenance_path(out).read_text())
    assert record["dicom_seg"]["source_references"] == "none"
    assert "empty" in record["dicom_seg"]["reason_unreferenced"]
    # highdicom reads it back as a volume on the CT's geometry
    volume = hd.seg.segread(out).get_volume(combine_segments=True)
    assert volume.spatial_shape == (20, 512, 512)


def test_level_segments_and_unstyled_classes_are_written_generically(phantom_dicom, tmp_path):
    folder, truth, _ = phantom_dicom
    files = dicom_series_files(folder)
    ct = read_ct(folder)
    label = sitk.GetImageFromArray(truth)
    label.CopyInformation(ct)
    levels_zyx = np.zeros_like(truth)
    bone = truth == 1
    levels_zyx[:8][bone[:8]], levels_zyx[8:16][bone[8:16]], levels_zyx[16:][bone[16:]] = 4, 5, 6  # L4, L5, sacrum
    levels = sitk.GetImageFromArray(levels_zyx)
    levels.CopyInformation(ct)
    out = tmp_path / "levels.dcm"
    names = ("background", "bone", "nerve", "implant")  # "implant" has no style: written all the same
    result = write_dicom_seg(label, out, source_files=files, label_names=names, provenance=_provenance(),
                             levels=levels, level_names=LEVEL_MAP_NAMES)
    assert result.segment_names == ("bone", "nerve", "implant", *LEVEL_MAP_NAMES[1:])
    masks = _seg_masks_by_position(out, _source_positions(files), truth.shape)
    _assert_labels_equal(masks, truth, names)
    for value, name in enumerate(LEVEL_MAP_NAMES):
        if value:
            assert np.array_equal(masks[name], levels_zyx == value)
    ds = pydicom.dcmread(out)
    by_label = {str(s.SegmentLabel): s for s in ds.SegmentSequence}
    assert _coded(by_label["L5"].SegmentedPropertyTypeCodeSequence[0]) == tuple(SEGMENT_STYLES["L5"].terminology["type"])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SpineCTSegmentation"))
    from SpineCTSegmentationLib import terminology

    for spec in getattr(terminology, "LEVEL_SEGMENTS", ()):  # the Slicer module's level segments, where it has them
        assert _coded(by_label[spec.segment_id].SegmentedPropertyCategoryCodeSequence[0]) == spec.category
        assert _coded(by_label[spec.segment_id].SegmentedPropertyTypeCodeSequence[0]) == spec.type
    assert _coded(by_label["implant"].SegmentedPropertyTypeCodeSequence[0])[1] == "123037004"


def test_non_dicom_input_asking_for_dicom_seg_is_refused_before_any_work(tmp_path, tiny_model, synthetic_ct_path):
    out = tmp_path / "out.dcm"
    with pytest.raises(InputError, match="needs a DICOM series"):
        segment(synthetic_ct_path, out, model=tiny_model, device="cpu")
    with pytest.raises(InputError, match="in-memory image"):
        segment(sitk.ReadImage(str(synthetic_ct_path)), None, model=tiny_model, device="cpu", dicom_seg_output=out)
    done = subprocess.run([sys.executable, "-m", "spinect", "segment", str(synthetic_ct_path), str(tmp_path / "a.nii.gz"),
                           "--model", str(tiny_model), "--device", "cpu", "--dicom-seg", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "needs a DICOM series" in done.stderr and "give the CT's DICOM folder" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "tiny.json", "tiny.pt"]  # nothing written


def _provenance() -> dict:
    return {"model": {"name": "test", "sha256": "0" * 64, "model_version": "1", "training_status": "test-only"},
            "software": {"version": "0", "torch": "0"}, "device": "cpu", "settings": {"smoothing_mm": 1.5}}


def _iod_errors(path: Path) -> list[str]:
    """dciodvfy's (dicom3tools) error lines for ``path``; its warnings are about source data and DICOMDIR."""
    import shutil

    tool = shutil.which("dciodvfy")
    done = subprocess.run([tool, "-new", str(path)], capture_output=True, text=True, timeout=120)
    lines = (done.stdout + done.stderr).splitlines()
    assert any(line.strip() == "Segmentation" for line in lines), lines  # it recognised the IOD
    return [line for line in lines if line.startswith("Error")]


@pytest.mark.skipif(not __import__("shutil").which("dciodvfy"),
                    reason="dciodvfy (Debian package dicom3tools) not installed: apt-get install dicom3tools")
def test_written_segs_pass_the_dicom3tools_iod_validator(phantom_dicom, tmp_path, tiny_model):
    folder, truth, _ = phantom_dicom
    ct = read_ct(folder)
    label = sitk.GetImageFromArray(truth)
    label.CopyInformation(ct)
    referenced = tmp_path / "phantom.dcm"
    write_dicom_seg(label, referenced, source_files=dicom_series_files(folder),
                    label_names=("background", "bone", "nerve"), provenance=_provenance())
    assert _iod_errors(referenced) == []
    if JPEG2000_SERIES.is_dir():
        unreferenced = tmp_path / "real.dcm"
        segment(JPEG2000_SERIES, unreferenced, model=tiny_model, device="cpu")
        assert _iod_errors(unreferenced) == []


# --- levels end to end: a stand-in level network through spinect.api.segment ------------------

#: HU of each block of the level test CT and the level class it stands for.
_LEVEL_BLOCKS = {"L3": 300.0, "L4": 500.0, "L5": 700.0, "nerve_root": 1100.0}


def _level_network():
    """Logits = -(HU - class HU)^2: the class whose HU is nearest wins (air = background)."""
    import torch

    from spinect.plan import LEVEL_CLASS_NAMES

    centres = np.full(len(LEVEL_CLASS_NAMES), 5000.0, np.float32)
    centres[0] = -1000.0
    for name, hu in _LEVEL_BLOCKS.items():
        centres[LEVEL_CLASS_NAMES.index(name)] = hu

    class _Nearest(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("centres", torch.from_numpy(centres).view(1, -1, 1, 1, 1))

        def forward(self, x):  # x: normalised HU (mean 0, std 1000)
            return -((x * 1000.0 - self.centres) / 100.0) ** 2

    return _Nearest()


def test_levels_reach_the_dicom_seg_and_every_output_gets_a_sidecar(tmp_path, monkeypatch):
    import spinect.model_file
    from spinect.plan import LEVEL_CLASS_GROUPS, LEVEL_CLASS_NAMES, ModelPlan

    hu = np.full((30, 48, 40), -1000.0, np.float32)  # (z, y, x); blocks stacked along z, a nerve bar beside
    for k, name in enumerate(("L5", "L4", "L3")):
        hu[2 + 9 * k:10 + 9 * k, 8:24, 6:20] = _LEVEL_BLOCKS[name]
    hu[2:28, 30:36, 24:30] = _LEVEL_BLOCKS["nerve_root"]
    folder = tmp_path / "dicom"
    folder.mkdir()
    for k in range(hu.shape[0]):
        _write_slice(folder, k, hu[k], hu.shape[0])
    plan = ModelPlan(architecture={}, class_names=LEVEL_CLASS_NAMES, class_groups=LEVEL_CLASS_GROUPS,
                     intensity_mean=0.0, intensity_std=1000.0, training_status="test-only")
    monkeypatch.setattr(spinect.model_file, "load_model", lambda *a, **k: (_level_network(), plan))
    out = tmp_path / "out" / "seg.nii.gz"
    out.parent.mkdir()
    dcm = tmp_path / "out" / "seg.dcm"
    result = segment(folder, out, device="cpu", levels=True, dicom_seg_output=dcm, smoothing_mm=0.0,
                     keep_islands=True)
    labels, levels = sitk.GetArrayFromImage(result.labels), sitk.GetArrayFromImage(result.levels)
    assert {LEVEL_MAP_NAMES[v] for v in np.unique(levels) if v} == {"L3", "L4", "L5"}
    files = dicom_series_files(folder)
    masks = _seg_masks_by_position(dcm, _source_positions(files), labels.shape)
    _assert_labels_equal(masks, labels, ("background", "bone", "nerve"))
    for value, name in enumerate(LEVEL_MAP_NAMES):
        if value:
            assert np.array_equal(masks[name], levels == value), name
    ds = pydicom.dcmread(dcm)
    assert [str(s.SegmentLabel) for s in ds.SegmentSequence] == ["bone", "nerve", *LEVEL_MAP_NAMES[1:]]
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == sorted(["seg.nii.gz", "seg_levels.nii.gz", "seg.dcm", "seg.nii.gz.provenance.json",
                            "seg_levels.nii.gz.provenance.json", "seg.dcm.provenance.json"])
    roles = {json.loads((out.parent / n).read_text())["role"] for n in names if n.endswith(".provenance.json")}
    assert roles == {"segmentation", "levels", "dicom-seg"}
    assert json.loads(provenance_path(out).read_text())["settings"]["levels"] is True
