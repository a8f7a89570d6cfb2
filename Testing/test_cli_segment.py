"""`spinect segment` end to end with a tiny model, and every bad-input case."""

from __future__ import annotations

import errno
import re
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from conftest import make_synthetic_ct
from spinect.cli import main
from spinect.commands.progress import parse_progress_line


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_segment_writes_labels_on_the_input_grid(tmp_path, tiny_model, synthetic_ct_path, capsys):
    out = tmp_path / "labels.nii.gz"
    code = main(["segment", str(synthetic_ct_path), str(out), "--model", str(tiny_model), "--verbose"])
    assert code == 0
    ct = sitk.ReadImage(str(synthetic_ct_path))
    labels = sitk.ReadImage(str(out))
    assert labels.GetSize() == ct.GetSize()
    assert labels.GetSpacing() == pytest.approx(ct.GetSpacing())
    assert labels.GetOrigin() == pytest.approx(ct.GetOrigin())
    assert labels.GetDirection() == pytest.approx(ct.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(labels))) <= {0, 1, 2}
    err = capsys.readouterr().err
    assert "network" in err and "stitching" in err and "peak RAM" in err


def test_segment_seg_nrrd_is_readable_by_slicerio_with_segment_names(tmp_path, tiny_model, synthetic_ct_path, capsys):
    out = tmp_path / "labels.seg.nrrd"
    assert main(["segment", str(synthetic_ct_path), str(out), "--model", str(tiny_model), "--progress-lines"]) == 0
    segmentation = slicerio.read_segmentation(str(out))
    names = [s["name"] for s in segmentation["segments"]]
    assert names == ["bone", "nerve"]
    assert [s["labelValue"] for s in segmentation["segments"]] == [1, 2]
    # Same voxels as the plain label map written by the API in memory.
    from spinect.api import segment

    expected = sitk.GetArrayFromImage(segment(synthetic_ct_path, model=tiny_model).labels)
    voxels = segmentation["voxels"]
    assert voxels.shape[::-1] == expected.shape or voxels.shape == expected.shape
    lines = [parse_progress_line(l) for l in capsys.readouterr().out.splitlines()]
    lines = [l for l in lines if l]
    assert lines[-1]["stage"] == "done" and lines[-1]["fraction"] == 1.0
    fractions = [l["fraction"] for l in lines]
    assert fractions == sorted(fractions)


def test_api_output_matches_cli_output(tmp_path, tiny_model, synthetic_ct_path):
    from spinect.api import segment

    out = tmp_path / "cli.nrrd"
    assert main(["segment", str(synthetic_ct_path), str(out), "--model", str(tiny_model)]) == 0
    result = segment(synthetic_ct_path, model=tiny_model)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), sitk.GetArrayFromImage(sitk.ReadImage(str(out))))
    assert result.output_path is None and "network" in result.timings_s


def test_console_script_runs_as_a_subprocess(tmp_path, tiny_model, synthetic_ct_path):
    out = tmp_path / "sub.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "spinect", "segment", str(synthetic_ct_path), str(out),
                           "--model", str(tiny_model), "--progress-lines"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    assert any(parse_progress_line(l) for l in proc.stdout.splitlines())


def _write(image: sitk.Image, path):
    sitk.WriteImage(image, str(path))
    return path


def _bad_inputs(tmp_path):
    ct = make_synthetic_ct()
    array = sitk.GetArrayFromImage(ct).astype(np.float32)
    nan = array.copy()
    nan[3, 4, 5] = np.nan
    nan_image = sitk.GetImageFromArray(nan)
    nan_image.CopyInformation(ct)
    mr = sitk.GetImageFromArray(np.random.default_rng(0).uniform(0, 1500, array.shape).astype(np.float32))
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"\x00\x01 definitely not nifti" * 10)
    return {
        "missing": tmp_path / "does_not_exist.nii.gz",
        "garbage": garbage,
        "2d": _write(sitk.GetImageFromArray(array[0]), tmp_path / "slice2d.nii.gz"),
        "4d": _write(sitk.JoinSeries([ct, ct]), tmp_path / "four_d.nii.gz"),
        "nan": _write(nan_image, tmp_path / "nan.nii.gz"),
        "mr": _write(mr, tmp_path / "mr.nii.gz"),
    }


@pytest.mark.parametrize("case, words", [
    ("missing", "not found|does not exist|no such"), ("garbage", "read"), ("2d", "2D|2-D|two-dimensional"),
    ("4d", "4D|4-D|four"), ("nan", "NaN"), ("mr", "CT|air"),
])
def test_bad_input_gives_message_exit_code_and_no_output(tmp_path, tiny_model, capsys, case, words):
    inputs = _bad_inputs(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = main(["segment", str(inputs[case]), str(out_dir / "labels.seg.nrrd"), "--model", str(tiny_model)])
    assert code != 0
    err = capsys.readouterr().err
    assert "error" in err and re.search(words, err, re.IGNORECASE), err
    assert _files(out_dir) == []


def test_missing_output_folder_fails_before_any_work(tmp_path, tiny_model, synthetic_ct_path, capsys):
    code = main(["segment", str(synthetic_ct_path), str(tmp_path / "nowhere" / "l.nii.gz"), "--model", str(tiny_model)])
    assert code != 0
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("err_no, words", [(errno.ENOSPC, "disk full"), (errno.EROFS, "could not write|read-only")])
def test_write_failure_leaves_nothing_behind(tmp_path, tiny_model, synthetic_ct_path, capsys, monkeypatch, err_no, words):
    import os

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real_replace = os.replace

    def failing_replace(src, dst):
        raise OSError(err_no, os.strerror(err_no))

    monkeypatch.setattr("spinect.io.atomic.os.replace", failing_replace)
    code = main(["segment", str(synthetic_ct_path), str(out_dir / "l.nii.gz"), "--model", str(tiny_model)])
    monkeypatch.setattr("spinect.io.atomic.os.replace", real_replace)
    assert code != 0
    assert re.search(words, capsys.readouterr().err, re.IGNORECASE)
    assert _files(out_dir) == []


def test_existing_output_is_kept_with_no_overwrite(tmp_path, tiny_model, synthetic_ct_path, capsys):
    out = tmp_path / "mine.seg.nrrd"
    out.write_bytes(b"user's careful work")
    code = main(["segment", str(synthetic_ct_path), str(out), "--model", str(tiny_model), "--no-overwrite"])
    assert code != 0
    assert out.read_bytes() == b"user's careful work"


def test_untrained_and_missing_models_are_refused(tmp_path, synthetic_ct_path, capsys):
    from conftest import make_tiny_model

    untrained = make_tiny_model(tmp_path / "u.pt", training_status="untrained")
    assert main(["segment", str(synthetic_ct_path), str(tmp_path / "o.nii.gz"), "--model", str(untrained)]) != 0
    assert "untrained" in capsys.readouterr().err
    assert main(["segment", str(synthetic_ct_path), str(tmp_path / "o.nii.gz"), "--model", str(tmp_path / "x.pt")]) != 0
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()
