"""`spinect evaluate --model M --data DATA`: segments each case and scores it like the file mode."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_synthetic_ct
from spinect.cli import main


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(2):
        ct = make_synthetic_ct(seed=i)
        sitk.WriteImage(ct, str(folder / f"case{i}_ct.nii.gz"))
        hu = sitk.GetArrayFromImage(ct)
        labels = np.where(hu > 400, 1, 0).astype(np.uint8)
        labels[:, :3, :3] = 2
        label_image = sitk.GetImageFromArray(labels)
        label_image.CopyInformation(ct)
        sitk.WriteImage(label_image, str(folder / f"case{i}_labels.nii.gz"))
    return folder


def test_model_mode_scores_every_case_like_the_file_mode(tmp_path, tiny_model, dataset, capsys):
    from spinect.api import segment

    out_model = tmp_path / "report_model"
    assert main(["evaluate", "--model", str(tiny_model), "--data", str(dataset), "--out", str(out_model), "--no-progress"]) == 0
    # File mode on the same predictions must give the same numbers.
    preds = tmp_path / "preds"
    preds.mkdir()
    for i in range(2):
        segment(dataset / f"case{i}_ct.nii.gz", preds / f"case{i}_pred.nii.gz", model=tiny_model)
    out_files = tmp_path / "report_files"
    labels = tmp_path / "labels"
    labels.mkdir()
    for i in range(2):
        (labels / f"case{i}_labels.nii.gz").write_bytes((dataset / f"case{i}_labels.nii.gz").read_bytes())
    assert main(["evaluate", "--pred", str(preds), "--labels", str(labels), "--out", str(out_files), "--no-progress"]) == 0
    rows_model = list(csv.DictReader(open(out_model / "metrics_per_case.csv")))
    rows_files = list(csv.DictReader(open(out_files / "metrics_per_case.csv")))
    assert len(rows_model) == 4  # 2 cases x (bone, nerve)
    def key(row):
        return row["case_id"], row["class_name"]

    for a, b in zip(sorted(rows_model, key=key), sorted(rows_files, key=key)):
        assert a == b


def test_model_mode_errors(tmp_path, tiny_model, dataset, capsys):
    assert main(["evaluate", "--model", str(tiny_model), "--out", str(tmp_path / "r")]) != 0
    assert "--data" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tiny_model), "--data", str(dataset), "--cases", "nope", "--out", str(tmp_path / "r")]) != 0
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
