"""Bad inputs and faults that must be refused (or warned about) with a clear message, never silently used.

Each refusal asserts the exit code, the message's key words, no traceback and no output file left.
DICOM series are edited with pydicom from the real 3-slice GE series in ``shared/data``
(dcmqi repository, BSD-3-Clause style; see shared/data/README.md).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import SHARED_DATA, make_synthetic_ct, make_tiny_model
from spinect.cli import main
from spinect.errors import InputError, ModelError, OutputError

DICOM_3SLICE = SHARED_DATA / "dicom_ct_3slice"


def _refused(capsys, code: int, expected_code: int, *words: str) -> str:
    err = capsys.readouterr().err
    assert code == expected_code, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    return err


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- 1. DICOM series faults -----------------------------------------------------------------


def _dicom_series(folder: Path, n: int = 6, size: int = 64) -> list[Path]:
    """``n`` 1 mm slices (64 x 64 crops of the real series' pixels), one SeriesInstanceUID."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.uid import generate_uid

    if not DICOM_3SLICE.is_dir():
        pytest.skip(f"{DICOM_3SLICE} not available")
    folder.mkdir()
    sources = [pydicom.dcmread(DICOM_3SLICE / f"{i:02d}.dcm") for i in (1, 2, 3)]
    series_uid = generate_uid()
    paths = []
    for k in range(n):
        ds = copy.deepcopy(sources[k % 3])
        pixels = ds.pixel_array[200 : 200 + size, 200 : 200 + size].copy()
        ds.Rows, ds.Columns = size, size
        ds.PixelData = pixels.tobytes()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-235.2, -226.8, -126.69 - k]
        ds.SliceLocation = -126.69 - k
        path = folder / f"{k + 1:02d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def _missing_slice(files):
    files[2].unlink()


def _duplicate_slice(files):
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(files[2])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(files[2].with_name("03b.dcm"))


def _copied_slice(files):
    shutil.copy(files[2], files[2].with_name("03b.dcm"))


def _tilted_slice(files):
    import pydicom

    ds = pydicom.dcmread(files[2])
    ds.ImageOrientationPatient = [1, 0, 0, 0, math.cos(0.3), math.sin(0.3)]
    ds.save_as(files[2])


def _smaller_slice(files):
    import pydicom

    ds = pydicom.dcmread(files[2])
    pixels = ds.pixel_array[:32, :32].copy()
    ds.Rows = ds.Columns = 32
    ds.PixelData = pixels.tobytes()
    ds.save_as(files[2])


def _truncated_slice(files):
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) // 2])


def _garbage_slice(files):
    data = bytearray(files[2].read_bytes())
    data[400:] = np.random.default_rng(0).integers(0, 256, len(data) - 400, dtype=np.uint8).tobytes()
    files[2].write_bytes(bytes(data))


DICOM_FAULTS = {
    "missing slice": (_missing_slice, ("slices are missing", "02.dcm", "04.dcm", "2 mm")),
    "duplicated slice": (_duplicate_slice, ("same position", "03.dcm", "03b.dcm")),
    "copied slice file": (_copied_slice, ("same position", "03.dcm", "03b.dcm")),
    "tilted slice": (_tilted_slice, ("mixes slice orientations", "03.dcm")),
    "smaller slice": (_smaller_slice, ("mixes image sizes", "03.dcm", "64x64")),
    "truncated slice": (_truncated_slice, ("03.dcm", "cannot be read", "truncated")),
    "garbage slice": (_garbage_slice, ("03.dcm", "cannot be read", "truncated")),
}


def test_intact_dicom_series_reads(tmp_path):
    from spinect.io import read_ct

    _dicom_series(tmp_path / "dicom")
    image = read_ct(tmp_path / "dicom")
    assert image.GetSize() == (64, 64, 6)
    assert image.GetSpacing()[2] == pytest.approx(1.0)


@pytest.mark.parametrize("fault", sorted(DICOM_FAULTS))
def test_dicom_series_fault_is_refused_naming_the_files(tmp_path, tiny_model, capsys, fault):
    edit, words = DICOM_FAULTS[fault]
    edit(_dicom_series(tmp_path / "dicom"))
    out = tmp_path / "out"
    out.mkdir()
    code = main(["segment", str(tmp_path / "dicom"), str(out / "labels.nii.gz"), "--model", str(tiny_model)])
    _refused(capsys, code, InputError.exit_code, *words)
    assert _left(out) == []


