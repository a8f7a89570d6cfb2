"""Fuzz suite (issue 18): malformed inputs through the CLI, each refused cleanly.

Every case runs ``spinect`` in-process with an existing output file (and JSON report) in place and
asserts: the exit code, the message's key words, no traceback, the existing outputs byte for byte
untouched, no new file (output or temporary) in the output folder, and nothing added beside the
input. Headers are made with pynrrd (NRRD), by editing NIfTI-1 header bytes (nibabel is not a
dependency; the fields are at fixed offsets) and MetaImage text, and DICOM series are edited with
pydicom (from the real 3-slice series, see ``test_robustness_inputs._dicom_series``).

Together with the fault tests in ``test_robustness_inputs.py``, ``test_io_integrity.py``,
``test_io.py`` and ``test_resource_guards.py`` these are the malformed inputs counted in
docs/robustness.md.
"""

from __future__ import annotations

import gzip
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_synthetic_ct, make_tiny_model
from spinect.cli import main

SENTINELS = {"labels.nii.gz": b"an earlier segmentation", "tri.json": b'{"earlier": "report"}'}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def _hu() -> np.ndarray:
    return sitk.GetArrayFromImage(make_synthetic_ct())  # (20, 40, 48) int16, air, tissue and bone


def _segment(path: Path, *extra: str):
    return lambda work, model, out: ["segment", str(path), str(out / "labels.nii.gz"), "--model", str(model),
                                     "--device", "cpu", *extra]


# --- NRRD headers made with pynrrd ------------------------------------------------------------


