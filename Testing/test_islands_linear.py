"""Island removal in linear time: the same labels and removal lists as the old implementation.

The old implementation (``benchmarks/islands_reference.py``, kept verbatim) re-grew each chain with
fresh KD-trees (about N^2.4-3.3 in the number of islands); the new one builds the "within 10 mm"
graph of pieces once. Speed is shown by ``benchmarks/bench_islands.py``, not here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from spinect.postprocess import suppress_islands

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import islands_reference  # noqa: E402
from bench_islands import many_island_map  # noqa: E402


def _report(removed):
    return [(r.label_value, r.voxels, r.volume_mm3, r.centroid_zyx, r.distance_mm, r.reason) for r in removed]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (2.0, 1.0, 1.0), (0.8, 0.5, 0.6)])
def test_random_many_island_maps_give_the_old_labels_and_removal_lists(seed, spacing):
    labels = many_island_map(150, shape=(60, 110, 120), seed=seed)
    cleaned, removed = suppress_islands(labels, spacing)
    old_cleaned, old_removed = islands_reference.suppress_islands(labels, spacing)
    np.testing.assert_array_equal(cleaned, old_cleaned)
    assert _report(removed) == _report(old_removed)  # same order, bit-identical distances
    assert len(removed) > 20 and any(r.label_value == 1 for r in removed) and any(r.label_value == 2 for r in removed)
    kept_nerve = ndimage.label(cleaned == 2, structure=np.ones((3, 3, 3), bool))[1]
    assert kept_nerve > 1  # chains and detached roots were kept, not only the sac


@pytest.mark.parametrize("options", [dict(nerve_max_distance_mm=5.0), dict(min_root_piece_elongation=2.0, fov_edge_voxels=0),
                                     dict(max_bone_distance_mm=60.0, min_nerve_volume_mm3=100.0)])
def test_the_rule_parameters_act_as_before(options):
    labels = many_island_map(120, shape=(50, 100, 100), seed=11)
    cleaned, removed = suppress_islands(labels, (1.0, 0.8, 0.8), **options)
    old_cleaned, old_removed = islands_reference.suppress_islands(labels, (1.0, 0.8, 0.8), **options)
    np.testing.assert_array_equal(cleaned, old_cleaned)
    assert _report(removed) == _report(old_removed)


def test_a_long_dotted_root_is_kept_whole_and_a_gap_wider_than_the_chaining_distance_cuts_it():
    labels = np.zeros((40, 60, 320), np.uint8)
    labels[5:35, 25:33, 0:8] = 2                     # dural sac, at x = 0..7
    for i in range(30):                              # 30 fragments of 2x2x1 voxels, 10 mm apart (the limit)
        labels[20:22, 28:30, 17 + 10 * i] = 2
    cleaned, removed = suppress_islands(labels, (1.0, 1.0, 1.0))
    assert removed == [] and (cleaned == labels).all()
    cut = labels.copy()
    cut[20:22, 28:30, 17 + 10 * 20] = 0              # a 20 mm gap after fragment 19: fragments 21-29 go
    cleaned, removed = suppress_islands(cut, (1.0, 1.0, 1.0))
    assert len(removed) == 9 and all(r.voxels == 4 for r in removed)
    assert (cleaned[:, :, :217] == cut[:, :, :217]).all() and not cleaned[:, :, 217:].any()
    assert sorted(round(r.distance_mm, 9) for r in removed) == [20.0 + 10 * i for i in range(9)]


def test_reported_distances_are_the_closest_voxel_pair_even_when_a_nearer_box_holds_farther_voxels():
    """Kept pieces are searched in order of their boxes' distance; the true nearest may come second."""
    labels = np.zeros((30, 120, 120), np.uint8)
    labels[10:14, 5:9, 5:111] = 1                    # L-shaped bone (the largest, kept): a bar along x ...
    labels[10:14, 5:111, 107:111] = 1                # ... and an arm along y; its box holds the island below
    labels[10:16, 80:86, 20:26] = 1                  # compact kept bone piece, 216 mm3
    labels[11:13, 60:62, 40:42] = 1                  # bone island: 52 mm from the L's voxels, 23.6 mm from the piece
    labels[5:25, 95:105, 50:58] = 2                  # dural sac
    labels[10:12, 60:62, 60:62] = 2                  # nerve islands
    labels[25:27, 20:23, 10:13] = 2
    cleaned, removed = suppress_islands(labels, (1.0, 1.0, 1.0))
    assert sorted((r.label_value, r.voxels) for r in removed) == [(1, 8), (2, 8), (2, 18)]
    for r in removed:
        component, _ = ndimage.label(labels == r.label_value, structure=np.ones((3, 3, 3), bool))
        island = component == component[tuple(np.floor(r.centroid_zyx).astype(int))]
        truth = cdist(np.argwhere(island).astype(float), np.argwhere(cleaned == r.label_value).astype(float)).min()
        assert r.distance_mm == pytest.approx(truth, abs=1e-9)
    bone = next(r for r in removed if r.label_value == 1)
    assert bone.distance_mm == pytest.approx(np.hypot(80 - 61, 40 - 25))


