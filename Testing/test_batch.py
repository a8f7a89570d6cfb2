"""``spinect segment-batch`` / :func:`spinect.api.segment_batch`: one loaded model, resume, per-case CSV, failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import csv_rows as _rows
from conftest import write_synthetic_cts
from spinect.api import segment, segment_batch
from spinect.cli import main
from spinect.errors import InputError, SpinectError


@pytest.fixture
def cts(tmp_path):
    return write_synthetic_cts(tmp_path / "cts", 3)


def test_batch_equals_single_segment_and_loads_the_model_once(cts, tmp_path, tiny_model, monkeypatch):
    import spinect.model_file as model_file

    built = []
    real_build = model_file.torch.nn.Module.load_state_dict

    def counting(self, *args, **kwargs):
        built.append(type(self).__name__)
        return real_build(self, *args, **kwargs)

    monkeypatch.setattr(model_file.torch.nn.Module, "load_state_dict", counting)
    out = tmp_path / "out"
    result = segment_batch(cts, out_dir=out, model=tiny_model, allow_untrained=True, device="cpu")
    assert len(built) == 1  # one network for the three cases
    assert result.counts == {"ok": 3, "failed": 0, "skipped": 0} and result.failed == 0
    rows = _rows(out / "segment-batch.csv")
    assert [r["case"] for r in rows] == ["case0", "case1", "case2"] and {r["status"] for r in rows} == {"ok"}
    for ct, row in zip(cts, rows):
        single = segment(ct, tmp_path / "single.nii.gz", model=tiny_model, allow_untrained=True, device="cpu")
        batch_labels = sitk.GetArrayFromImage(sitk.ReadImage(row["output"]))
        np.testing.assert_array_equal(batch_labels, sitk.GetArrayFromImage(single.labels))
        # Volumes in the CSV are the label counts times the voxel volume.
        image = sitk.ReadImage(str(ct))
        voxel_mm3 = float(np.prod(image.GetSpacing()))
        for value, name in ((1, "bone"), (2, "nerve")):
            assert float(row[f"{name}_mm3"]) == pytest.approx((batch_labels == value).sum() * voxel_mm3, abs=0.05)
        assert float(row["seconds"]) > 0 and float(row["network_s"]) >= 0 and row["error"] == ""
        assert (out / (row["case"] + ".nii.gz.provenance.json")).is_file()


def test_resume_after_a_killed_run_writes_each_case_once(cts, tmp_path, tiny_model):
    out = tmp_path / "out"
    first = segment_batch(cts[:2], out_dir=out, model=tiny_model, allow_untrained=True, device="cpu")
    assert first.counts["ok"] == 2
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.glob("case*"))}
    assert len(before) == 4  # two outputs, two sidecars
    # A run killed while writing case1's sidecar left its output only, and case2 never started:
    # both are (re)done; case0 is not touched.
    (out / "case1.nii.gz.provenance.json").unlink()
    (out / ".case2.nii.gz.abc123.partial.nii.gz").write_bytes(b"partial")  # a SIGKILLed atomic write
    second = segment_batch(cts, out_dir=out, model=tiny_model, allow_untrained=True, device="cpu")
    assert second.counts == {"ok": 2, "failed": 0, "skipped": 1}
    assert (out / "case0.nii.gz").stat().st_mtime_ns == before["case0.nii.gz"][0]
    assert (out / "case0.nii.gz").read_bytes() == before["case0.nii.gz"][1]
    assert (out / "case0.nii.gz.provenance.json").stat().st_mtime_ns == before["case0.nii.gz.provenance.json"][0]
    assert (out / "case1.nii.gz.provenance.json").is_file() and (out / "case2.nii.gz").is_file()
    rows = {r["case"]: r for r in _rows(out / "segment-batch.csv")}
    assert [rows[c]["status"] for c in ("case0", "case1", "case2")] == ["skipped", "ok", "ok"]
    # The skipped case keeps the figures of the run that wrote it.
    first_rows = {r["case"]: r for r in first.rows}
    assert rows["case0"]["bone_mm3"] == first_rows["case0"]["bone_mm3"] != ""
    # A third run has nothing left to do and writes nothing.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("case*")}
    third = segment_batch(cts, out_dir=out, model=tiny_model, allow_untrained=True, device="cpu")
    assert third.counts == {"ok": 0, "failed": 0, "skipped": 3}
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("case*")}


def test_a_failing_case_is_reported_and_does_not_stop_the_batch(cts, tmp_path, tiny_model, capsys):
    bad = tmp_path / "cts" / "broken.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    missing = tmp_path / "cts" / "missing.nii.gz"
    listing = tmp_path / "cases.csv"
    listing.write_text("case,input\n"
                       f"a,{cts[0].name}\n"
                       f"broken,{bad}\n"
                       "gone,cts/missing.nii.gz\n"
                       f"b,{cts[1]}\n".replace(cts[0].name, f"cts/{cts[0].name}"), encoding="utf-8")
    out = tmp_path / "out"
    code = main(["segment-batch", "--list", str(listing), "--out", str(out), "--model", str(tiny_model), "--device", "cpu"])
    err = capsys.readouterr().err
    # tiny_model is test-only, not 'untrained': it segments; the two bad cases fail, the batch goes on.
    assert code == 1
    rows = {r["case"]: r for r in _rows(out / "segment-batch.csv")}
    assert [rows[c]["status"] for c in ("a", "broken", "gone", "b")] == ["ok", "failed", "failed", "ok"]
    assert "broken.nii.gz" in rows["broken"]["error"] and str(missing) in rows["gone"]["error"]
    assert "2 segmented" in err and "2 failed" in err and "broken" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "a.nii.gz.provenance.json", "b.nii.gz",
                                                     "b.nii.gz.provenance.json", "segment-batch.csv"]


def test_the_csv_is_written_after_every_case(cts, tmp_path, tiny_model):
    seen = []

    def progress(done, total, row):
        seen.append((done, total, [r["case"] for r in _rows(tmp_path / "out" / "segment-batch.csv")]))

    segment_batch(cts, out_dir=tmp_path / "out", model=tiny_model, allow_untrained=True, device="cpu", progress=progress)
    assert seen == [(1, 3, ["case0"]), (2, 3, ["case0", "case1"]), (3, 3, ["case0", "case1", "case2"])]


def test_bad_batch_requests_are_refused_before_any_work(cts, tmp_path, tiny_model, capsys):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="no case"):
        segment_batch([], out_dir=out)
    with pytest.raises(InputError, match="two cases are named 'case0'"):
        segment_batch([cts[0], cts[0]], out_dir=out)
    with pytest.raises(InputError, match="not found"):
        segment_batch(list_file=tmp_path / "nope.csv", out_dir=out)
    no_column = tmp_path / "bad.csv"
    no_column.write_text("path\nx.nii.gz\n", encoding="utf-8")
    with pytest.raises(InputError, match="no 'input' column"):
        segment_batch(list_file=no_column, out_dir=out)
    with pytest.raises(SpinectError, match="does not take"):
        segment_batch(cts, out_dir=out, overwrite=False)
    assert not out.exists()
    code = main(["segment-batch", str(cts[0]), "--out", str(out), "--ray-cpus-per-actor", "2"])
    assert code != 0 and "--ray-cpus-per-actor is for --ray runs" in capsys.readouterr().err
    assert not out.exists()


def test_seg_nrrd_suffix_and_provenance(cts, tmp_path, tiny_model):
    out = tmp_path / "out"
    result = segment_batch(cts[:1], out_dir=out, suffix=".seg.nrrd", model=tiny_model, allow_untrained=True, device="cpu")
    assert result.rows[0]["output"].endswith("case0.seg.nrrd") and (out / "case0.seg.nrrd").is_file()
    sidecar = json.loads((out / "case0.seg.nrrd.provenance.json").read_text(encoding="utf-8"))
    assert "case0.nii.gz" in json.dumps(sidecar)


def test_reused_models_are_built_once_and_again_when_the_file_changes(tmp_path):
    from conftest import make_tiny_model
    from spinect.model_file import load_model, reuse_loaded_models

    path = make_tiny_model(tmp_path / "m.pt", seed=0)
    assert load_model(path)[0] is not load_model(path)[0]  # outside the block: a new network each time
    with reuse_loaded_models():
        first, plan = load_model(path)
        assert load_model(path)[0] is first
        make_tiny_model(path, seed=1, base_width=6)  # replaced (other size): loaded again
        second, _ = load_model(path)
        assert second is not first
        assert sum(p.numel() for p in second.parameters()) > sum(p.numel() for p in first.parameters())
        assert load_model(path)[0] is second
    assert load_model(path)[0] is not second