def _nrrd(work: Path, data=None, *, name="ct.nrrd", directions=None, truncate=False, **header) -> Path:
    nrrd = pytest.importorskip("nrrd")
    data = _hu().transpose(2, 1, 0) if data is None else data  # pynrrd is x-fastest (Fortran order)
    fields = {"encoding": "raw"}
    if data.ndim == 3:
        fields.update({"space": "left-posterior-superior", "space origin": [0.0, 0.0, 0.0],
                       "space directions": np.diag([0.8, 0.8, 2.0]) if directions is None else np.asarray(directions, float)})
    fields.update(header)
    path = work / name
    nrrd.write(str(path), data, fields, detached_header=name.endswith(".nhdr"))
    if truncate:
        target = path.with_suffix(".raw") if name.endswith(".nhdr") else path
        target.write_bytes(target.read_bytes()[: -data.nbytes // 2])
    return path


def _nrrd_case(**kwargs):
    def make(work, model, out):
        return _segment(_nrrd(work, **kwargs))(work, model, out)
    return make


def _nrrd_data(fn, **kwargs):
    def make(work, model, out):
        return _segment(_nrrd(work, fn(_hu().transpose(2, 1, 0)), **kwargs))(work, model, out)
    return make


def _with_nan(a):
    a = a.astype(np.float32)
    a[3, 4, 5] = np.nan
    return a


def _with_inf(a):
    a = a.astype(np.float64)
    a[1, 1, 1] = -np.inf
    return a


def _nrrd_missing_data_file(work, model, out):
    path = _nrrd(work, name="ct.nhdr")
    for data in work.glob("ct.raw*"):
        data.unlink()
    return _segment(path)(work, model, out)


def _nrrd_bad_encoding(work, model, out):
    path = _nrrd(work)
    text = path.read_bytes().replace(b"encoding: raw", b"encoding: bogus", 1)
    path.write_bytes(text)
    return _segment(path)(work, model, out)


def _nrrd_garbage_header(work, model, out):
    path = work / "ct.nrrd"
    path.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 48 40\x00\xff\xfe garbage\n\n" + bytes(200))
    return _segment(path)(work, model, out)


# --- NIfTI-1 headers edited byte by byte --------------------------------------------------------


def _nifti(work: Path, edit=None, *, name="ct.nii", data=None) -> Path:
    image = sitk.GetImageFromArray(_hu() if data is None else data)
    image.SetSpacing((0.8, 0.8, 2.0))
    plain = work / "ct.tmp.nii"
    sitk.WriteImage(image, str(plain))
    raw = bytearray(plain.read_bytes())
    plain.unlink()
    if edit is not None:
        edit(raw)
    path = work / name
    path.write_bytes(gzip.compress(bytes(raw)) if name.endswith(".gz") else bytes(raw))
    return path


def _pixdim(index: int, value: float):
    def edit(raw):
        struct.pack_into("<f", raw, 76 + 4 * index, value)
    return edit


def _set(offset: int, fmt: str, *values):
    def edit(raw):
        struct.pack_into("<" + fmt, raw, offset, *values)
    return edit


def _both(*edits):
    def edit(raw):
        for e in edits:
            e(raw)
    return edit


def _nifti_case(edit=None, **kwargs):
    def make(work, model, out):
        return _segment(_nifti(work, edit, **kwargs))(work, model, out)
    return make


def _nifti_twin(work, model, out):
    """``ct.nii.gz`` with a different ``ct.nii`` beside it: niftilib would read ``ct.nii``."""
    _nifti(work, name="ct.nii.gz")
    _nifti(work, name="ct.nii", data=np.full((4, 5, 6), -1000, np.int16))
    return _segment(work / "ct.nii.gz")(work, model, out)


# --- MetaImage headers --------------------------------------------------------------------------


def _mha(work: Path, replace: dict[bytes, bytes] | None = None, *, data_file=None) -> Path:
    path = work / "ct.mhd"
    image = sitk.GetImageFromArray(_hu())
    image.SetSpacing((0.8, 0.8, 2.0))
    sitk.WriteImage(image, str(path))
    text = path.read_bytes()
    for old, new in (replace or {}).items():
        assert old in text, (old, text)
        text = text.replace(old, new)
    path.write_bytes(text)
    if data_file == "missing":
        for raw in work.glob("ct.*raw"):
            raw.unlink()
    return path


def _mha_case(replace=None, **kwargs):
    def make(work, model, out):
        return _segment(_mha(work, replace, **kwargs))(work, model, out)
    return make


# --- DICOM series edited with pydicom -----------------------------------------------------------


def _dicom_case(edit, n=6):
    def make(work, model, out):
        from test_robustness_inputs import _dicom_series

        files = _dicom_series(work / "dicom", n=n)
        edit(files)
        return _segment(work / "dicom")(work, model, out)
    return make


def _each_slice(**tags):
    def edit(files):
        import pydicom

        for f in files:
            ds = pydicom.dcmread(f)
            for key, value in tags.items():
                setattr(ds, key, value)
            ds.save_as(f)
    return edit


def _without_pixel_spacing(files):
    import pydicom

    for f in files:
        ds = pydicom.dcmread(f)
        del ds.PixelSpacing
        ds.save_as(f)


def _two_gaps(files):
    files[1].unlink()
    files[3].unlink()


def _one_slice_left(files):
    for f in files[1:]:
        f.unlink()


def _only_non_dicom(files):
    for f in files:
        f.write_text("not an image\n")
        f.rename(f.with_suffix(".txt"))


# --- other files and options ---------------------------------------------------------------------


def _file(name: str, content: bytes):
    def make(work, model, out):
        path = work / name
        path.write_bytes(content)
        return _segment(path)(work, model, out)
    return make


def _good_ct(work: Path) -> Path:
    path = work / "ct.nii.gz"
    sitk.WriteImage(make_synthetic_ct(), str(path))
    return path


def _option(*extra: str):
    def make(work, model, out):
        return _segment(_good_ct(work), *extra)(work, model, out)
    return make


def _bad_model(content: bytes | None):
    def make(work, model, out):
        bad = work / "model.pt"
        if content is None:
            sitk.WriteImage(make_synthetic_ct(), str(work / "ct_copy.nii.gz"))
            shutil.move(work / "ct_copy.nii.gz", bad)  # a CT renamed .pt
        else:
            bad.write_bytes(content)
        return ["segment", str(_good_ct(work)), str(out / "labels.nii.gz"), "--model", str(bad), "--device", "cpu"]
    return make


def _missing_ensemble(work, model, out):
    return _segment(_good_ct(work), "--ensemble", str(work / "fold2.pt"))(work, model, out)


def _labels(work: Path, values: np.ndarray | None = None, name="seg.nii.gz") -> Path:
    if values is None:
        values = np.zeros((20, 20, 20), np.uint8)
        values[5:8] = 1
        values[10, 10, 10] = 2
    path = work / name
    sitk.WriteImage(sitk.GetImageFromArray(values), str(path))
    return path


def _triangles(seg_maker, *extra: str):
    def make(work, model, out):
        seg = seg_maker(work) if callable(seg_maker) else work / seg_maker
        return ["triangles", str(seg), "--level", "L5S1", "--side", "left", "--seed", "10", "10", "10",
                "--json", str(out / "tri.json"), "--progress-lines", *extra]
    return make


def _float_labels(work):
    values = np.zeros((20, 20, 20), np.float32)
    values[5:8] = 1.5
    return _labels(work, values, "seg.nrrd")


def _nan_labels(work):
    values = np.zeros((20, 20, 20), np.float32)
    values[5:8] = 1
    values[0, 0, 0] = np.nan
    return _labels(work, values, "seg.nii.gz")


def _ct_as_labels(work):
    return _good_ct(work)


ROTATION = [[math.cos(0.3), -math.sin(0.3), 0], [math.sin(0.3), math.cos(0.3), 0], [0, 0, 1]]

# name: (make argv, exit code, key words of the message)
CASES = {
    # NRRD (pynrrd)
    "nrrd zero voxel size": (_nrrd_case(directions=np.diag([0.8, 0.0, 2.0])), 3, ("cannot read", "ct.nrrd", "spacing")),
    "nrrd NaN direction": (_nrrd_case(directions=[[np.nan, 0, 0], [0, 0.8, 0], [0, 0, 2]]), 3, ("cannot read", "ct.nrrd")),
    "nrrd sheared axes": (_nrrd_case(directions=[[0.8, 0, 0], [0.4, 0.8, 0], [0, 0, 2]]), 3, ("not orthonormal",)),
    "nrrd 50 mm voxels": (_nrrd_case(directions=np.diag([0.8, 0.8, 50.0])), 3, ("voxel size", "50")),
    "nrrd 0.01 mm voxels": (_nrrd_case(directions=np.diag([0.01, 0.8, 2.0])), 3, ("voxel size", "0.01")),
    "nrrd 4D time series": (_nrrd_data(lambda a: np.stack([a, a], axis=-1)), 3, ("4D",)),
    "nrrd 2D": (_nrrd_data(lambda a: a[:, :, 0]), 3, ("2D",)),
    "nrrd single slice in 3D": (_nrrd_data(lambda a: a[:, :, :1]), 3, ("2D", "single slice")),
    "nrrd RGB vector pixels": (_nrrd_data(lambda a: np.stack([a, a, a]).astype(np.int16),
                                          **{"kinds": ["RGB-color", "domain", "domain", "domain"]}),
                               3, ("values per voxel",)),
    "nrrd truncated raw data": (_nrrd_case(truncate=True), 3, ("cannot read", "ct.nrrd")),
    "nrrd truncated detached data": (_nrrd_case(name="ct.nhdr", truncate=True), 3, ("cannot read", "ct.nhdr")),
    "nrrd detached data file missing": (_nrrd_missing_data_file, 3, ("cannot read", "ct.nhdr")),
    "nrrd unknown encoding": (_nrrd_bad_encoding, 3, ("cannot read", "ct.nrrd")),
    "nrrd garbage header": (_nrrd_garbage_header, 3, ("cannot read", "ct.nrrd")),
    "nrrd NaN voxel": (_nrrd_data(_with_nan), 3, ("NaN or infinite",)),
    "nrrd -inf voxel": (_nrrd_data(_with_inf), 3, ("NaN or infinite",)),
    "nrrd MR-like values": (_nrrd_data(lambda a: (a + 1024).astype(np.uint16)), 3, ("does not look like a CT",)),
    # NIfTI-1 (header bytes)
    "nifti pixdim 0": (_nifti_case(_pixdim(2, 0.0)), 3, ("voxel size",)),
    "nifti pixdim NaN": (_nifti_case(_pixdim(3, float("nan"))), 3, ("voxel size",)),
    "nifti pixdim 200 mm": (_nifti_case(_pixdim(1, 200.0)), 3, ("voxel size", "200")),
    "nifti data offset past the end": (_nifti_case(_set(108, "f", 4096.0)), 3, ("truncated or corrupted",)),
    "nifti dims larger than data": (_nifti_case(_set(46, "h", 40)), 3, ("truncated or corrupted",)),
    "nifti 4D": (_nifti_case(_both(_set(40, "h", 4), _set(46, "h", 10), _set(48, "h", 2))), 3, ("4D",)),
    "nifti wrong header size": (_nifti_case(_set(0, "i", 999)), 3, ("cannot read", "ct.nii")),
    "nifti bad magic": (_nifti_case(_set(344, "4s", b"xyz\0")), 3, ("cannot read", "ct.nii")),
    "nifti gz uncompressed twin": (_nifti_twin, 3, ("uncompressed twin", "ct.nii")),
    "empty .nii.gz": (_file("ct.nii.gz", b""), 3, ("cannot read", "ct.nii.gz")),
    "empty .nii": (_file("ct.nii", b""), 3, ("cannot read", "ct.nii")),
    "zeros as .nrrd": (_file("ct.nrrd", bytes(4096)), 3, ("cannot read", "ct.nrrd")),
    "text as .mha": (_file("ct.mha", b"hello\n"), 3, ("cannot read", "ct.mha")),
    # MetaImage
    "mhd data file missing": (_mha_case(data_file="missing"), 3, ("cannot read", "ct.mhd")),
    "mhd spacing 0": (_mha_case({b"ElementSpacing = 0.80000000000000004 0.80000000000000004 2":
                                 b"ElementSpacing = 0.80000000000000004 0 2"}), 3, ("cannot read", "ct.mhd", "spacing")),
    "mhd sizes beyond the data": (_mha_case({b"DimSize = 48 40 20": b"DimSize = 48 40 200"}), 3, ("cannot read", "ct.mhd")),
    # DICOM (pydicom)
    "dicom two missing slices": (_dicom_case(_two_gaps, n=8), 3, ("slices are missing", "01.dcm", "03.dcm")),
    "dicom one slice": (_dicom_case(_one_slice_left), 3, ("2D",)),
    "dicom no image files": (_dicom_case(_only_non_dicom), 3, ("no DICOM image series",)),
    "dicom pixel spacing 0": (_dicom_case(_each_slice(PixelSpacing=[0, 0])), 3, ("voxel size",)),
    "dicom pixel spacing missing": (_dicom_case(_without_pixel_spacing), 3, ("no Pixel Spacing", "1 mm")),
    "dicom pixel spacing 50 mm": (_dicom_case(_each_slice(PixelSpacing=[50, 50])), 3, ("voxel size",)),
    "dicom stored without rescale": (_dicom_case(_each_slice(RescaleIntercept=1024)), 3, ("does not look like a CT",)),
    # options
    "batch size 0": (_option("--batch-size", "0"), 2, ("--batch-size", "1-1024")),
    "batch size 5000": (_option("--batch-size", "5000"), 2, ("--batch-size", "1-1024")),
    "smoothing inf": (_option("--smoothing-mm", "inf"), 2, ("--smoothing-mm", "0-10")),
    "smoothing 11 mm": (_option("--smoothing-mm", "11"), 2, ("--smoothing-mm", "0-10")),
    "stride 0 0 0": (_option("--stride", "0", "0", "0"), 2, ("--stride", "positive integers")),
    "negative stride": (_option("--stride", "-4", "40", "40"), 2, ("--stride", "positive integers")),
    "uncertainty without tta": (_option("--uncertainty", "unc.nii.gz"), 2, ("--tta or --ensemble",)),
    "missing ensemble member": (_missing_ensemble, 5, ("fold2.pt",)),
    "empty model file": (_bad_model(b""), 5, ("model.pt",)),
    "text as model file": (_bad_model(b"not a model at all\n" * 20), 5, ("model.pt",)),
    "CT renamed .pt as model": (_bad_model(None), 5, ("model.pt",)),
    # triangles inputs and options
    "triangles theta inf": (_triangles(_labels, "--theta=inf"), 3, ("--theta", "0-90")),
    "triangles pixel NaN": (_triangles(_labels, "--pixel", "nan"), 3, ("--pixel",)),
    "triangles instrument radius NaN": (_triangles(_labels, "--instrument-radius", "nan"), 3, ("--instrument-radius",)),
    "triangles step 45": (_triangles(_labels, "--optimize", "--step", "45"), 3, ("--step",)),
    "triangles label map missing": (_triangles("nothing.nii.gz"), 3, ("does not exist",)),
    "triangles fractional labels": (_triangles(_float_labels), 3, ("outside the classes", "1.5")),
    "triangles NaN labels in NIfTI": (_triangles(_nan_labels), 3, ("NaN or infinite", "seg.nii.gz")),
    "triangles CT given as labels": (_triangles(_ct_as_labels), 3, ("outside the classes",)),
}


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_input_is_refused_cleanly(tmp_path, model, capsys, case):
    make, exit_code, words = CASES[case]
    work, out = tmp_path / "in", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    for name, content in SENTINELS.items():
        (out / name).write_bytes(content)
    argv = make(work, model, out)
    inputs = _listing(work)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == exit_code, err
    assert "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert _listing(out) == SENTINELS, "an output was written, replaced or left behind"
    assert _listing(work) == inputs, "something was written beside the input"


def test_the_suite_holds_at_least_60_malformed_inputs():
    """Issue 18 asks for at least 60 malformed inputs checked through the CLI with exit code and message.

    Counted: this file's cases plus the parametrised DICOM series faults and model-file faults of
    test_robustness_inputs.py (same checks: exit code, key words, no traceback, nothing written).
    """
    from test_robustness_inputs import DICOM_FAULTS, MODEL_FAULTS

    names = [*CASES, *DICOM_FAULTS, *MODEL_FAULTS]
    assert len(names) == len(set(names))
    assert len(CASES) >= 55
    assert len(names) >= 60
