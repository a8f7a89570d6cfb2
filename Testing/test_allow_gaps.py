"""``--allow-gaps`` (issue 18): a DICOM series with missing slices resampled onto an even grid, never silently.

The truth is the intact series: after deleting slices, the resampled volume must have the intact
series' grid (origin, spacing, direction, size), its acquired slices must be the intact ones
exactly, and each slice in a gap the linear interpolation between the acquired slices around it.
Without the flag the series is refused, naming ``--allow-gaps``; with it there is a warning and
the output's provenance sidecar records the resampling.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk

from spinect.cli import main
from spinect.errors import InputError
from spinect.io import read_ct
from spinect.io.reading import gap_resampling
from test_robustness_inputs import _dicom_series


def _intact_and_gappy(tmp_path, removed: tuple[int, ...], n: int = 8):
    """The helper's file k lies at z = -k mm: the volume (sorted along +z) holds file k at index n - 1 - k."""
    files = _dicom_series(tmp_path / "dicom", n=n)
    intact = read_ct(tmp_path / "dicom")
    for k in removed:
        files[k].unlink()
    return intact, tmp_path / "dicom"


@pytest.mark.parametrize("removed", [(2,), (5, 6), (1, 3, 4)])
def test_resampled_series_matches_the_intact_one(tmp_path, caplog, removed):
    intact, folder = _intact_and_gappy(tmp_path, removed)
    with pytest.raises(InputError, match="slices are missing.*--allow-gaps"):
        read_ct(folder)
    with caplog.at_level(logging.WARNING, logger="spinect"):
        image = read_ct(folder, allow_gaps=True)
    assert image.GetSize() == intact.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), intact.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(image.GetOrigin(), intact.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), intact.GetDirection(), atol=1e-6)
    truth = sitk.GetArrayFromImage(intact)
    got = sitk.GetArrayFromImage(image)
    missing = [7 - k for k in removed]  # volume indices
    acquired = [k for k in range(truth.shape[0]) if k not in missing]
    np.testing.assert_array_equal(got[acquired], truth[acquired])
    for k in missing:
        below = max(a for a in acquired if a < k)
        above = min(a for a in acquired if a > k)
        expected = truth[below] + (truth[above] - truth[below]) * (k - below) / (above - below)
        np.testing.assert_allclose(got[k], expected, atol=1e-3)
    note = gap_resampling(image)
    assert note["acquired_slices"] == 8 - len(removed) and note["resampled_slices"] == 8
    assert note["interpolated_across_gaps"] == len(removed)
    assert note["slice_spacing_mm"] == pytest.approx(1.0)
    assert {tuple(g["between"]) for g in note["gaps"]} == {
        (f"{8 - max(a for a in acquired if a < k):02d}.dcm", f"{8 - min(a for a in acquired if a > k):02d}.dcm")
        for k in missing}
    assert "GUESSED" in caplog.text and "--allow-gaps" in caplog.text
    assert gap_resampling(intact) is None


def test_allow_gaps_never_hides_other_faults(tmp_path):
    """Duplicates are still refused with --allow-gaps: only missing slices are resampled."""
    import shutil

    files = _dicom_series(tmp_path / "dicom", n=8)
    files[4].unlink()
    shutil.copy(files[2], files[2].with_name("03b.dcm"))
    with pytest.raises(InputError, match="same position"):
        read_ct(tmp_path / "dicom", allow_gaps=True)


def test_cli_refuses_without_the_flag_and_records_the_resampling_with_it(tmp_path, tiny_model, capsys, caplog):
    intact, folder = _intact_and_gappy(tmp_path, (3,))
    out = tmp_path / "out"
    out.mkdir()
    labels = out / "labels.nii.gz"
    code = main(["segment", str(folder), str(labels), "--model", str(tiny_model), "--device", "cpu", "--progress-lines"])
    err = capsys.readouterr().err
    assert code == 3 and "--allow-gaps" in err and "03.dcm" in err and "05.dcm" in err and "Traceback" not in err
    assert list(out.iterdir()) == []
    with caplog.at_level(logging.WARNING, logger="spinect"):  # (in-process, the CLI's log goes to caplog)
        code = main(["segment", str(folder), str(labels), "--model", str(tiny_model), "--device", "cpu",
                     "--progress-lines", "--allow-gaps"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "GUESSED" in caplog.text and "resampled 7 slices onto 8" in caplog.text
    written = sitk.ReadImage(str(labels))
    assert written.GetSize() == intact.GetSize()  # labels on the even grid
    np.testing.assert_allclose(written.GetOrigin(), intact.GetOrigin(), atol=1e-4)
    sidecar = json.loads((out / "labels.nii.gz.provenance.json").read_text())
    note = sidecar["input_resampled"]
    assert note["gaps"] == [{"between": ["05.dcm", "03.dcm"], "gap_mm": pytest.approx(2.0, abs=1e-3)}]
    assert note["resampled_slices"] == 8 and note["acquired_slices"] == 7


def test_dicom_seg_of_a_resampled_series_is_refused(tmp_path, tiny_model, capsys):
    pytest.importorskip("highdicom")
    _, folder = _intact_and_gappy(tmp_path, (3,))
    out = tmp_path / "out"
    out.mkdir()
    code = main(["segment", str(folder), str(out / "labels.dcm"), "--model", str(tiny_model), "--device", "cpu",
                 "--progress-lines", "--allow-gaps"])
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err, err
    assert "DICOM SEG" in err and "--allow-gaps" in err, err
    assert list(out.iterdir()) == []
