"""Real-CT validation metric helpers (spinect.metrics.real_ct) against analytic truth on small arrays.

Fast (no model, no network, no files): every expected value below is counted by hand from the
constructed geometry. Arrays are (z, y, x).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from spinect.metrics.real_ct import (
    box_region,
    bone_scores,
    dilate_mm,
    false_positive_volume_ml,
    nerve_plausibility,
    recall_by_hu_bin,
    spinal_canal_mask,
    surface_dice,
    threshold_bone,
    volume_ml,
)


def _ring_vertebra(shape=(4, 20, 20), outer=(4, 15), inner=(7, 12)) -> np.ndarray:
    """A square ring per slice: outer square [4, 15) minus inner square [7, 12) in y and x."""
    vert = np.zeros(shape, dtype=bool)
    vert[:, outer[0] : outer[1], outer[0] : outer[1]] = True
    vert[:, inner[0] : inner[1], inner[0] : inner[1]] = False
    return vert


def test_canal_is_the_hole_of_a_ring_exact_count():
    vert = _ring_vertebra()
    canal = spinal_canal_mask(vert, (1.0, 1.0, 1.0), min_area_mm2=1.0)
    assert canal.sum() == 4 * 5 * 5  # 4 slices x the 5x5 hole
    assert canal[:, 7:12, 7:12].all()
    assert not (canal & vert).any()


def test_canal_drops_holes_smaller_than_min_area_and_keeps_largest_only():
    vert = _ring_vertebra(shape=(1, 30, 30), outer=(2, 20), inner=(5, 12))  # 7x7 hole
    vert[0, 22:27, 22:27] = True
    vert[0, 24, 24] = False  # a 1-voxel hole elsewhere ("foramen")
    canal = spinal_canal_mask(vert, (1.0, 1.0, 1.0), min_area_mm2=1.0)
    assert canal.sum() == 49 and not canal[0, 24, 24]
    both = spinal_canal_mask(vert, (1.0, 1.0, 1.0), min_area_mm2=1.0, largest_only=False)
    assert both.sum() == 50
    assert spinal_canal_mask(vert, (1.0, 1.0, 1.0), min_area_mm2=60.0).sum() == 0


def test_open_ring_is_closed_first_and_closing_voxels_are_not_canal():
    vert = _ring_vertebra(shape=(1, 20, 20))
    vert[0, 4:7, 9] = False  # a 1-voxel-wide gap through the ring wall (rows 4-6) to the hole
    assert spinal_canal_mask(vert, (1.0, 1.0, 1.0), closing_mm=0.0).sum() == 0
    canal = spinal_canal_mask(vert, (1.0, 1.0, 1.0), closing_mm=1.0, min_area_mm2=1.0)
    # The 1 mm disk is a 3x3 cross: closing seals the gap at rows 4-5; the hole (rows/cols 7-11)
    # loses its 4 corners (a cross cannot reach into a corner) and gains the gap voxel (6, 9) below
    # the seal: 25 - 4 + 1. Voxels the closing added (4, 9), (5, 9) are not canal.
    assert canal.sum() == 22
    assert canal[0, 6, 9] and not canal[0, 4:6, 9].any()
    assert not canal[0, 7, 7] and not canal[0, 11, 11] and canal[0, 8:11, 7:12].all()


def test_canal_empty_without_holes():
    vert = np.zeros((3, 10, 10), dtype=bool)
    vert[:, 2:8, 2:8] = True
    assert spinal_canal_mask(vert, (1.0, 1.0, 1.0)).sum() == 0


def test_threshold_bone_fills_hollow_box():
    ct = np.full((12, 12, 12), -50.0)
    ct[2:10, 2:10, 2:10] = 800.0  # cortex
    ct[3:9, 3:9, 3:9] = 40.0  # marrow below the threshold
    bone = threshold_bone(ct)
    assert bone.sum() == 8**3
    assert bone[2:10, 2:10, 2:10].all()
    assert (ct > 150).sum() == 8**3 - 6**3


def test_threshold_bone_fills_open_ended_tube_per_slice():
    ct = np.full((6, 10, 10), -50.0)
    ct[:, 2:8, 2:8] = 600.0
    ct[:, 4:6, 4:6] = 0.0  # a tube open at both z ends: 3D fill alone would not close it
    bone = threshold_bone(ct)
    assert bone.sum() == 6 * 36


def test_recall_by_hu_bin_counts_each_bin():
    truth = np.zeros((1, 1, 10), dtype=bool)
    truth[0, 0, :9] = True
    ct = np.array([[[50, 60, 99, 100, 150, 200, 201, 500, 900, 1000]]], dtype=float)
    pred = np.zeros_like(truth)
    pred[0, 0, [0, 3, 4, 6, 9]] = True  # 9 is outside the truth: not in any recall
    out = recall_by_hu_bin(pred, truth, ct)
    assert out["<100"] == {"recall": pytest.approx(1 / 3), "n_truth_voxels": 3}
    assert out["100-200"] == {"recall": pytest.approx(2 / 3), "n_truth_voxels": 3}
    assert out[">200"] == {"recall": pytest.approx(1 / 3), "n_truth_voxels": 3}


def test_recall_by_hu_bin_nan_for_empty_bin():
    truth = np.ones((1, 1, 2), dtype=bool)
    out = recall_by_hu_bin(truth, truth, np.array([[[500.0, 600.0]]]))
    assert math.isnan(out["<100"]["recall"]) and out["<100"]["n_truth_voxels"] == 0
    assert out[">200"]["recall"] == 1.0


def test_false_positive_volume_outside_dilated_truth():
    spacing = (2.0, 1.0, 1.0)  # 2 mm³ voxels
    truth = np.zeros((5, 5, 30), dtype=bool)
    truth[:, :, :10] = True
    pred = np.zeros_like(truth)
    pred[:, :, 10:13] = True  # x = 10, 11, 12 are 1, 2, 3 mm from the truth: within 3 mm
    pred[:, :, 20:25] = True  # 10-14 mm away: false positive, 5 x 5 x 5 voxels
    fp = false_positive_volume_ml(pred, truth, spacing, margin_mm=3.0)
    assert fp == pytest.approx(125 * 2.0 / 1000)
    region = np.zeros_like(truth)
    region[:, :, 22:] = True
    assert false_positive_volume_ml(pred, truth, spacing, margin_mm=3.0, region=region) == pytest.approx(75 * 2 / 1000)
    assert false_positive_volume_ml(pred, truth, spacing, margin_mm=2.0) == pytest.approx(150 * 2 / 1000)


def test_dilate_mm_uses_physical_spacing():
    mask = np.zeros((9, 9, 9), dtype=bool)
    mask[4, 4, 4] = True
    grown = dilate_mm(mask, (2.0, 1.0, 1.0), 2.0)
    assert grown[4, 4, 2] and grown[4, 4, 6] and grown[3, 4, 4] and grown[5, 4, 4]
    assert not grown[2, 4, 4] and not grown[4, 4, 1]


def test_nerve_plausibility_known_geometry():
    spacing = (1.0, 1.0, 1.0)
    canal = np.zeros((4, 40, 80), dtype=bool)
    canal[:, 10:20, 10:20] = True  # 4 x 10 x 10 = 400 voxels
    nerve = np.zeros_like(canal)
    nerve[:, 12:14, 12:14] = True  # inside the canal: 16 voxels
    nerve[:, 15, 35:37] = True  # 16-17 mm from the canal (x = 19 is the last canal column): 8 voxels
    nerve[:, 15, 60:62] = True  # 41-42 mm away: 8 voxels
    result = nerve_plausibility(nerve, canal, spacing, near_mm=20.0)
    assert result.share_nerve_near_canal == pytest.approx(24 / 32)
    assert result.share_canal_labelled_nerve == pytest.approx(16 / 400)
    assert result.nerve_volume_ml == pytest.approx(0.032)
    assert result.canal_volume_ml == pytest.approx(0.4)


def test_nerve_plausibility_without_canal_is_nan():
    nerve = np.ones((2, 3, 3), dtype=bool)
    result = nerve_plausibility(nerve, np.zeros_like(nerve), (1.0, 1.0, 1.0))
    assert math.isnan(result.share_nerve_near_canal) and math.isnan(result.share_canal_labelled_nerve)
    canal = np.zeros_like(nerve)
    canal[0, 0, 0] = True
    empty = nerve_plausibility(np.zeros_like(nerve), canal, (1.0, 1.0, 1.0))
    assert math.isnan(empty.share_nerve_near_canal) and empty.share_canal_labelled_nerve == 0.0


def test_box_region_grows_by_mm_and_clips():
    mask = np.zeros((3, 50, 50), dtype=bool)
    mask[1, 20:25, 30:35] = True
    region = box_region(mask, (1.0, 0.5, 0.5), (0.0, 5.0, 5.0))
    assert region.sum() == 1 * (5 + 20) * (5 + 20)  # 10 voxels = 5 mm each side in y and x
    clipped = box_region(mask, (1.0, 0.5, 0.5), (5.0, 20.0, 20.0))
    assert clipped.sum() == 3 * 50 * 50


def test_volume_ml():
    assert volume_ml(np.ones((10, 10, 10), dtype=bool), (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert volume_ml(np.ones((2, 5, 5), dtype=bool), (2.5, 0.7, 0.7)) == pytest.approx(50 * 2.5 * 0.49 / 1000)


def test_surface_dice_identical_shifted_and_empty():
    truth = np.zeros((16, 16, 16), dtype=bool)
    truth[4:12, 4:12, 4:12] = True
    assert surface_dice(truth, truth, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    far = np.zeros_like(truth)
    far[4:12, 4:12, 0:3] = True  # its nearest face (x = 2) is 2 mm from the cube's (x = 4): nothing within 1 mm
    assert surface_dice(far, truth, (1.0, 1.0, 1.0), tolerance_mm=1.0) == pytest.approx(0.0)
    assert surface_dice(far, truth, (1.0, 1.0, 1.0), tolerance_mm=50.0) == pytest.approx(1.0)
    assert surface_dice(np.zeros_like(truth), np.zeros_like(truth), (1.0, 1.0, 1.0)) == 1.0
    assert surface_dice(np.zeros_like(truth), truth, (1.0, 1.0, 1.0)) == 0.0


def test_bone_scores_region_and_ignore():
    ct = np.full((10, 20, 20), 400.0)
    truth = np.zeros((10, 20, 20), dtype=bool)
    truth[2:8, 2:8, 2:8] = True
    pred = truth.copy()
    pred[2:8, 2:8, 14:18] = True  # an extra block 6 mm away: a false positive
    scores = bone_scores(pred, truth, ct, (1.0, 1.0, 1.0))
    assert scores["dice"] == pytest.approx(2 * 216 / (216 + 216 + 144))
    assert scores["fp_volume_ml"] == pytest.approx(0.144)
    assert scores["recall_by_hu"][">200"]["recall"] == 1.0
    ignore = np.zeros_like(truth)
    ignore[:, :, 12:] = True  # e.g. a bone that is not part of the truth
    ignored = bone_scores(pred, truth, ct, (1.0, 1.0, 1.0), ignore=ignore)
    assert ignored["dice"] == 1.0 and ignored["fp_volume_ml"] == 0.0 and ignored["hd95_mm"] == 0.0
    region = np.zeros_like(truth)
    region[:, :, :10] = True
    assert bone_scores(pred, truth, ct, (1.0, 1.0, 1.0), region=region)["surface_dice"] == pytest.approx(1.0)


def test_the_real_ct_benchmark_reads_a_model_or_an_ensemble_of_model_files(tmp_path):
    from conftest import load_script

    bench = load_script("validate_real_ct", "benchmarks")
    first, second, plus = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c+d.pt"
    for path in (first, second, plus):
        path.write_bytes(b"x")
    models = bench.parse_models([f"one={first}", f"both={first}+{second}", f"plus={plus}"])
    assert models == {"one": (first,), "both": (first, second), "plus": (plus,)}  # a file named with + stays whole
    with pytest.raises(bench.BenchmarkError, match="does not exist"):
        bench.parse_models([f"bad={first}+{tmp_path / 'missing.pt'}"])
    with pytest.raises(bench.BenchmarkError, match="NAME=PATH"):
        bench.parse_models([str(first)])