def test_slightly_uneven_dicom_spacing_is_read_with_a_warning(tmp_path, caplog):
    import pydicom

    from spinect.io import read_ct

    files = _dicom_series(tmp_path / "dicom")
    ds = pydicom.dcmread(files[2])
    ds.ImagePositionPatient = [-235.2, -226.8, -126.69 - 2.3]  # 0.3 mm off: variable spacing, not a missing slice
    ds.save_as(files[2])
    with caplog.at_level(logging.WARNING, logger="spinect"):
        image = read_ct(tmp_path / "dicom")
    assert image.GetSize()[2] == 6
    assert "slice gaps vary from 0.7 to 1.3 mm" in caplog.text


def test_dicom_fault_refused_through_a_single_file_too(tmp_path):
    from spinect.io import read_ct

    files = _dicom_series(tmp_path / "dicom")
    _missing_slice(files)
    with pytest.raises(InputError, match="slices are missing"):
        read_ct(files[0])


# --- 2. file names that are not UTF-8 -------------------------------------------------------


def _undecodable(folder: Path, name: bytes) -> Path:
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def test_non_utf8_input_name_is_refused_not_aborted(tmp_path, tiny_model, capsys):
    bad = _undecodable(tmp_path, b"ct\xff.nii.gz")
    sitk.WriteImage(make_synthetic_ct(), str(tmp_path / "ct.nii.gz"))
    os.link(tmp_path / "ct.nii.gz", bad)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["segment", str(bad), str(out / "labels.nii.gz"), "--model", str(tiny_model)])
    _refused(capsys, code, InputError.exit_code, "ct\\xff.nii.gz", "not valid UTF-8", "Rename")
    assert _left(out) == []


