"""Issue 17, memory: the lean code paths give the same labels bit for bit as the ones they replace.

* :func:`spinect.inference.predict_labels` blends the windows slab by slab along z and keeps only
  uint8 labels; it must equal ``argmax_labels(predict_probabilities(...))`` exactly, with skipped
  windows inside and around the run box, z-rows with no window to run, padding, both blends,
  worker threads and batches.
* :func:`spinect.pipeline.segment_image` on an int16 CT (kept as read, resampled straight to
  float32) equals the same CT cast to float32 first, as ``read_ct`` did.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from spinect.inference import argmax_labels, predict_labels, predict_probabilities
from spinect.nets import build_network

PATCH = (16, 32, 32)
STRIDE = (10, 20, 20)


def _network(seed: int = 0) -> nn.Module:
    """Spatial 3x3x3 convolutions with random weights: scores depend on the window's position and neighbours."""
    torch.manual_seed(seed)
    network = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.Tanh(), nn.Conv3d(6, 3, 3, padding=1))
    for layer in network:
        if isinstance(layer, nn.Conv3d):
            nn.init.normal_(layer.weight, std=0.8)
            nn.init.normal_(layer.bias, std=0.5)
    network.num_classes = 3
    return network


def _two_bodies(shape=(90, 50, 61), seed: int = 3) -> np.ndarray:
    """Air (-3) with two dense blobs far apart along z: the windows between them are skipped."""
    rng = np.random.default_rng(seed)
    volume = np.full(shape, -3.0, np.float32) + rng.normal(scale=0.05, size=shape).astype(np.float32)
    z, y, x = shape
    for box in ((slice(4, 18), slice(y // 5, 3 * y // 5), slice(x // 4, 2 * x // 3)),
                (slice(z - 20, z - 6), slice(2 * y // 5, 7 * y // 8), slice(x // 2, 19 * x // 20))):
        volume[box] = rng.normal(1.0, 1.0, size=volume[box].shape)
    return volume


@pytest.mark.parametrize("blend", ["sum", "gaussian"])
@pytest.mark.parametrize("case", ["skip air", "roi", "whole volume", "padded", "workers", "one window"])
def test_predict_labels_equals_argmax_of_probabilities(blend, case):
    volume = _two_bodies()
    options = dict(patch_size_zyx=PATCH, stride_zyx=STRIDE, blend=blend, device="cpu", amp=False, batch_size=3,
                   cpu_workers=1)
    if case == "skip air":
        options.update(skip_below=-2.0)
    elif case == "roi":
        options.update(skip_below=-2.0, roi_above=2.0, roi_margin_zyx=(3, 5, 5))
    elif case == "padded":  # axes shorter than the patch are padded and cropped back
        volume = volume[:12, :25, :]
        options.update(skip_below=-2.0)
    elif case == "workers":
        options.update(skip_below=-2.0, cpu_workers=2, batch_size=2)
    elif case == "one window":
        volume = volume[:16, :32, :32]
    network = _network()
    expected = argmax_labels(predict_probabilities(volume, network, **options))
    labels = predict_labels(volume, network, **options)
    assert labels.dtype == np.uint8 and labels.shape == volume.shape
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(expected)) >= 2  # the test sees more than background


def test_predict_labels_equals_argmax_with_the_unet_in_the_cpus_precision():
    """The compact U-Net in the precision the CPU picks (bfloat16 where native, else float32): same windows."""
    network = build_network(base_width=4, levels=3, num_classes=3)
    torch.manual_seed(1)
    for parameter in network.parameters():
        parameter.data.normal_(0.0, 0.3)
    volume = _two_bodies(shape=(70, 40, 70))
    options = dict(patch_size_zyx=PATCH, stride_zyx=STRIDE, device="cpu", amp=None, skip_below=-2.0)
    expected = argmax_labels(predict_probabilities(volume, network, **options))
    np.testing.assert_array_equal(predict_labels(volume, network, **options), expected)


def test_predict_labels_times_argmax_and_counts_windows():
    from spinect.profiling import StageTimer

    timer = StageTimer()
    predict_labels(_two_bodies(), _network(), patch_size_zyx=PATCH, stride_zyx=STRIDE, device="cpu", amp=False,
                   skip_below=-2.0, timer=timer)
    assert {"windows", "network", "stitching", "argmax"} <= set(timer.seconds)
    assert timer.counts["windows skipped"] > 0 and timer.counts["windows run"] > 0


def test_predict_labels_refuses_nan_scores():
    from spinect.errors import ModelError

    class NaNNetwork(nn.Module):
        num_classes = 3

        def forward(self, x):
            return torch.full((x.shape[0], 3, *x.shape[2:]), float("nan"))

    with pytest.raises(ModelError, match="NaN"):
        predict_labels(np.zeros((32, 64, 64), np.float32), NaNNetwork(), device="cpu")


def _hu_ct(pixel_type) -> sitk.Image:
    rng = np.random.default_rng(5)
    hu = np.full((40, 48, 56), -1000, np.int16)
    hu[5:35, 8:40, 8:48] = rng.integers(-100, 100, size=(30, 32, 40))
    hu[10:30, 18:30, 20:36] = rng.integers(200, 1500, size=(20, 12, 16))
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.7, 0.8, 1.3))
    image.SetOrigin((-12.5, 30.25, 7.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return image if pixel_type == sitk.sitkInt16 else sitk.Cast(image, pixel_type)


def test_segment_image_on_int16_ct_equals_float32_ct():
    from spinect.pipeline import InferenceSettings, segment_image
    from spinect.plan import ModelPlan

    plan = ModelPlan(architecture={}, patch_size_zyx=PATCH, stride_zyx=STRIDE, intensity_std=500.0)
    network = _network(seed=2)
    settings = InferenceSettings.from_plan(plan, smoothing_mm=2.0, precision="fp32")
    ints = segment_image(_hu_ct(sitk.sitkInt16), network, plan, settings)
    floats = segment_image(_hu_ct(sitk.sitkFloat32), network, plan, settings)
    a, b = sitk.GetArrayFromImage(ints.labels), sitk.GetArrayFromImage(floats.labels)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) >= 2
    assert ints.labels.GetSpacing() == floats.labels.GetSpacing() == (0.7, 0.8, 1.3)
    assert ints.labels.GetDirection() == floats.labels.GetDirection()
    assert [r.voxels for r in ints.removed_islands] == [r.voxels for r in floats.removed_islands]


@pytest.mark.parametrize("chunk", [1, 37, 4096])
def test_island_surfaces_marked_in_chunks_give_the_same_labels_and_removal_lists(monkeypatch, chunk):
    """:meth:`_Components.surface` marks its positions a bounded number at a time; any chunk gives the same result."""
    import sys
    from pathlib import Path

    import spinect.postprocess.islands as islands

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_islands import many_island_map

    labels = many_island_map(120, shape=(50, 90, 100), seed=7)
    expected, expected_removed = islands.suppress_islands(labels, (1.0, 0.7, 0.7))
    monkeypatch.setattr(islands, "_SURFACE_CHUNK", chunk)
    cleaned, removed = islands.suppress_islands(labels, (1.0, 0.7, 0.7))
    np.testing.assert_array_equal(cleaned, expected)
    assert removed == expected_removed and len(removed) > 20


@pytest.mark.parametrize("block", [8, 50, 1 << 24])
def test_runs_found_a_block_of_rows_at_a_time_are_the_same(monkeypatch, block):
    """:func:`spinect.postprocess.runs.label_runs` finds runs a block of whole rows at a time; any block size gives
    the same runs and components."""
    import spinect.postprocess.runs as runs_module

    rng = np.random.default_rng(11)
    labels = (rng.random((23, 19, 37)) < 0.3).astype(np.uint8) * rng.integers(1, 3, size=(23, 19, 37)).astype(np.uint8)
    expected = runs_module.label_runs(labels)
    monkeypatch.setattr(runs_module, "_RUN_BLOCK_VOXELS", block)
    found = runs_module.label_runs(labels)
    for name in ("start", "length", "value", "component", "count"):
        np.testing.assert_array_equal(getattr(found, name), getattr(expected, name))
        assert getattr(found, name).dtype == getattr(expected, name).dtype


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (0.5, 0.7, 0.3), (0.25, 1.0, 0.5)])
@pytest.mark.parametrize("block", [1, 700, 5000])
def test_median_smoothing_a_block_of_slices_at_a_time_gives_the_same_labels(monkeypatch, spacing, block):
    """:func:`spinect.postprocess.median_smooth_labels` smooths blocks of z-slices with the kernel's reach around
    them; any block size gives the labels of one pass (kernels reaching 0, 1 and 3 slices in z)."""
    import spinect.postprocess.smoothing as smoothing

    rng = np.random.default_rng(13)
    labels = np.zeros((31, 24, 29), np.uint8)
    labels[3:27, 4:20, 5:25] = rng.integers(0, 3, size=(24, 16, 20))
    labels[0:6, 0:5, 0:7] = 1  # at the volume's edges: replicated there only
    labels[-4:, -6:, -3:] = 2
    expected = smoothing.median_smooth_labels(labels, spacing, kernel_mm=1.5)
    monkeypatch.setattr(smoothing, "_SMOOTH_BLOCK_VOXELS", block)
    smoothed = smoothing.median_smooth_labels(labels, spacing, kernel_mm=1.5)
    np.testing.assert_array_equal(smoothed, expected)
    assert (expected != labels).any() and len(np.unique(expected)) == 3