def test_bone_island_distances_are_to_the_kept_bone():
    labels = np.zeros((20, 30, 30), np.uint8)
    labels[2:4, 2:4, 2:4] = 1
    labels[10:12, 10:12, 10:12] = 1
    labels[15:18, 20:23, 20:23] = 1  # the largest bone piece is always kept
    cleaned, removed = suppress_islands(labels, (1.0, 1.0, 1.0), min_bone_volume_mm3=1.0)
    assert removed == [] and (cleaned == labels).all()
    cleaned, removed = suppress_islands(labels, (1.0, 1.0, 1.0))
    assert (cleaned == 1).sum() == 27
    assert sorted((r.voxels, round(r.distance_mm, 9)) for r in removed) == [
        (8, round(float(np.sqrt(4**2 + 9**2 + 9**2)), 9)), (8, round(float(np.sqrt(12**2 + 17**2 + 17**2)), 9))]


def test_a_bone_island_without_bone_dense_voxels_is_removed_and_the_largest_bone_is_always_kept():
    """The density rule: a contrast-filled organ taken for bone has no cortex (no voxel at bone density)."""
    labels = np.zeros((30, 40, 60), np.uint8)
    labels[5:25, 5:35, 5:25] = 1  # the "vertebra": its outer layer is dense (a cortex)
    labels[8:20, 10:25, 35:50] = 1  # the "kidney": 2.7 mL of labelled "bone", none of it dense
    labels[2:5, 2:5, 55:58] = 1  # a small dense piece, removed by volume as before
    dense = np.zeros(labels.shape, bool)
    dense[5:25, 5:35, 5:25] = True
    dense[7:23, 7:33, 7:23] = False  # hollow: a 2-voxel cortex around marrow
    dense[2:5, 2:5, 55:58] = True
    spacing = (1.0, 1.0, 1.0)
    cleaned, removed = suppress_islands(labels, spacing, dense_zyx=dense)
    assert cleaned[10, 15, 40] == 0 and cleaned[10, 15, 10] == 1
    reasons = {round(r.volume_mm3): r.reason for r in removed}
    assert "bone-dense" in reasons[12 * 15 * 15] and "<" in reasons[27]
    # without the CT's density, or with the kidney dense enough, it stays
    assert suppress_islands(labels, spacing)[0][10, 15, 40] == 1
    dense[8:20, 10:25, 35:37] = True  # 2 of its 15 columns dense: 13 % >= 1 %
    assert suppress_islands(labels, spacing, dense_zyx=dense)[0][10, 15, 40] == 1
    # the largest bone component is kept even with no dense voxel at all
    only = np.zeros_like(labels)
    only[8:20, 10:25, 35:50] = 1
    assert suppress_islands(only, spacing, dense_zyx=np.zeros(labels.shape, bool))[0].sum() == only.sum()
    with pytest.raises(ValueError, match="must have the label map's shape"):
        suppress_islands(labels, spacing, dense_zyx=dense[:-1])