def test_non_utf8_output_name_is_refused_before_any_work(tmp_path, tiny_model, synthetic_ct_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    code = main(["segment", str(synthetic_ct_path), str(_undecodable(out, b"labels\xe9.nii.gz")), "--model", str(tiny_model)])
    _refused(capsys, code, OutputError.exit_code, "labels\\xe9.nii.gz", "Rename")
    assert _left(out) == []


def test_non_utf8_names_in_library_calls(tmp_path):
    from spinect.io import read_labelmap, write_image, write_labelmap

    labels = sitk.Image(8, 8, 8, sitk.sitkUInt8)
    sitk.WriteImage(labels, str(tmp_path / "labels.nii.gz"))
    bad = _undecodable(tmp_path, b"labels\xff.nii.gz")
    os.link(tmp_path / "labels.nii.gz", bad)
    with pytest.raises(InputError, match="UTF-8"):
        read_labelmap(bad)
    with pytest.raises(OutputError, match="UTF-8"):
        write_labelmap(labels, _undecodable(tmp_path, b"x\xff.seg.nrrd"))
    with pytest.raises(OutputError, match="UTF-8"):
        write_image(labels, _undecodable(tmp_path, b"x\xff.nrrd"))
    assert sorted(os.listdir(os.fsencode(tmp_path))) == [b"labels.nii.gz", b"labels\xff.nii.gz"]


def test_non_utf8_file_in_a_dicom_folder_is_refused(tmp_path):
    from spinect.io import read_ct

    files = _dicom_series(tmp_path / "dicom", n=3)
    os.rename(files[2], _undecodable(tmp_path / "dicom", b"0\xff3.dcm"))
    with pytest.raises(InputError, match=r"0\\xff3\.dcm.*Rename"):
        read_ct(tmp_path / "dicom")


# --- 3. evaluate: existing report, phantom folder as labels ----------------------------------


def _phantom_folder(tmp_path: Path) -> Path:
    from spinect.api import phantom

    folder = tmp_path / "phantom"
    phantom(folder, n=1, shape_zyx=(40, 64, 64))
    return folder


def test_evaluate_takes_a_phantom_folder_as_labels(tmp_path, capsys):
    data = _phantom_folder(tmp_path)
    assert {"case_000_ct.nii.gz", "case_000_structures.nii.gz", "case_000_labels.nii.gz"} <= set(_left(data))
    preds = tmp_path / "preds"
    preds.mkdir()
    shutil.copy(data / "case_000_labels.nii.gz", preds / "case_000_pred.nii.gz")
    code = main(["evaluate", "--pred", str(preds), "--labels", str(data), "--out", str(tmp_path / "report"),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    rows = (tmp_path / "report" / "metrics_per_case.csv").read_text().splitlines()
    assert len(rows) == 3 and all(row.startswith("case_000,") for row in rows[1:])


def test_evaluate_refuses_to_replace_an_existing_report(tmp_path, capsys):
    data = _phantom_folder(tmp_path)
    label = data / "case_000_labels.nii.gz"
    args = ["evaluate", "--pred", str(label), "--labels", str(label), "--out", str(tmp_path / "report"), "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    summary = tmp_path / "report" / "metrics_summary.md"
    summary.write_text("the user's earlier report\n")
    _refused(capsys, main(args), OutputError.exit_code, "already holds an evaluation report", "--overwrite")
    assert summary.read_text() == "the user's earlier report\n"
    from spinect import api

    with pytest.raises(OutputError, match="already holds an evaluation report"):
        api.evaluate(tmp_path / "report", pred=label, labels=label)
    assert main(args + ["--overwrite"]) == 0
    assert "Dice" in summary.read_text()


# --- 4. train: label maps whose header geometry differs from the CT's -------------------------


def _train_case(folder: Path, *, spacing=None, origin_shift_mm=(0.0, 0.0, 0.0), crop=False):
    from spinect.manifest import DatasetCase, write_manifest

    folder.mkdir()
    ct = make_synthetic_ct(size_xyz=(40, 40, 36), spacing_xyz=(1.0, 1.0, 1.0))
    labels_array = (sitk.GetArrayFromImage(ct) > 300).astype(np.uint8)
    labels = sitk.GetImageFromArray(labels_array)
    labels.CopyInformation(ct)
    if crop:  # what Slicer writes: the segment's extent, on the CT's grid
        labels = labels[5:35, 6:34, :]
    if spacing is not None:
        labels.SetSpacing(spacing)
    labels.SetOrigin(tuple(o + s for o, s in zip(labels.GetOrigin(), origin_shift_mm)))
    sitk.WriteImage(ct, str(folder / "case_a_ct.nii.gz"))
    sitk.WriteImage(labels, str(folder / "case_a_labels.nii.gz"))
    case = DatasetCase("case_a", folder / "case_a_ct.nii.gz", folder / "case_a_labels.nii.gz")
    write_manifest(folder, [case])
    return case


@pytest.mark.parametrize("header, words", [
    (dict(spacing=(2.0, 2.0, 2.0)), "voxel size (2.0, 2.0, 2.0) mm differs"),
    (dict(origin_shift_mm=(0.5, 0.0, 0.0)), "is not on a CT voxel"),
    (dict(origin_shift_mm=(0.0, 0.0, 6.0)), "beyond the CT"),
])
def test_train_refuses_labels_off_the_ct_grid(tmp_path, header, words):
    from spinect.train.dataset import load_case

    case = _train_case(tmp_path / "data", **header)
    with pytest.raises(InputError) as caught:
        load_case(case)
    message = str(caught.value)
    assert "case case_a" in message and "case_a_labels.nii.gz" in message and words in message


def test_train_cli_names_the_case_and_writes_no_model(tmp_path, capsys):
    _train_case(tmp_path / "data", spacing=(2.0, 2.0, 2.0))
    code = main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--iterations", "2",
                 "--base-width", "4", "--no-progress"])
    _refused(capsys, code, InputError.exit_code, "case case_a", "not on the grid of its CT")
    assert not list(tmp_path.glob("run/**/*.pt"))


def test_train_accepts_a_label_map_cropped_on_the_ct_grid(tmp_path):
    from spinect.train.dataset import load_case

    full = load_case(_train_case(tmp_path / "full"))
    cropped = load_case(_train_case(tmp_path / "crop", crop=True))
    np.testing.assert_array_equal(cropped.labels, full.labels)


# --- 5. model plan consistency, non-finite network output ------------------------------------


def _edited_model(tmp_path: Path, edit) -> Path:
    path = make_tiny_model(tmp_path / "model.pt")
    path.with_suffix(".json").unlink()  # no sidecar: the file itself must be checked
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)
    return path


def _plan_edit(**changes):
    return lambda payload: payload["plan"].update(changes)


MODEL_FAULTS = {
    "spacing 0": (_plan_edit(spacing_zyx_mm=[0.0, 1.0, 1.0]), "spacing_zyx_mm"),
    "negative spacing": (_plan_edit(spacing_zyx_mm=[1.0, -1.0, 1.0]), "spacing_zyx_mm"),
    "NaN spacing": (_plan_edit(spacing_zyx_mm=[float("nan"), 1.0, 1.0]), "spacing_zyx_mm"),
    "reversed HU window": (_plan_edit(hu_window=[2000.0, -1000.0]), "low < high"),
    "negative smoothing": (_plan_edit(smoothing_mm=-1.0), "smoothing_mm"),
    "class count": (_plan_edit(class_names=["background", "bone"]), "outputs 3 classes but the plan names 2"),
    "no plan": (lambda payload: payload.pop("plan"), "holds no plan"),
    "no weights": (lambda payload: payload.pop("state_dict"), "holds no weights"),
    "text format version": (lambda payload: payload.update(format_version="1"), "not an integer"),
}


@pytest.mark.parametrize("fault", sorted(MODEL_FAULTS))
def test_inconsistent_model_file_is_refused(tmp_path, synthetic_ct_path, capsys, fault):
    from spinect.model_file import load_model, load_plan

    edit, words = MODEL_FAULTS[fault]
    model = _edited_model(tmp_path, edit)
    with pytest.raises(ModelError, match=words.replace("(", r"\(")):
        load_model(model)
    if fault not in ("class count", "no weights"):
        with pytest.raises(ModelError):
            load_plan(model)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["segment", str(synthetic_ct_path), str(out / "labels.nii.gz"), "--model", str(model)])
    _refused(capsys, code, ModelError.exit_code, str(model), words)
    assert _left(out) == []


