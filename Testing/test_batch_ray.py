"""``spinect segment-batch --ray``: the serial path's outputs and CSV from Ray actors on a local cluster."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import csv_rows as _rows
from conftest import write_synthetic_cts
from spinect.api import segment_batch
from spinect.cli import main


@pytest.fixture
def cases(tmp_path):
    folder = tmp_path / "cts"
    paths = write_synthetic_cts(folder, 2)
    broken = folder / "broken.nii.gz"
    broken.write_bytes(b"this is not a NIfTI file")
    return [paths[0], broken, paths[1]]


def test_ray_path_writes_what_the_serial_path_writes_and_reports_a_failing_case(cases, tmp_path, tiny_model, capsys):
    pytest.importorskip("ray")
    import ray

    serial = segment_batch(cases, out_dir=tmp_path / "serial", model=tiny_model, device="cpu")
    assert serial.counts == {"ok": 2, "failed": 1, "skipped": 0}
    out = tmp_path / "ray"
    try:
        code = main(["segment-batch", *map(str, cases), "--out", str(out), "--model", str(tiny_model),
                     "--device", "cpu", "--ray"])
    finally:
        if ray.is_initialized():  # run_batch_ray shuts its own instance down; never leave one behind
            ray.shutdown()
    err = capsys.readouterr().err
    assert not ray.is_initialized()
    assert code == 1 and "2 segmented" in err and "1 failed" in err and "broken" in err
    serial_rows, ray_rows = _rows(tmp_path / "serial" / "segment-batch.csv"), _rows(out / "segment-batch.csv")
    assert list(ray_rows[0]) == list(serial_rows[0])  # the same columns, in the same order
    assert [(r["case"], r["status"]) for r in ray_rows] == [("case0", "ok"), ("broken", "failed"), ("case1", "ok")]
    assert "broken.nii.gz" in ray_rows[1]["error"] and ray_rows[1]["error"] == serial_rows[1]["error"]
    for mine, theirs in zip(ray_rows, serial_rows):
        for column in ("bone_mm3", "nerve_mm3", "removed_islands"):
            assert mine[column] == theirs[column]
    for name in ("case0", "case1"):
        ray_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{name}.nii.gz")))
        serial_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "serial" / f"{name}.nii.gz")))
        np.testing.assert_array_equal(ray_labels, serial_labels)
        assert (out / f"{name}.nii.gz.provenance.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["case0.nii.gz", "case0.nii.gz.provenance.json", "case1.nii.gz",
                                                     "case1.nii.gz.provenance.json", "segment-batch.csv"]
    # Resume: with every good case written, a second run skips them (no cluster is started for them)
    # and redoes only the failed one.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("case*")}
    from spinect.batch import collect_cases
    from spinect.batch_ray import run_batch_ray

    again = run_batch_ray(collect_cases(cases[::2], out_dir=out), model=tiny_model, device="cpu")
    assert again.counts == {"ok": 0, "failed": 0, "skipped": 2} and not ray.is_initialized()
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("case*")}


def test_ray_not_installed_is_a_clear_error_before_any_work(cases, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    out = tmp_path / "out"
    code = main(["segment-batch", str(cases[0]), "--out", str(out), "--ray"])
    err = capsys.readouterr().err
    assert code != 0 and "--ray needs the Ray package" in err and "pip install 'spinect[ray]'" in err
    assert not out.exists()


def test_importing_spinect_does_not_import_ray():
    code = ("import sys, spinect, spinect.api, spinect.batch, spinect.batch_ray, spinect.cli; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
