"""Ensemble uncertainty (3D-SepNet eqs. 9, 11, 12) and false-positive island removal (Ua-Net)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from spinect.cli import main
from spinect.postprocess import suppress_islands
from spinect.uncertainty import (
    fuse_probabilities,
    label_vote_entropy,
    predict_ensemble,
    predictive_entropy,
    sepnet_rank_weights,
    uncertain_regions,
    volume_variation_coefficient,
)


def test_vote_entropy_matches_hand_values():
    votes = np.array([[0, 0, 0], [0, 1, 1], [1, 2, 0], [1, 2, 2]], dtype=np.uint8)[:, :, None, None]  # (N=4, 3, 1, 1)
    entropy = label_vote_entropy(votes, num_classes=3)[:, 0, 0]
    # voxel 0 votes {0,0,1,1}: ln 2; voxel 1 {0,1,2,2}: -(2 * .25 ln .25 + .5 ln .5); voxel 2 {0,1,0,2}: same
    expected_1 = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    np.testing.assert_allclose(entropy, [math.log(2), expected_1, expected_1], rtol=1e-6)
    assert label_vote_entropy(np.zeros((5, 2, 2, 2), np.uint8), num_classes=3).max() == 0


def test_predictive_entropy_and_vvc_match_hand_values():
    p = np.array([[0.5, 1.0], [0.5, 0.0], [0.0, 0.0]], np.float32)[:, :, None, None]
    np.testing.assert_allclose(predictive_entropy(p)[:, 0, 0], [math.log(2), 0.0], atol=1e-6)
    votes = np.zeros((3, 10, 10, 10), np.uint8)
    for m, n in enumerate((10, 20, 30)):
        votes[m].flat[:n] = 1
    vvc = volume_variation_coefficient(votes, num_classes=3, voxel_volume_mm3=2.0)
    assert vvc[1] == pytest.approx(np.std([10, 20, 30]) / 20)  # sigma/mu, scale-free
    assert math.isnan(vvc[2])


def test_sepnet_class_wise_weighted_fusion():
    dice = np.array([[0.9, 0.5], [0.8, 0.7], [0.7, 0.6]])
    weights = sepnet_rank_weights(dice)
    np.testing.assert_array_equal(weights, [[5, 3], [4, 5], [3, 4]])  # class 1 ranks: member 1, 2, 0
    members = [np.array(m, np.float32).reshape(2, 1, 1, 1) for m in ([0.2, 0.8], [0.6, 0.4], [0.4, 0.6])]
    fused = fuse_probabilities(members, class_weights=weights)[:, 0, 0, 0]
    c0 = (5 * 0.2 + 4 * 0.6 + 3 * 0.4) / 12
    c1 = (3 * 0.8 + 5 * 0.4 + 4 * 0.6) / 12
    np.testing.assert_allclose(fused, np.array([c0, c1]) / (c0 + c1), rtol=1e-6)
    np.testing.assert_allclose(fuse_probabilities(members)[:, 0, 0, 0], [0.4, 0.6], rtol=1e-6)


class _Pointwise(torch.nn.Module):
    """Output depends only on the voxel value: flip-equivariant."""

    def forward(self, x):
        return torch.cat([-x, x, 0.5 * x], dim=1)


class _LeftBiased(torch.nn.Module):
    """Class 1 wins on the left half of every window: not flip-equivariant."""

    def forward(self, x):
        ramp = torch.linspace(-1, 1, x.shape[-1], device=x.device).expand_as(x)
        return torch.cat([ramp, -ramp, torch.zeros_like(x)], dim=1)


def test_tta_flips_are_undone_exactly():
    volume = np.random.default_rng(0).normal(size=(20, 37, 45)).astype(np.float32)
    out = predict_ensemble(volume, [_Pointwise()], tta=True, device="cpu", patch_size_zyx=(16, 32, 32), stride_zyx=(8, 16, 16))
    assert out.members == 4
    assert out.vote_entropy.max() == 0.0
    assert all((out.votes[m] == out.votes[0]).all() for m in range(4))
    biased = predict_ensemble(volume, [_LeftBiased()], tta=True, device="cpu", patch_size_zyx=(20, 37, 45), stride_zyx=(20, 37, 45))
    # With one window covering the volume, x-flipped members vote the mirror image: half disagree.
    assert biased.vote_entropy.max() == pytest.approx(math.log(2), rel=1e-5)
    assert (biased.votes[0][..., :10] == 1).all() and (biased.votes[1][..., :10] == 0).all()


def test_island_removal_keeps_anatomy_and_reports_what_it_removed():
    labels = np.zeros((40, 60, 60), np.uint8)
    labels[5:35, 10:30, 10:30] = 1              # vertebra, 12,000 mm3
    labels[2:5, 50:54, 50:54] = 1                # 48 mm3 bone island, far away
    labels[5:35, 40:44, 20:24] = 2              # dural sac / root tube
    labels[10:14, 47:49, 20:24] = 2             # root fragment 3 mm from the tube: kept
    labels[30:33, 55:58, 50:53] = 2             # nerve island ~ 25 mm away: removed
    cleaned, removed = suppress_islands(labels, (1.0, 1.0, 1.0))
    assert (cleaned[5:35, 10:30, 10:30] == 1).all() and (cleaned[10:14, 47:49, 20:24] == 2).all()
    assert not cleaned[2:5, 50:54, 50:54].any() and not cleaned[30:33, 55:58, 50:53].any()
    by_class = {r.label_value: r for r in removed}
    assert len(removed) == 2
    assert by_class[1].voxels == 48 and by_class[1].volume_mm3 == 48.0
    assert by_class[2].voxels == 27
    np.testing.assert_allclose(by_class[2].centroid_zyx, (31, 56, 51))
    assert by_class[2].distance_mm > 10
    # Anisotropic spacing scales volumes: the 48-voxel bone island is 288 mm3 at 2x1.5x2 mm and stays.
    _, removed_aniso = suppress_islands(labels, (2.0, 1.5, 2.0))
    assert all(r.label_value != 1 for r in removed_aniso)


def test_island_removal_keeps_a_detached_root_segment_but_not_a_small_hot_spot():
    labels = np.zeros((60, 80, 80), np.uint8)
    labels[5:55, 10:18, 10:18] = 2              # dural sac, 3,200 mm3
    labels[20:45, 40:50, 60:70] = 1             # bone 12 mm from the root piece
    labels[20:45, 60:66, 74:80] = 2             # root piece cut off by the FOV (reaches the edge): 900 mm3, 55 mm away
    labels[50:55, 70:75, 20:25] = 2             # hot spot: 125 mm3, 50 mm away
    cleaned, removed = suppress_islands(labels, (1.0, 1.0, 1.0))
    assert (cleaned[20:45, 60:66, 74:80] == 2).all()
    assert not cleaned[50:55, 70:75, 20:25].any()
    assert [r.voxels for r in removed] == [125]
    # The volume floors are parameters: with 1,000 mm3 the root piece goes too, and is reported.
    _, strict = suppress_islands(labels, (1.0, 1.0, 1.0), min_nerve_volume_mm3=1000.0,
                                 min_root_piece_volume_mm3=1000.0)
    assert sorted(r.voxels for r in strict) == [125, 900]
    # Nerves are continuous: the same piece inside the image, or at its edge but 55 mm from any bone,
    # cannot be a root cut off by the field of view, and goes.
    inside = labels.copy()
    inside[20:45, 60:66, 74:80] = 0
    inside[20:45, 60:66, 66:72] = 2
    assert sorted(r.voxels for r in suppress_islands(inside, (1.0, 1.0, 1.0))[1]) == [125, 900]
    no_bone_near = labels.copy()
    no_bone_near[20:45, 40:50, 60:70] = 0
    no_bone_near[5:55, 20:30, 10:20] = 1      # bone beside the sac only
    assert sorted(r.voxels for r in suppress_islands(no_bone_near, (1.0, 1.0, 1.0))[1]) == [125, 900]
    assert sorted(r.voxels for r in suppress_islands(no_bone_near, (1.0, 1.0, 1.0), max_bone_distance_mm=70.0)[1]) == [125]


def test_island_removal_keeps_root_fragments_near_the_sac_or_a_detached_root_piece():
    labels = np.zeros((60, 90, 90), np.uint8)
    labels[5:55, 10:18, 10:18] = 2              # dural sac, 3,200 mm3
    labels[20:45, 45:55, 70:80] = 1             # bone near the detached root piece
    labels[30:33, 26:29, 12:15] = 2             # 27-voxel root fragment 8 mm from the sac: kept
    labels[20:45, 60:66, 84:90] = 2             # root piece cut off by the FOV: 900 mm3, far from the sac
    labels[30:32, 60:62, 75:77] = 2             # its 8-voxel fragment, 8 mm beyond it: kept
    labels[30:33, 45:48, 12:15] = 2             # 27-voxel hot spot 28 mm from the sac, 17 from the fragment
    cleaned, removed = suppress_islands(labels, (1.0, 1.0, 1.0))
    assert (cleaned[30:33, 26:29, 12:15] == 2).all() and (cleaned[30:32, 60:62, 75:77] == 2).all()
    assert not cleaned[30:33, 45:48, 12:15].any()
    assert [(r.voxels, round(r.distance_mm)) for r in removed] == [(27, 17)]  # to the kept anatomy (the kept fragment)
    # The distance is a parameter: at 5 mm both fragments go too, and are reported.
    _, strict = suppress_islands(labels, (1.0, 1.0, 1.0), nerve_max_distance_mm=5.0)
    assert sorted(r.voxels for r in strict) == [8, 27, 27]


def test_island_removal_keeps_a_small_tube_shaped_root_piece_but_not_a_blob_of_the_same_volume():
    labels = np.zeros((60, 120, 120), np.uint8)
    labels[5:55, 10:18, 10:18] = 2              # dural sac
    labels[20:40, 45:55, 90:110] = 1            # bone near the root piece
    labels[30:33, 60:63, 100:120] = 2           # 180 mm3 root piece, 3 x 3 x 20 mm, at the edge: a tube
    labels[30:33, 60:63, 40:60] = 2             # the same tube inside the image, 40 mm from anything: goes
    labels[30:36, 90:96, 90:95] = 2             # 180 mm3 blob, 6 x 6 x 5 mm, far away
    cleaned, removed = suppress_islands(labels, (1.0, 1.0, 1.0))
    assert (cleaned[30:33, 60:63, 100:120] == 2).all()
    assert not cleaned[30:36, 90:96, 90:95].any() and not cleaned[30:33, 60:63, 40:60].any()
    assert sorted(r.voxels for r in removed) == [180, 180]
    # Elongation is a parameter: a 3 x 3 x 20 voxel bar has sqrt(var_x / var_y) = sqrt(33.25 / 0.67) = 7.1.
    _, strict = suppress_islands(labels, (1.0, 1.0, 1.0), min_root_piece_elongation=7.5)
    assert sorted(r.voxels for r in strict) == [180, 180, 180]


def test_review_regions_rank_the_most_uncertain_blob_first():
    u = np.zeros((20, 30, 30), np.float32)
    u[2:6, 2:6, 2:6] = 0.7      # 64 voxels x 0.7
    u[10:12, 20:22, 20:22] = 1.0  # 8 voxels x 1.0
    labels = np.zeros_like(u, dtype=np.uint8)
    labels[2:6, 2:6, 2:6] = 2
    image, lab = sitk.GetImageFromArray(u), sitk.GetImageFromArray(labels)
    image.SetSpacing((0.5, 0.5, 2.0))
    lab.CopyInformation(image)
    regions = uncertain_regions(image, lab, class_names=("background", "bone", "nerve"))
    assert [r.rank for r in regions] == [1, 2]
    assert regions[0].class_name == "nerve" and regions[0].voxels == 64
    assert regions[0].volume_mm3 == pytest.approx(64 * 0.5)
    assert regions[0].centroid_lps_mm == pytest.approx((3.5 * 0.5, 3.5 * 0.5, 3.5 * 2.0))


def test_cli_tta_writes_uncertainty_and_review(tmp_path, tiny_model, synthetic_ct_path, capsys):
    unc, review = tmp_path / "u.nii.gz", tmp_path / "review.csv"
    code = main(["segment", str(synthetic_ct_path), str(tmp_path / "l.nii.gz"), "--model", str(tiny_model),
                 "--tta", "--uncertainty", str(unc), "--review", str(review)])
    assert code == 0
    ct = sitk.ReadImage(str(synthetic_ct_path))
    u = sitk.ReadImage(str(unc))
    assert u.GetSize() == ct.GetSize()
    assert sitk.GetArrayFromImage(u).max() <= math.log(3) + 1e-5
    assert review.read_text(encoding="utf-8").startswith("rank,")
    assert "ensemble members" in capsys.readouterr().err


def test_cli_uncertainty_without_ensemble_is_refused(tmp_path, tiny_model, synthetic_ct_path, capsys):
    code = main(["segment", str(synthetic_ct_path), str(tmp_path / "l.nii.gz"), "--model", str(tiny_model),
                 "--uncertainty", str(tmp_path / "u.nii.gz")])
    assert code != 0
    assert "--tta" in capsys.readouterr().err
    assert not (tmp_path / "l.nii.gz").exists() and not (tmp_path / "u.nii.gz").exists()


def test_a_root_piece_that_reaches_the_edge_only_through_a_fragment_is_kept():
    # A root cut off by the field of view, predicted as a dotted line: the large piece stops 8 mm short
    # of the edge, a small fragment of it touches the edge.
    labels = np.zeros((60, 80, 80), np.uint8)
    labels[5:55, 10:18, 10:18] = 2              # dural sac
    labels[20:45, 40:50, 50:60] = 1             # bone near the root
    labels[20:45, 60:66, 64:70] = 2             # 900 mm3 root piece, 10 voxels from the edge
    labels[30:33, 60:63, 76:80] = 2             # 36-voxel fragment 6 mm beyond it, at the edge
    labels[50:55, 70:75, 20:25] = 2             # hot spot
    cleaned, removed = suppress_islands(labels, (1.0, 1.0, 1.0))
    assert (cleaned[20:45, 60:66, 64:70] == 2).all() and (cleaned[30:33, 60:63, 76:80] == 2).all()
    assert [r.voxels for r in removed] == [125]
    # Without the fragment the piece is inside the image, joined to nothing: it goes.
    labels[30:33, 60:63, 76:80] = 0
    assert sorted(r.voxels for r in suppress_islands(labels, (1.0, 1.0, 1.0))[1]) == [125, 900]
