"""Sliding-window inference: window layout, stitching against whole-volume evaluation, devices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data.utils import dense_patch_slices
from torch import nn

from spinect.errors import InputError, SpinectError
from spinect.inference import (
    autocast_dtype,
    count_windows,
    monai_overlap,
    predict_labels,
    predict_probabilities,
    resolve_device,
)
from spinect.nets import build_network

PATCH = (16, 32, 32)
STRIDE = (10, 20, 20)


def _window_starts(n: int, p: int, s: int) -> list[int]:
    """Reference layout: starts 0, s, 2s, ... until a window reaches the end, last one pulled back to n - p."""
    if n <= p:
        return [0]
    starts, start = [], 0
    while True:
        starts.append(min(start, n - p))
        if start + p >= n:
            return starts
        start += s


def _pointwise_network(num_classes: int = 3) -> nn.Module:
    """Output at a voxel depends only on that voxel's value: stitching must reproduce it exactly."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv3d(1, 8, 1), nn.Tanh(), nn.Conv3d(8, num_classes, 1))
    for layer in network:
        if isinstance(layer, nn.Conv3d):
            nn.init.normal_(layer.weight, std=2.0)
            nn.init.normal_(layer.bias)
    return network


class _WindowPositionNetwork(nn.Module):
    """Ignores intensities; logits are the voxel's position inside its window (z, y, 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, z, y, w = x.shape
        zz = torch.arange(z, dtype=x.dtype).view(1, z, 1, 1).expand(n, z, y, w) / z
        yy = torch.arange(y, dtype=x.dtype).view(1, 1, y, 1).expand(n, z, y, w) / y
        return torch.stack([zz, yy, torch.zeros_like(zz)], dim=1) * 3.0


def _whole_volume_softmax(network: nn.Module, volume: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return torch.softmax(network(torch.from_numpy(volume)[None, None]), dim=1)[0]


@pytest.mark.parametrize(
    ("shape", "patch", "stride"),
    [
        ((33, 50, 61), PATCH, STRIDE),
        ((100, 200, 300), (32, 64, 64), (20, 40, 40)),
        ((20, 30, 50), (32, 64, 64), (20, 40, 40)),
        ((32, 64, 64), (32, 64, 64), (20, 40, 40)),
        ((33, 65, 200), (32, 64, 64), (32, 64, 7)),
    ],
)
def test_count_windows_matches_reference_and_monai(shape, patch, stride):
    expected = math.prod(len(_window_starts(n, p, s)) for n, p, s in zip(shape, patch, stride))
    assert count_windows(shape, patch, stride) == expected
    padded = tuple(max(n, p) for n, p in zip(shape, patch))
    # MONAI steps by patch where the (padded) axis equals the patch, else by int(patch * (1 - overlap)).
    intervals = [p if n == p else int(p * (1 - o)) for n, p, o in zip(padded, patch, monai_overlap(patch, stride))]
    assert len(dense_patch_slices(padded, patch, intervals)) == expected


def test_monai_overlap_gives_exact_stride_for_every_pair():
    assert monai_overlap((32, 64, 64), (32, 64, 64)) == (0.0, 0.0, 0.0)
    for p in range(1, 129):
        for s in range(1, p + 1):
            (o, _, _) = monai_overlap((p, p, p), (s, s, s))
            assert 0.0 <= o < 1.0  # MONAI's accepted range
            assert int(p * (1 - o)) == s  # MONAI's documented step


@pytest.mark.parametrize("blend", ["sum", "gaussian"])
@pytest.mark.parametrize(
    ("shape", "patch", "stride"),
    [((33, 50, 61), PATCH, STRIDE), ((20, 30, 50), (32, 64, 64), (20, 40, 40))],  # edge windows; smaller than a patch
)
def test_stitching_equals_whole_volume_for_pointwise_network(blend, shape, patch, stride):
    rng = np.random.default_rng(1)
    volume = rng.normal(size=shape).astype(np.float32)
    network = _pointwise_network()
    # float32: this checks the stitching arithmetic, not the precision (CPUs with native bfloat16 default to it).
    scores = predict_probabilities(volume, network, patch_size_zyx=patch, stride_zyx=stride, blend=blend, device="cpu",
                                   amp=False)
    reference = _whole_volume_softmax(network, volume)
    assert scores.shape == (3, *shape) and scores.dtype == torch.float32 and scores.device.type == "cpu"
    torch.testing.assert_close(scores, reference, rtol=1e-5, atol=1e-6)
    labels = predict_labels(volume, network, patch_size_zyx=patch, stride_zyx=stride, blend=blend, device="cpu",
                            amp=False)
    assert labels.dtype == np.uint8 and labels.shape == shape
    np.testing.assert_array_equal(labels, torch.argmax(reference, dim=0).numpy())


def test_sum_blend_is_mean_of_window_probabilities_at_exact_positions():
    shape = (37, 50, 41)  # not multiples of the stride: last windows are pulled back
    volume = np.zeros(shape, dtype=np.float32)
    network = _WindowPositionNetwork()
    scores = predict_probabilities(volume, network, patch_size_zyx=PATCH, stride_zyx=STRIDE, device="cpu", batch_size=3)
    with torch.inference_mode():
        window_probabilities = torch.softmax(network(torch.zeros(1, 1, *PATCH)), dim=1)[0]
    total = torch.zeros(3, *shape, dtype=torch.float64)
    coverage = torch.zeros(shape, dtype=torch.float64)
    starts = [_window_starts(n, p, s) for n, p, s in zip(shape, PATCH, STRIDE)]
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                region = (slice(z, z + PATCH[0]), slice(y, y + PATCH[1]), slice(x, x + PATCH[2]))
                total[(slice(None), *region)] += window_probabilities.double()
                coverage[region] += 1
    assert coverage.min() >= 1  # every voxel is covered by some window
    torch.testing.assert_close(scores.double(), total / coverage, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(torch.argmax(scores, 0).numpy(), torch.argmax(total, 0).numpy())


def test_every_voxel_gets_probabilities_summing_to_one():
    shape = (23, 47, 61)
    volume = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    for blend in ("sum", "gaussian"):
        scores = predict_probabilities(
            volume, _WindowPositionNetwork(), patch_size_zyx=PATCH, stride_zyx=STRIDE, blend=blend, device="cpu"
        )
        assert torch.isfinite(scores).all()  # an uncovered voxel would be 0 / 0
        torch.testing.assert_close(scores.sum(dim=0), torch.ones(shape), rtol=0, atol=1e-5)


def test_progress_counts_every_window_once():
    shape = (33, 50, 61)
    calls: list[tuple[int, int]] = []
    predict_probabilities(
        np.zeros(shape, np.float32), _pointwise_network(), patch_size_zyx=PATCH, stride_zyx=STRIDE,
        batch_size=4, device="cpu", progress=lambda done, total: calls.append((done, total)),
    )
    total = count_windows(shape, PATCH, STRIDE)
    assert len(calls) == math.ceil(total / 4)
    assert all(t == total for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == total


def test_spinect_geometry_with_small_unet_and_restored_mode():
    network = build_network(base_width=2)
    network.train()
    volume = np.random.default_rng(3).normal(size=(52, 104, 90)).astype(np.float32)
    windows: list[int] = []
    scores = predict_probabilities(volume, network, device="cpu", progress=lambda d, t: windows.append(t))
    assert network.training  # the caller's mode is restored
    assert scores.shape == (3, 52, 104, 90)
    # ceil((n - p) / s) + 1 = 2 windows on each axis.
    assert windows[-1] == count_windows(volume.shape, (32, 64, 64), (20, 40, 40)) == 2 * 2 * 2
    torch.testing.assert_close(scores.sum(dim=0), torch.ones(volume.shape), rtol=0, atol=1e-5)


def test_channels_last_network_and_tensor_input():
    volume = torch.randn(20, 24, 30)
    network = build_network(base_width=2, levels=3).eval()
    options = {"patch_size_zyx": (8, 16, 16), "stride_zyx": (6, 12, 12), "device": "cpu"}
    reference = predict_probabilities(volume, network, **options)
    network = network.to(memory_format=torch.channels_last_3d)
    result = predict_probabilities(volume, network, **options)
    torch.testing.assert_close(result, reference, rtol=1e-4, atol=1e-5)


def test_bfloat16_autocast_on_cpu_stays_close():
    volume = np.random.default_rng(4).normal(size=(20, 30, 50)).astype(np.float32)
    network = _pointwise_network()
    scores = predict_probabilities(
        volume, network, patch_size_zyx=PATCH, stride_zyx=STRIDE, device="cpu", amp=True
    )
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, _whole_volume_softmax(network, volume), rtol=0, atol=0.05)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"blend": "gauss"}, SpinectError),
        ({"stride_zyx": (20, 80, 40)}, SpinectError),
        ({"stride_zyx": (0, 40, 40)}, SpinectError),
        ({"patch_size_zyx": (32, 64)}, SpinectError),
        ({"batch_size": 0}, SpinectError),
        ({"device": "tpu"}, SpinectError),
    ],
)
def test_bad_options_raise(kwargs, error):
    with pytest.raises(error):
        predict_probabilities(np.zeros((8, 8, 8), np.float32), _pointwise_network(), **kwargs)


@pytest.mark.parametrize(
    "volume", [np.zeros((8, 8), np.float32), np.zeros((0, 8, 8), np.float32), np.full((4, 4, 4), np.nan, np.float32)]
)
def test_bad_volumes_raise_input_error(volume):
    with pytest.raises(InputError):
        predict_probabilities(volume, _pointwise_network(), device="cpu")


def test_blend_typo_suggests_the_right_name():
    with pytest.raises(SpinectError, match="did you mean 'gaussian'"):
        predict_probabilities(np.zeros((8, 8, 8), np.float32), _pointwise_network(), blend="gausian")


def test_resolve_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(SpinectError, match="--device cpu"):
            resolve_device(name)
    with pytest.raises(SpinectError, match="unknown device"):
        resolve_device("gpu0")


def test_autocast_dtype_rules(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("SPINECT_CPU_BF16", "0")  # a CPU without native bfloat16: float32 by default
    assert autocast_dtype(cpu, None) is None
    assert autocast_dtype(cpu, False) is None
    assert autocast_dtype(cpu, True) == torch.bfloat16
    monkeypatch.setenv("SPINECT_CPU_BF16", "1")  # native bfloat16 (AVX512-BF16, AMX): bfloat16 by default
    assert autocast_dtype(cpu, None) == torch.bfloat16
    assert autocast_dtype(cpu, False) is None


class _AsymmetricNetwork(nn.Module):
    """Logits depend on the voxel's x position in its window and its value: mirroring changes them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, z, y, w = x.shape
        xx = torch.arange(w, dtype=x.dtype).view(1, 1, 1, w).expand(n, z, y, w) / w
        v = x[:, 0]
        return torch.stack([v, 2.0 * xx, xx * v + 0.5 * torch.roll(v, 1, dims=3)], dim=1)


