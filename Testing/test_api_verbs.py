"""The Python API mirrors the CLI verbs (one call = one command) and checks its input the same way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from spinect import api
from spinect.errors import InputError


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("api_phantom")
    written = api.phantom(out, n=1, seed=3, shape_zyx=(48, 64, 64), degeneration=False)
    return out, written


def test_phantom_writes_case_and_manifest(phantom_dir):
    out, written = phantom_dir
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "manifest.json") in written
    (case,) = manifest["cases"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / case["label"])))
    assert labels.shape == (48, 64, 64)
    assert set(np.unique(labels)) == {0, 1, 2}


def test_evaluate_labels_against_themselves_gives_perfect_scores(phantom_dir, tmp_path):
    out, _ = phantom_dir
    case = json.loads((out / "manifest.json").read_text())["cases"][0]
    label = out / case["label"]
    result, files = api.evaluate(tmp_path / "report", pred=label, labels=label)
    assert result.summary("dice", "bone").mean == pytest.approx(1.0)
    assert result.summary("dice", "nerve").mean == pytest.approx(1.0)
    assert result.summary("hd95_mm", "nerve").mean == pytest.approx(0.0)
    assert files.summary_markdown.is_file()


def test_evaluate_refuses_mixed_modes(phantom_dir, tmp_path):
    out, _ = phantom_dir
    with pytest.raises(InputError, match="not both"):
        api.evaluate(tmp_path / "r", pred=out, labels=out, data=out)
    with pytest.raises(InputError, match="--pred PRED and --labels LABELS"):
        api.evaluate(tmp_path / "r", pred=out)
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_train_refuses_a_folder_without_cases(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError):
        api.train(tmp_path / "empty", tmp_path / "run", iterations=1)
    assert not (tmp_path / "run" / "best.pt").exists()


def test_measure_kambin_is_triangles_with_kambin(monkeypatch):
    seen = {}

    def fake_measure(seg, **kwargs):
        seen.update(kwargs, seg=seg)
        return "result"

    import spinect.geometry.measure as measure

    monkeypatch.setattr(measure, "measure_triangle", fake_measure)
    assert api.measure_kambin("seg.nrrd", level="l5s1", side="left", auto=True, structures="map.nrrd") == "result"
    assert seen["seg"] == Path("seg.nrrd") and seen["structures"] == Path("map.nrrd")
    assert (seen["level"], seen["side"], seen["triangle"], seen["auto"]) == ("L5S1", "left", "kambin", True)
    assert seen["points_lps_mm"] is None and seen["seed_lps_mm"] is None and seen["optimize"] is False
