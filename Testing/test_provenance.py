"""Provenance sidecars: every ``segment`` output says which code, model and settings made it."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import SimpleITK as sitk

import spinect
from spinect.api import segment
from spinect.io.provenance import provenance_path


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_output_gets_a_sidecar_with_model_hash_version_and_applied_settings(tmp_path, tiny_model, synthetic_ct_path):
    out = tmp_path / "seg.nii.gz"
    unc = tmp_path / "unc.nrrd"
    review = tmp_path / "review.csv"
    result = segment(synthetic_ct_path, out, model=tiny_model, device="cpu", smoothing_mm=0.0, tta=True,
                     uncertainty_output=unc, review_output=review)
    for path, role in ((out, "segmentation"), (unc, "uncertainty"), (review, "review")):
        record = json.loads(provenance_path(path).read_text())
        assert record["output"] == path.name and record["role"] == role
        assert record["model"]["sha256"] == _sha256(tiny_model)
        assert record["model"]["name"] == "tiny"
        assert record["software"]["version"] == spinect.__version__
        assert record["input"] == str(synthetic_ct_path)
        settings = record["settings"]
        assert settings["smoothing_mm"] == 0.0  # as given, not the plan's 1.5
        assert settings["stride_zyx"] == [20, 40, 40]  # the plan's default, resolved
        assert settings["tta"] is True and settings["remove_islands"] is True
        assert settings["mirror"] == "auto" and settings["mirror_axes_zyx"] == []  # TTA's flips include mirroring
        assert settings["bone_margin_mm"] == 30.0
        assert record["label_values"] == {"background": 0, "bone": 1, "nerve": 2}
    assert result.provenance["model"]["sha256"] == _sha256(tiny_model)
    # the label file itself is unchanged by the sidecar
    assert sitk.ReadImage(str(out)).GetSize() == result.labels.GetSize()


def test_mirroring_is_applied_and_recorded(synthetic_ct_path, tiny_model, tmp_path):
    plain = segment(synthetic_ct_path, tmp_path / "plain.nii.gz", model=tiny_model, device="cpu")
    mirrored = segment(synthetic_ct_path, tmp_path / "lr.nii.gz", model=tiny_model, device="cpu", mirror="lr")
    assert plain.provenance["settings"]["mirror_axes_zyx"] == []  # auto: off on the CPU
    record = json.loads(provenance_path(tmp_path / "lr.nii.gz").read_text())["settings"]
    assert record["mirror"] == "lr" and record["mirror_axes_zyx"] == [2]
    # the untrained tiny model is not left-right symmetric: mirroring changes some labels
    assert np.any(sitk.GetArrayFromImage(plain.labels) != sitk.GetArrayFromImage(mirrored.labels))


def test_sidecar_name_keeps_the_full_output_name(tmp_path):
    assert provenance_path(tmp_path / "ct.seg.nrrd").name == "ct.seg.nrrd.provenance.json"
    assert provenance_path(tmp_path / "ct.nii.gz").name == "ct.nii.gz.provenance.json"


def test_no_output_writes_no_sidecar(tmp_path, tiny_model, synthetic_ct_path):
    result = segment(synthetic_ct_path, None, model=tiny_model, device="cpu")
    assert list(tmp_path.glob("*.provenance.json")) == []
    assert result.provenance["settings"]["smoothing_mm"] == 1.5