@pytest.mark.parametrize("axes", [(2,), (1, 2)])
def test_mirroring_is_the_mean_of_the_flipped_volumes_predictions(axes):
    # Window grid symmetric under the flips (n = p + k * s along y and x): mirroring each window equals
    # predicting the flipped volume, flipping the result back and averaging over all flip combinations.
    volume = np.random.default_rng(3).normal(size=(16, 52, 52)).astype(np.float32)
    net, options = _AsymmetricNetwork(), dict(patch_size_zyx=PATCH, stride_zyx=STRIDE, device="cpu")
    got = predict_probabilities(volume, net, mirror_axes_zyx=axes, **options)
    combos = [()] + [tuple(a for bit, a in enumerate(axes) if m >> bit & 1) for m in range(1, 2 ** len(axes))]
    reference = torch.zeros_like(got)
    for flip in combos:
        flipped = np.ascontiguousarray(np.flip(volume, flip)) if flip else volume
        probabilities = predict_probabilities(flipped, net, **options)
        reference += torch.flip(probabilities, [a + 1 for a in flip]) if flip else probabilities
    reference /= len(combos)
    torch.testing.assert_close(got, reference, atol=2e-6, rtol=1e-5)
    plain = predict_probabilities(volume, net, **options)
    assert float((got - plain).abs().max()) > 0.05  # the network is asymmetric: mirroring changed the result
    labels = predict_labels(volume, net, mirror_axes_zyx=axes, **options)
    np.testing.assert_array_equal(labels, got.argmax(0).numpy())


