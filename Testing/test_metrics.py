"""spinect.metrics and ``spinect evaluate``: metrics against hand-computed truth, reports, CLI."""

from __future__ import annotations

import csv
import math
import statistics

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.metrics import compute_dice, compute_iou

from spinect.cli import main
from spinect.errors import InputError
from spinect.metrics import (
    METRIC_NAMES,
    case_id_from_path,
    evaluate_predictions,
    format_summary_markdown,
    label_map_metrics,
    match_case_files,
    overlap_scores,
    plot_metric_boxplots,
    summarize_metrics,
    summarize_values,
    surface_distances_mm,
    write_case_csv,
    write_evaluation_report,
)

CLASSES = ("background", "bone", "nerve")


def _box(shape, z, y, x):
    mask = np.zeros(shape, dtype=bool)
    mask[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = True
    return mask


# ---------------------------------------------------------------- overlap (PA, IoU, Dice)


def test_overlap_of_two_boxes_matches_hand_counts():
    # P: 4x5x5 = 100 voxels, T: 6x5x5 = 150 voxels, overlap 2x5x5 = 50 voxels.
    pred = _box((10, 6, 6), (0, 4), (0, 5), (0, 5))
    true = _box((10, 6, 6), (2, 8), (0, 5), (0, 5))
    scores = overlap_scores(pred, true)
    assert (scores.n_pred_voxels, scores.n_true_voxels, scores.n_overlap_voxels) == (100, 150, 50)
    assert scores.dice == pytest.approx(2 * 50 / (100 + 150))
    assert scores.iou == pytest.approx(50 / (100 + 150 - 50))
    # SPINECT's pixel accuracy divides by the TRUE voxels (recall), not the predicted ones.
    assert scores.pixel_accuracy == pytest.approx(50 / 150)


def test_overlap_matches_monai_reference():
    rng = np.random.default_rng(0)
    pred, true = rng.random((2, 8, 9, 10)) > 0.6
    scores = overlap_scores(pred, true)
    as_tensor = lambda m: torch.from_numpy(m[None, None].astype(np.float32))  # noqa: E731
    assert scores.dice == pytest.approx(float(compute_dice(as_tensor(pred), as_tensor(true))[0, 0]), rel=1e-6)
    assert scores.iou == pytest.approx(float(compute_iou(as_tensor(pred), as_tensor(true))[0, 0]), rel=1e-6)


@pytest.mark.parametrize(
    "pred_empty, true_empty, overlap_expected, distance_expected",
    [(True, True, 1.0, 0.0), (True, False, 0.0, math.nan), (False, True, 0.0, math.nan)],
)
def test_empty_mask_conventions(pred_empty, true_empty, overlap_expected, distance_expected):
    full = _box((5, 5, 5), (1, 3), (1, 3), (1, 3))
    empty = np.zeros_like(full)
    pred, true = (empty if pred_empty else full), (empty if true_empty else full)
    scores = overlap_scores(pred, true)
    distances = surface_distances_mm(pred, true, spacing_zyx_mm=(2.0, 1.0, 1.0))
    assert (scores.pixel_accuracy, scores.iou, scores.dice) == (overlap_expected,) * 3
    for value in (distances.hd95_mm, distances.assd_mm):
        assert math.isnan(value) if math.isnan(distance_expected) else value == distance_expected


# ---------------------------------------------------------------- distances (HD95, ASSD in mm)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("shift", [1, 3])
def test_parallel_planes_distance_is_shift_times_spacing(axis, shift):
    spacing_zyx_mm = (2.5, 0.7, 0.9)
    shape = (8, 9, 10)
    pred, true = np.zeros(shape, bool), np.zeros(shape, bool)
    index = [slice(None)] * 3
    index[axis] = 2
    true[tuple(index)] = True
    index[axis] = 2 + shift
    pred[tuple(index)] = True
    distances = surface_distances_mm(pred, true, spacing_zyx_mm=spacing_zyx_mm)
    assert distances.hd95_mm == pytest.approx(shift * spacing_zyx_mm[axis], rel=1e-5)
    assert distances.assd_mm == pytest.approx(shift * spacing_zyx_mm[axis], rel=1e-5)


def test_single_voxels_distance_is_anisotropic_euclidean():
    spacing_zyx_mm = (2.0, 1.0, 0.5)
    pred, true = np.zeros((8, 9, 6), bool), np.zeros((8, 9, 6), bool)
    pred[1, 2, 3] = True
    true[4, 6, 3] = True  # offsets 3 (z), 4 (y) voxels -> 6 mm and 4 mm
    distances = surface_distances_mm(pred, true, spacing_zyx_mm=spacing_zyx_mm)
    assert distances.hd95_mm == pytest.approx(math.hypot(6.0, 4.0), rel=1e-5)
    assert distances.assd_mm == pytest.approx(math.hypot(6.0, 4.0), rel=1e-5)


def test_hd95_ignores_a_rare_outlier_that_hd100_and_assd_see():
    spacing_zyx_mm = (1.5, 1.0, 1.0)
    true = np.zeros((9, 10, 10), bool)
    true[2] = True  # 100 surface voxels
    pred = true.copy()
    pred[7, 0, 0] = True  # 1 of 101 predicted surface voxels, 5 slices away = 7.5 mm
    outlier_mm = 5 * 1.5
    robust = surface_distances_mm(pred, true, spacing_zyx_mm=spacing_zyx_mm)
    classic = surface_distances_mm(pred, true, spacing_zyx_mm=spacing_zyx_mm, percentile=100)
    assert robust.hd95_mm == pytest.approx(0.0, abs=1e-6)
    assert classic.hd95_mm == pytest.approx(outlier_mm, rel=1e-5)
    # ASSD pools both directions: 101 + 100 distances, only one of them non-zero.
    assert robust.assd_mm == pytest.approx(outlier_mm / 201, rel=1e-5)


def test_distance_inputs_are_checked():
    mask = np.ones((3, 3, 3), bool)
    with pytest.raises(ValueError, match="spacing"):
        surface_distances_mm(mask, mask, spacing_zyx_mm=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        surface_distances_mm(mask, mask[:2], spacing_zyx_mm=(1.0, 1.0, 1.0))


# ---------------------------------------------------------------- label maps and summary


def test_label_map_metrics_per_class():
    true = np.zeros((10, 6, 6), np.uint8)
    pred = np.zeros_like(true)
    true[_box(true.shape, (2, 8), (0, 5), (0, 5))] = 1
    pred[_box(true.shape, (0, 4), (0, 5), (0, 5))] = 1
    true[9, 5, 5] = 2  # nerve missed by the prediction
    rows = label_map_metrics(pred, true, spacing_zyx_mm=(1.0, 1.0, 1.0), class_names=CLASSES, case_id="c1")
    assert [(r.case_id, r.class_name, r.label_value) for r in rows] == [("c1", "bone", 1), ("c1", "nerve", 2)]
    bone, nerve = rows
    assert (bone.pixel_accuracy, bone.dice) == pytest.approx((50 / 150, 100 / 250))
    assert (nerve.dice, nerve.n_true_voxels, nerve.n_pred_voxels) == (0.0, 1, 0)
    assert math.isnan(nerve.hd95_mm)


def test_label_map_metrics_rejects_unnamed_values():
    labels = np.zeros((3, 3, 3), np.int16)
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"\[7\]"):
        label_map_metrics(labels, np.zeros_like(labels), spacing_zyx_mm=(1, 1, 1), class_names=CLASSES)


def test_summary_excludes_and_counts_undefined_values():
    values = [0.9, 0.8, math.nan, 1.0]
    summary = summarize_values(values, class_name="nerve", metric="hd95_mm")
    defined = [0.9, 0.8, 1.0]
    assert summary.mean == pytest.approx(statistics.mean(defined))
    assert summary.sd == pytest.approx(statistics.stdev(defined))
    assert (summary.minimum, summary.maximum, summary.n, summary.n_undefined) == (0.8, 1.0, 3, 1)
    assert math.isnan(summarize_values([0.5]).sd)
    assert summarize_values([math.nan]).n == 0
    with pytest.raises(ValueError, match="infinite"):
        summarize_values([1.0, math.inf])


def _fake_rows(dice_by_class, hd95_by_class):
    from spinect.metrics import ClassMetrics

    rows = []
    for name, dices in dice_by_class.items():
        for i, (dice, hd) in enumerate(zip(dices, hd95_by_class[name])):
            rows.append(ClassMetrics(f"case{i}", name, 1, dice, dice, dice, hd, hd, 10, 10))
    return rows


def test_markdown_table_is_shaped_like_spinect_table_2():
    rows = _fake_rows({"bone": [0.9, 0.8, 1.0], "nerve": [0.5, 0.7, 0.6]},
                      {"bone": [1.0, 2.0, 3.0], "nerve": [4.0, math.nan, 6.0]})
    summaries = summarize_metrics(rows, class_names=("bone", "nerve"))
    text = format_summary_markdown(summaries, class_names=("bone", "nerve"), n_cases=3)
    table = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert cells[0] == ["Metric", "bone", "nerve"]
    assert [c[0] for c in cells[2:]] == ["Pixel accuracy (%)", "IoU (%)", "Dice (%)", "HD95 (mm)", "ASSD (mm)"]
    dice_row = cells[4]
    assert dice_row[1] == "90.00 ± 10.00 (80.0–100.0)"
    assert dice_row[2] == "60.00 ± 10.00 (50.0–70.0)"
    assert cells[5][2] == f"5.00 ± {statistics.stdev([4.0, 6.0]):.2f} (4.0–6.0)"
    assert "1 of 3 cases undefined" in text


def test_csv_and_boxplot_written_and_readable(tmp_path):
    rows = _fake_rows({"bone": [0.9, 0.8], "nerve": [0.5, 0.7]}, {"bone": [1.0, 2.0], "nerve": [math.nan] * 2})
    write_case_csv(rows, tmp_path / "cases.csv")
    with open(tmp_path / "cases.csv", newline="") as stream:
        read = list(csv.DictReader(stream))
    assert [(r["case_id"], r["class_name"], float(r["dice"])) for r in read] == [
        (r.case_id, r.class_name, r.dice) for r in rows
    ]
    assert math.isnan(float(read[-1]["hd95_mm"]))
    png = plot_metric_boxplots(rows, tmp_path / "box.png", class_names=("bone", "nerve"))  # all-NaN class too
    import matplotlib.pyplot as plt

    assert plt.imread(png).ndim == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left over


# ---------------------------------------------------------------- evaluation API and pairing


def _image(labels_zyx, spacing_xyz=(0.8, 0.8, 1.5), origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(labels_zyx.astype(np.uint8))
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin)
    return image


def _case_arrays(shift):
    true = np.zeros((12, 10, 10), np.uint8)
    true[2:8, 2:8, 2:8] = 1
    true[9, 3:7, 3:7] = 2
    pred = np.zeros_like(true)
    pred[2 + shift:8 + shift, 2:8, 2:8] = 1
    pred[9, 3:7, 3:7] = 2
    return pred, true


def test_evaluate_predictions_takes_in_memory_images_and_summarizes():
    pairs = []
    expected_bone_dice = []
    for shift in (0, 1, 2):
        pred, true = _case_arrays(shift)
        pairs.append((f"case{shift}", _image(pred), _image(true)))
        expected_bone_dice.append(overlap_scores(pred == 1, true == 1).dice)
    result = evaluate_predictions(pairs, class_names=CLASSES)
    assert result.case_ids == ("case0", "case1", "case2") and result.class_names == ("bone", "nerve")
    assert result.summary("dice", "bone").mean == pytest.approx(np.mean(expected_bone_dice))
    assert result.summary("dice", "nerve").mean == 1.0
    # bone shifted by 1 slice of 1.5 mm: the HD95 of case1 is one slice.
    case1_bone = next(r for r in result.rows if r.case_id == "case1" and r.class_name == "bone")
    assert case1_bone.hd95_mm == pytest.approx(1.5, rel=1e-5)


def test_grid_mismatch_is_refused_unless_resampling_is_asked():
    pred, true = _case_arrays(1)
    # The same prediction on a grid twice as fine in z (0.75 mm slices, centred in the 1.5 mm ones).
    fine = _image(np.repeat(pred, 2, axis=0), spacing_xyz=(0.8, 0.8, 0.75), origin=(0.0, 0.0, -0.375))
    with pytest.raises(InputError, match="different grids"):
        evaluate_predictions([("c", fine, _image(true))], class_names=CLASSES)
    result = evaluate_predictions([("c", fine, _image(true))], class_names=CLASSES, resample_prediction=True)
    assert result.summary("dice", "bone").mean == pytest.approx(overlap_scores(pred == 1, true == 1).dice)


def test_same_lattice_other_extent_is_padded_exactly():
    pred, true = _case_arrays(1)
    expected = label_map_metrics(pred, true, spacing_zyx_mm=(1.5, 0.8, 0.8), class_names=CLASSES, case_id="c")
    # Labels cropped to their segments, as 3D Slicer saves a .seg.nrrd: origin moves by whole voxels.
    full = _image(true)
    cropped = sitk.RegionOfInterest(full, size=[8, 8, 9], index=[1, 2, 1])
    assert cropped.GetOrigin() != full.GetOrigin()
    result = evaluate_predictions([("c", _image(pred), cropped)], class_names=CLASSES)
    assert list(result.rows) == expected


@pytest.mark.parametrize(
    "name, case_id",
    [("case07_pred.nii.gz", "case07"), ("case07_labels.seg.nrrd", "case07"), ("case07.nrrd", "case07"),
     ("Case07-Seg.nii", "Case07"), ("case07_pred_seg.mha", "case07"), ("seg.nii.gz", "seg")],
)
def test_case_id_from_path(name, case_id):
    assert case_id_from_path(f"/x/{name}") == case_id


def test_match_case_files_reports_unmatched(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "l").mkdir()
    for name in ("p/a_pred.nii.gz", "p/b_pred.nii.gz", "l/a_labels.nii.gz", "l/c_labels.nii.gz", "l/notes.txt"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(InputError, match="labels without prediction: c.*predictions without label: b"):
        match_case_files(tmp_path / "p", tmp_path / "l")


# ---------------------------------------------------------------- CLI end to end


def _write_dataset(root, shifts, *, label_spacing=(0.8, 0.8, 1.5), pred_spacing=(0.8, 0.8, 1.5)):
    (root / "pred").mkdir()
    (root / "labels").mkdir()
    for i, shift in enumerate(shifts):
        pred, true = _case_arrays(shift)
        sitk.WriteImage(_image(pred, pred_spacing), str(root / "pred" / f"case{i:02d}_pred.nii.gz"))
        sitk.WriteImage(_image(true, label_spacing), str(root / "labels" / f"case{i:02d}_labels.nii.gz"))


def _cli(root, *extra):
    return main(["evaluate", "--pred", str(root / "pred"), "--labels", str(root / "labels"),
                 "--out", str(root / "report"), "--no-progress", *extra])


def test_cli_end_to_end(tmp_path, capsys):
    _write_dataset(tmp_path, (0, 1))
    assert _cli(tmp_path) == 0
    report = tmp_path / "report"
    assert sorted(p.name for p in report.iterdir()) == [
        "metrics_boxplot.png", "metrics_per_case.csv", "metrics_summary.csv", "metrics_summary.md"]
    with open(report / "metrics_per_case.csv", newline="") as stream:
        rows = {(r["case_id"], r["class_name"]): r for r in csv.DictReader(stream)}
    pred, true = _case_arrays(1)
    assert float(rows[("case01", "bone")]["dice"]) == pytest.approx(overlap_scores(pred == 1, true == 1).dice)
    assert float(rows[("case01", "bone")]["hd95_mm"]) == pytest.approx(1.5, rel=1e-5)
    with open(report / "metrics_summary.csv", newline="") as stream:
        summary = list(csv.DictReader(stream))
    expected_keys = {(m, c) for m in METRIC_NAMES for c in ("bone", "nerve")}
    assert {(r["metric"], r["class_name"]) for r in summary} == expected_keys
    assert "| Dice (%) |" in (report / "metrics_summary.md").read_text(encoding="utf-8")
    assert "| Dice (%) |" in capsys.readouterr().out


def test_cli_reads_slicer_segmentation_labels(tmp_path):
    from spinect.io import write_labelmap

    _write_dataset(tmp_path, (1,))
    label_file = tmp_path / "labels" / "case00_labels.nii.gz"
    write_labelmap(sitk.ReadImage(str(label_file)), tmp_path / "labels" / "case00.seg.nrrd", class_names=CLASSES)
    label_file.unlink()
    assert _cli(tmp_path) == 0
    with open(tmp_path / "report" / "metrics_per_case.csv", newline="") as stream:
        rows = {r["class_name"]: r for r in csv.DictReader(stream)}
    pred, true = _case_arrays(1)
    assert float(rows["bone"]["dice"]) == pytest.approx(overlap_scores(pred == 1, true == 1).dice)
    assert float(rows["nerve"]["dice"]) == 1.0


def test_cli_missing_folder(tmp_path, capsys):
    _write_dataset(tmp_path, (0,))
    code = main(["evaluate", "--pred", str(tmp_path / "nowhere"), "--labels", str(tmp_path / "labels"),
                 "--out", str(tmp_path / "report"), "--no-progress"])
    assert code == InputError.exit_code
    assert "nowhere does not exist" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_cli_mismatched_grid(tmp_path, capsys):
    _write_dataset(tmp_path, (0,), pred_spacing=(0.8, 0.8, 3.0))
    assert _cli(tmp_path) == InputError.exit_code
    assert "different grids" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_cli_unmatched_case_ids(tmp_path, capsys):
    _write_dataset(tmp_path, (0, 1))
    (tmp_path / "pred" / "case01_pred.nii.gz").rename(tmp_path / "pred" / "case99_pred.nii.gz")
    assert _cli(tmp_path) == InputError.exit_code
    err = capsys.readouterr().err
    assert "case01" in err and "case99" in err


def test_cli_output_is_a_file(tmp_path, capsys):
    _write_dataset(tmp_path, (0,))
    (tmp_path / "report").write_text("not a folder")
    assert _cli(tmp_path) == 4
    assert "is a file" in capsys.readouterr().err


def test_write_report_replaces_previous_files(tmp_path):
    pred, true = _case_arrays(0)
    result = evaluate_predictions([("c", _image(pred), _image(true))], class_names=CLASSES)
    (tmp_path / "metrics_summary.md").write_text("old")
    files = write_evaluation_report(result, tmp_path)
    assert "old" not in files.summary_markdown.read_text(encoding="utf-8")
