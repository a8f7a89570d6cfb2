"""Labels back on the CT's grid by interpolated probabilities (nnU-Net's way), not the nearest 1 mm label.

Truth: an analytic sphere whose probability profile is known, the exact labels of
``predict_labels`` and the probabilities of ``predict_probabilities`` (quantised), and the rules
(air, islands) already applied on the network's grid.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from spinect.errors import SpinectError
from spinect.inference import predict_labels, predict_labels_and_probabilities, predict_probabilities, quantise_probabilities
from spinect.pipeline import InferenceSettings, labels_to_input_grid, probabilities_to_input_grid

from test_memory import PATCH, STRIDE, _network, _two_bodies


def _sphere_case(radius_mm=6.3, shape=(20, 30, 30)):
    """Probabilities of a sphere (logistic profile, 1/3 mm wide) on a 1 mm grid, and its labels."""
    z, y, x = np.indices(shape)
    r = np.sqrt((z - 10) ** 2 + (y - 15) ** 2 + (x - 15) ** 2)
    bone = 1.0 / (1.0 + np.exp((r - radius_mm) * 3.0))
    probs = quantise_probabilities(torch.from_numpy(np.stack([1.0 - bone, bone, np.zeros_like(bone)])))
    labels = (bone > 0.5).astype(np.uint8)
    network_grid = sitk.GetImageFromArray(labels)
    return probs, labels, network_grid


def _ct_grid(spacing=(0.7, 0.7, 1.0), size=(43, 43, 20), origin=(-0.15, -0.15, 0.0)):
    ct = sitk.Image(size, sitk.sitkInt16)
    ct.SetSpacing(spacing)
    ct.SetOrigin(origin)
    return ct


def _truth_on(ct: sitk.Image, radius_mm=6.3) -> np.ndarray:
    zz, yy, xx = np.indices(tuple(reversed(ct.GetSize())))
    sx, sy, sz = ct.GetSpacing()
    ox, oy, oz = ct.GetOrigin()
    r = np.sqrt((oz + sz * zz - 10) ** 2 + (oy + sy * yy - 15) ** 2 + (ox + sx * xx - 15) ** 2)
    return r < radius_mm


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 1.0), (1.5, 1.5, 1.5), (0.8, 0.8, 2.5)])
def test_interpolated_probabilities_find_the_sphere_better_than_the_nearest_label(spacing):
    probs, labels, network_grid = _sphere_case()
    size = tuple(int(round(30 / s)) if i < 2 else int(round(20 / s)) for i, s in enumerate(spacing))
    ct = _ct_grid(spacing=spacing, size=size)
    truth = _truth_on(ct)
    by_probability = sitk.GetArrayFromImage(probabilities_to_input_grid(probs, labels, network_grid, ct)) == 1
    by_nearest = sitk.GetArrayFromImage(labels_to_input_grid(labels, network_grid, ct)) == 1
    assert _dice(by_probability, truth) > _dice(by_nearest, truth)
    assert _dice(by_probability, truth) > 0.98


def test_on_the_network_grid_itself_the_labels_come_back_unchanged_and_rules_stay_applied():
    probs, labels, network_grid = _sphere_case()
    same = sitk.GetArrayFromImage(probabilities_to_input_grid(probs, labels, network_grid, network_grid))
    np.testing.assert_array_equal(same, labels)
    ruled = labels.copy()
    ruled[:, :15, :] = 0  # e.g. an island removed: half the sphere is background after the rules
    back = sitk.GetArrayFromImage(probabilities_to_input_grid(probs, ruled, network_grid, _ct_grid()))
    ct = _ct_grid()
    cut = np.asarray([ct.TransformIndexToPhysicalPoint((0, j, 0))[1] for j in range(ct.GetSize()[1])])
    assert not back[:, cut < 14.0, :].any()  # nothing comes back where the rules cleared the 1 mm voxels
    assert back[:, cut > 16.0, :].any()


def test_a_level_models_classes_are_summed_into_bone_and_nerve():
    probs, labels, network_grid = _sphere_case()
    half = (probs[1] // 2).astype(np.uint8)
    split = np.stack([probs[0], half, probs[1] - half, probs[2]])  # bone spread over two level classes
    lookup = np.array([0, 1, 1, 2], np.uint8)
    ct = _ct_grid()
    grouped = probabilities_to_input_grid(split, labels, network_grid, ct, class_lookup=lookup)
    direct = probabilities_to_input_grid(probs, labels, network_grid, ct)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(grouped), sitk.GetArrayFromImage(direct))


@pytest.mark.parametrize("case", ["skip air", "whole volume"])
def test_labels_and_probabilities_are_those_of_the_two_separate_calls(case):
    volume = _two_bodies()
    options = dict(patch_size_zyx=PATCH, stride_zyx=STRIDE, blend="gaussian", device="cpu", amp=False, batch_size=3,
                   cpu_workers=1)
    if case == "skip air":
        options.update(skip_below=-2.0)
    network = _network()
    labels, probabilities = predict_labels_and_probabilities(volume, network, **options)
    np.testing.assert_array_equal(labels, predict_labels(volume, network, **options))
    expected = quantise_probabilities(predict_probabilities(volume, network, **options))
    assert probabilities.dtype == np.uint8 and probabilities.shape == expected.shape
    np.testing.assert_array_equal(probabilities, expected)


def test_pipeline_setting_is_checked_and_recorded(tiny_model):
    from spinect.model_file import load_model
    from spinect.pipeline import segment_image

    from conftest import make_synthetic_ct

    network, plan = load_model(tiny_model)
    ct = make_synthetic_ct()
    settings = InferenceSettings.from_plan(plan)
    assert settings.resample_back == "probabilities" and settings.record(plan)["resample_back"] == "probabilities"
    nearest = segment_image(ct, network, plan, resample_back="nearest").labels
    default = segment_image(ct, network, plan).labels
    assert nearest.GetSize() == default.GetSize() == ct.GetSize()
    with pytest.raises(SpinectError, match="resample_back must be one of probabilities, nearest"):
        segment_image(ct, network, plan, resample_back="cubic")


def test_a_level_model_goes_back_by_the_nearest_label_and_says_so():
    from spinect.plan import LEVEL_CLASS_GROUPS, LEVEL_CLASS_NAMES, ModelPlan

    plan = ModelPlan(architecture={}, class_names=LEVEL_CLASS_NAMES, class_groups=LEVEL_CLASS_GROUPS)
    assert InferenceSettings.from_plan(plan).record(plan)["resample_back"] == "nearest"


def test_probabilities_with_fewer_channels_than_labels_still_give_the_labels():
    probs, labels, network_grid = _sphere_case()
    back = probabilities_to_input_grid(probs[:2], labels, network_grid, network_grid)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)