def test_mirror_axes_are_checked():
    from spinect.inference import mirror_flip_dims

    assert mirror_flip_dims((2,)) == ((4,),)
    assert mirror_flip_dims((2, 1)) == ((3,), (4,), (3, 4))
    for bad in [(3,), (2, 2), (-1,)]:
        with pytest.raises(SpinectError, match="mirror axes"):
            mirror_flip_dims(bad)


def test_mirror_auto_is_left_right_on_a_gpu_and_off_on_the_cpu():
    from spinect.pipeline import InferenceSettings
    from spinect.plan import ModelPlan

    settings = InferenceSettings.from_plan(ModelPlan(architecture={}), mirror="auto")
    assert settings.mirror_axes_zyx(torch.device("cpu")) == ()
    assert settings.mirror_axes_zyx(torch.device("cuda")) == (2,)
    assert InferenceSettings.from_plan(ModelPlan(architecture={}), mirror="lr-ap").mirror_axes_zyx("cpu") == (1, 2)
    assert InferenceSettings.from_plan(ModelPlan(architecture={}), mirror="lr", tta=True).mirror_axes_zyx("cpu") == ()  # TTA flips it
    with pytest.raises(SpinectError, match="mirror must be one of"):
        InferenceSettings.from_plan(ModelPlan(architecture={}), mirror="sideways").mirror_axes_zyx("cpu")