def test_sidecar_that_is_a_json_list_is_refused(tmp_path):
    from spinect.model_file import load_model

    model = make_tiny_model(tmp_path / "model.pt")
    model.with_suffix(".json").write_text(json.dumps(["sha256"]))
    with pytest.raises(ModelError, match="not a JSON object"):
        load_model(model)


class _NaNNetwork(torch.nn.Module):
    num_classes = 3

    def forward(self, x):
        return torch.full((x.shape[0], 3, *x.shape[2:]), float("nan"))


def test_non_finite_network_output_is_an_error_not_an_empty_segmentation():
    from spinect.inference import predict_probabilities

    with pytest.raises(ModelError, match="NaN or infinite scores"):
        predict_probabilities(np.zeros((32, 64, 64), np.float32), _NaNNetwork(), device="cpu")


def test_overflowing_model_fails_instead_of_writing_empty_labels(tmp_path, synthetic_ct_path, capsys):
    def overflow(payload):  # finite weights whose activations overflow to inf (then NaN)
        for name, value in payload["state_dict"].items():
            if name.endswith("weight") and value.dim() == 5:
                payload["state_dict"][name] = value * 1e30

    model = _edited_model(tmp_path, overflow)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["segment", str(synthetic_ct_path), str(out / "labels.nii.gz"), "--model", str(model),
                 "--device", "cpu", "--whole-volume"])
    _refused(capsys, code, ModelError.exit_code, "NaN or infinite scores")
    assert _left(out) == []


# --- 6. inputs the model cannot see properly -------------------------------------------------


def _thin_ct(path: Path) -> Path:
    """3 slices of 1 mm (like the real 3-slice DICOM series) but a wide field of view."""
    sitk.WriteImage(make_synthetic_ct(size_xyz=(80, 80, 3), spacing_xyz=(1.0, 1.0, 1.0)), str(path))
    return path


def test_ct_thinner_than_one_window_warns_that_labels_are_unreliable(tmp_path, tiny_model, caplog):
    from spinect.api import segment

    with caplog.at_level(logging.WARNING, logger="spinect"):
        segment(_thin_ct(tmp_path / "thin.nii.gz"), model=tiny_model)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("only 3 voxels" in w and "along z" in w and "UNRELIABLE" in w for w in warnings), warnings
    assert not any("along y" in w or "along x" in w for w in warnings)


def test_ct_as_thick_as_a_window_gives_no_such_warning(tiny_model, caplog):
    from spinect.plan import ModelPlan
    from spinect.pipeline import warn_if_smaller_than_window

    plan = ModelPlan(architecture={})
    assert warn_if_smaller_than_window((32, 64, 64), plan) == []
    assert len(warn_if_smaller_than_window((31, 64, 200), plan)) == 1


def test_thin_ct_warning_is_visible_in_the_cli_output(tmp_path, tiny_model):
    ct = _thin_ct(tmp_path / "thin.nii.gz")
    out = tmp_path / "labels.nii.gz"
    done = subprocess.run([sys.executable, "-m", "spinect", "segment", str(ct), str(out), "--model", str(tiny_model),
                           "--device", "cpu"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    assert "UNRELIABLE" in done.stderr and "along z" in done.stderr
    assert out.is_file()
