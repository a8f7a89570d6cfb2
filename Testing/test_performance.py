"""Speed features that must not change results: air-window skipping, OOM halving and CPU fallback,
the fast argmax, the island-removal crop, and a smoke run of the pipeline benchmark."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spinect.errors import SpinectError
from spinect.inference import (
    DeviceOutOfMemory,
    argmax_labels,
    is_out_of_memory,
    predict_probabilities,
    run_with_cpu_fallback,
)
from spinect.inference import sliding_window
from spinect.profiling import StageTimer

REPO = Path(__file__).resolve().parents[1]
PATCH = (16, 32, 32)
STRIDE = (10, 20, 20)
# Windows small enough (96 mm on the 6 mm phantom grid) that some see only air.
PHANTOM_PATCH = (16, 16, 16)
PHANTOM_STRIDE = (12, 12, 12)
MEAN_HU, STD_HU = 145.0, 473.0


class _AirAwareNetwork(nn.Module):
    """Tiny model with spatial context whose logits favour background in air, bone in dense tissue.

    A random 3x3x3 convolution (context, edge effects at window borders) plus an intensity term,
    so that, like a trained model, it calls air background.
    """

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.context = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))
        for layer in self.context:
            if isinstance(layer, nn.Conv3d):
                nn.init.normal_(layer.weight, std=0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intensity = torch.cat([-4.0 * x, 4.0 * x - 2.0, 2.0 * x - 3.0], dim=1)
        return self.context(x) + intensity


def _phantom_volume() -> np.ndarray:
    """Normalised CT of a small phantom case on a coarse grid: body in the middle, air around it."""
    from spinect.phantom import generate_case
    import SimpleITK as sitk

    case = generate_case(3, shape_zyx=(40, 80, 80), spacing_zyx_mm=(6.0, 6.0, 6.0))
    hu = sitk.GetArrayFromImage(case.ct).astype(np.float32)
    assert (hu < -500).mean() > 0.3, "the phantom should leave air around the body"
    return (np.clip(hu, -1000, 2000) - MEAN_HU) / STD_HU


def _air_level() -> float:
    return (-500.0 - MEAN_HU) / STD_HU


def test_air_window_skipping_keeps_the_argmax_on_a_phantom():
    volume = _phantom_volume()
    network = _AirAwareNetwork()
    options = dict(patch_size_zyx=PHANTOM_PATCH, stride_zyx=PHANTOM_STRIDE, device="cpu", amp=False, batch_size=16)
    reference = predict_probabilities(volume, network, **options)
    timer = StageTimer()
    skipped = predict_probabilities(volume, network, skip_below=_air_level(), timer=timer, **options)
    assert timer.counts["windows skipped"] > 0 and timer.counts["windows run"] > 0
    assert timer.counts["windows skipped"] + timer.counts["windows run"] == sliding_window.count_windows(
        volume.shape, PHANTOM_PATCH, PHANTOM_STRIDE
    )
    assert {"windows", "network", "stitching"} <= set(timer.seconds)
    np.testing.assert_array_equal(argmax_labels(skipped), argmax_labels(reference))
    # Skipped windows are air, where the network is sure of background anyway.
    torch.testing.assert_close(skipped, reference, rtol=0, atol=1e-3)
    # A wide margin only keeps more windows, and the result stays the same.
    margin_timer = StageTimer()
    wide = predict_probabilities(volume, network, skip_below=_air_level(), skip_margin_zyx=(4, 4, 4),
                                 timer=margin_timer, **options)
    assert margin_timer.counts["windows skipped"] < timer.counts["windows skipped"]
    np.testing.assert_array_equal(argmax_labels(wide), argmax_labels(reference))


def test_bone_roi_skipping_keeps_every_voxel_near_bone_exactly():
    # Soft tissue everywhere (no air to skip), one bone block in a corner.
    volume = np.full((60, 120, 120), (40.0 - MEAN_HU) / STD_HU, np.float32)
    volume[5:15, 10:25, 10:25] = (700.0 - MEAN_HU) / STD_HU
    bone_level = (150.0 - MEAN_HU) / STD_HU
    network = _AirAwareNetwork()
    options = dict(patch_size_zyx=PATCH, stride_zyx=STRIDE, device="cpu", amp=False, batch_size=8,
                   skip_below=_air_level())
    reference = predict_probabilities(volume, network, **options)
    margin = 12
    timer = StageTimer()
    roi = predict_probabilities(volume, network, roi_above=bone_level, roi_margin_zyx=(margin,) * 3, timer=timer,
                                **options)
    assert timer.counts["windows skipped"] > 0 and timer.counts["windows run"] > 0
    # Within the margin of bone (box distance) every covering window ran: identical scores.
    near = np.zeros(volume.shape, bool)
    near[max(5 - margin, 0):15 + margin, max(10 - margin, 0):25 + margin, max(10 - margin, 0):25 + margin] = True
    torch.testing.assert_close(roi[:, near], reference[:, near], rtol=0, atol=0)
    # Far from bone: background only.
    far = np.ones(volume.shape, bool)
    far[:15 + margin + PATCH[0], :25 + margin + PATCH[1], :25 + margin + PATCH[2]] = False
    assert far.any() and bool((roi[0][far] == 1).all())
    # The reference calls the same soft tissue background: the ROI removed no finding there.
    assert (argmax_labels(reference)[far] == 0).all()
    with pytest.raises(SpinectError, match="roi_above needs skip_below"):
        predict_probabilities(volume, network, patch_size_zyx=PATCH, stride_zyx=STRIDE, device="cpu",
                              roi_above=bone_level)


def test_pipeline_bone_roi_gives_the_whole_volume_labels_on_a_phantom():
    import SimpleITK as sitk

    from spinect.phantom import generate_case
    from spinect.pipeline import segment_image
    from spinect.plan import ModelPlan

    # v1 appearance: the distance-to-150-HU bound below was set on its bright bone (the ct mode's
    # dim bone moves the ROI edge, and this toy network's far-field calls with it)
    case = generate_case(5, shape_zyx=(48, 160, 160), spacing_zyx_mm=(2.0, 2.0, 2.0), appearance="v1")
    # A coarse 4 mm network grid keeps this fast: windows of 32 x 64 x 64 mm as in SPINECT.
    plan = ModelPlan(architecture={}, spacing_zyx_mm=(4.0, 4.0, 4.0), intensity_mean=MEAN_HU, intensity_std=STD_HU,
                     patch_size_zyx=(8, 16, 16), stride_zyx=(5, 10, 10), training_status="trained")
    network = _AirAwareNetwork()
    timers = {}
    labels = {}
    for name, margin in (("roi", 30.0), ("whole", None)):
        timers[name] = StageTimer()
        # islands kept: their rules (the density rule removes this toy network's far-field bone calls
        # too) would hide what the ROI itself drops
        out = segment_image(case.ct, network, plan, timer=timers[name], bone_margin_mm=margin, smoothing_mm=0,
                            remove_islands=False)
        labels[name] = sitk.GetArrayFromImage(out.labels)
    assert timers["roi"].counts["windows run"] < timers["whole"].counts["windows run"]
    # Within 30 mm of bone-dense CT (less one 4 mm network voxel for the nearest-neighbour way back)
    # the labels are the whole-volume labels; beyond, only background (this toy network, unlike a
    # trained one, calls some soft tissue "nerve": those calls are what the ROI drops).
    from scipy import ndimage

    hu = sitk.GetArrayFromImage(case.ct)
    distance_mm = ndimage.distance_transform_edt(hu < 150, sampling=(2.0, 2.0, 2.0))
    near = distance_mm <= 26.0
    assert near.mean() > 0.2 and (~near).mean() > 0.2
    np.testing.assert_array_equal(labels["roi"][near], labels["whole"][near])
    assert (labels["roi"][~near] != 0).sum() < (labels["whole"][~near] != 0).sum()


def test_windows_of_pure_air_are_background_without_running_the_network():
    class Refuses(_AirAwareNetwork):
        def forward(self, x):  # pragma: no cover - must not be called
            raise AssertionError("an air window reached the network")

    volume = np.full((20, 40, 50), -2.5, np.float32)  # smaller than nothing: padded axes too
    scores = predict_probabilities(volume, Refuses(), patch_size_zyx=(32, 64, 64), stride_zyx=(20, 40, 40),
                                   device="cpu", skip_below=_air_level())
    assert scores.shape == (3, 20, 40, 50)
    assert bool((scores[0] == 1).all()) and bool((scores[1:] == 0).all())


def test_skipping_on_padded_volumes_keeps_windows_that_see_the_body():
    volume = np.full((20, 40, 50), -2.5, np.float32)
    volume[10, 35, 45] = 1.0  # one dense voxel near a corner of a volume smaller than the patch
    timer = StageTimer()
    scores = predict_probabilities(volume, _AirAwareNetwork(), patch_size_zyx=(32, 64, 64),
                                   stride_zyx=(20, 40, 40), device="cpu", skip_below=_air_level(), timer=timer)
    assert timer.counts == {"windows run": 1, "windows skipped": 0}
    assert argmax_labels(scores)[10, 35, 45] == 1


class _OutOfMemoryAbove(nn.Module):
    """Pointwise model that raises PyTorch's out-of-memory error for batches larger than ``limit``."""

    num_classes = 3

    def __init__(self, limit: int) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.limit = limit
        self.calls: list[int] = []
        self.layer = nn.Conv3d(1, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self.layer(x)


@pytest.mark.parametrize("cpu_workers", [1, 2])
def test_out_of_memory_halves_the_window_batch_and_keeps_results(caplog, cpu_workers):
    # With workers, two batches can fail at once: the shared batch size is halved once per size.
    volume = np.random.default_rng(5).normal(size=(33, 50, 61)).astype(np.float32)
    options = dict(patch_size_zyx=PATCH, stride_zyx=STRIDE, device="cpu", amp=False, cpu_workers=cpu_workers)
    expected = predict_probabilities(volume, _OutOfMemoryAbove(limit=100), batch_size=1, **options)
    network = _OutOfMemoryAbove(limit=2)
    with caplog.at_level(logging.WARNING, logger="spinect"):
        result = predict_probabilities(volume, network, batch_size=8, **options)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)
    assert [r.getMessage() for r in caplog.records if "windows per batch" in r.getMessage()] == [
        "out of memory on cpu: retrying with 4 windows per batch",
        "out of memory on cpu: retrying with 2 windows per batch",
    ]
    # The predictor's original network is untouched; its copy stopped trying large batches.
    assert network.calls == []


def test_out_of_memory_with_one_window_on_the_cpu_raises_a_clear_error():
    volume = np.zeros((20, 40, 40), np.float32)
    with pytest.raises(DeviceOutOfMemory, match="even with one window"):
        predict_probabilities(volume, _OutOfMemoryAbove(limit=0), patch_size_zyx=PATCH, stride_zyx=STRIDE,
                              batch_size=4, device="cpu", amp=True)
    assert issubclass(DeviceOutOfMemory, SpinectError)


def test_gpu_out_of_memory_falls_back_to_the_cpu(caplog):
    tried: list[str] = []

    def attempt(device: torch.device) -> str:
        tried.append(device.type)
        if device.type == "cuda":
            raise DeviceOutOfMemory("cuda:0 out of memory even with one window per network call")
        return "cpu result"

    with caplog.at_level(logging.WARNING, logger="spinect"):
        assert run_with_cpu_fallback(attempt, torch.device("cuda:0")) == "cpu result"
    assert tried == ["cuda", "cpu"]
    assert "falling back to the CPU" in caplog.text
    with pytest.raises(DeviceOutOfMemory):
        run_with_cpu_fallback(lambda device: attempt(torch.device("cuda")), torch.device("cpu"))


def test_predict_probabilities_redoes_a_gpu_volume_on_the_cpu(monkeypatch, caplog):
    """The whole chain on a CPU-only machine: a 'CUDA' device whose network copy cannot be allocated."""
    volume = np.random.default_rng(6).normal(size=(20, 40, 40)).astype(np.float32)
    network = _OutOfMemoryAbove(limit=100)
    options = dict(patch_size_zyx=PATCH, stride_zyx=STRIDE, amp=False)
    expected = predict_probabilities(volume, network, device="cpu", **options)
    original_copy = sliding_window._inference_copy

    def copy_or_fail(net, device, *args):
        if device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original_copy(net, device, *args)

    monkeypatch.setattr(sliding_window, "resolve_device", lambda device: torch.device("cuda:0"))
    monkeypatch.setattr(sliding_window, "_inference_copy", copy_or_fail)
    with caplog.at_level(logging.WARNING, logger="spinect"):
        result = predict_probabilities(volume, network, device="cuda", **options)
    torch.testing.assert_close(result, expected)
    assert "falling back to the CPU" in caplog.text


def test_is_out_of_memory_recognises_pytorch_errors():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("HIP out of memory. Tried to allocate"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_argmax_labels_matches_torch_argmax_including_ties():
    generator = torch.Generator().manual_seed(7)
    scores = torch.randint(0, 4, (3, 9, 11, 13), generator=generator).float()  # many ties
    np.testing.assert_array_equal(argmax_labels(scores), torch.argmax(scores, dim=0).numpy())
    scores = torch.rand((5, 4, 6, 7), generator=generator)
    labels = argmax_labels(scores)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, torch.argmax(scores, dim=0).numpy())


def test_stage_timer_adds_seconds_and_counts():
    timer = StageTimer()
    timer.add("network", 1.5)
    timer.add("network", 0.5)
    timer.count("windows run", 3)
    timer.count("windows run")
    assert timer.seconds == {"network": 2.0} and timer.counts == {"windows run": 4}


def test_pipeline_benchmark_smoke(tmp_path):
    """The benchmark script runs end to end on a tiny phantom and writes its Markdown report."""
    from conftest import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny.pt")
    report = tmp_path / "bench.md"
    command = [
        sys.executable, str(REPO / "benchmarks" / "bench_pipeline.py"), "--model", str(model),
        "--shape", "24", "48", "48", "--spacing", "2.0", "1.5", "1.5", "--runs", "1", "--threads", "1",
        "--wide-shape", "32", "64", "64", "--max-wait", "0", "--output", str(report),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text(encoding="utf-8")
    for stage in ("read", "resample", "normalise", "windows", "network", "stitching", "argmax", "islands",
                  "resample back", "smooth", "write", "end to end"):
        assert f"| {stage} |" in text, stage
    assert "faster than the naive baseline" in text
    assert "×" in text and "argmax agreement" in text
    assert "peak RAM" in text


def test_island_removal_in_class_boxes_does_not_depend_on_empty_space_around():
    """Islands are found in each class's bounding box: padding the volume only shifts the report."""
    from spinect.postprocess import suppress_islands

    rng = np.random.default_rng(8)
    labels = np.zeros((30, 40, 50), np.uint8)
    labels[8:22, 10:30, 12:36] = 1
    labels[10:20, 18:22, 36:46] = 2
    spots = rng.random(labels.shape)
    labels[spots > 0.995] = 1
    labels[spots < 0.004] = 2
    labels[0, 0, 0] = 2  # islands touching the volume's edge
    labels[-1, -1, -1] = 1
    cleaned, removed = suppress_islands(labels, (1.0, 0.8, 0.8))
    offset = (5, 7, 9)
    padded = np.pad(labels, [(o, 3) for o in offset])
    cleaned_padded, removed_padded = suppress_islands(padded, (1.0, 0.8, 0.8))
    crop = tuple(slice(o, o + n) for o, n in zip(offset, labels.shape))
    np.testing.assert_array_equal(cleaned_padded[crop], cleaned)
    assert len(removed) == len(removed_padded) > 100
    for a, b in zip(removed, removed_padded):
        assert (a.label_value, a.voxels, a.reason) == (b.label_value, b.voxels, b.reason)
        assert a.distance_mm == pytest.approx(b.distance_mm)
        np.testing.assert_allclose(np.add(a.centroid_zyx, offset), b.centroid_zyx)


def test_a_ct_without_bone_density_warns_and_runs_no_window(caplog):
    import SimpleITK as sitk

    from spinect.pipeline import segment_image
    from spinect.plan import ModelPlan

    soft_tissue = sitk.GetImageFromArray(np.full((24, 48, 48), 40, np.int16))  # water-like, no bone
    soft_tissue.SetSpacing((4.0, 4.0, 4.0))
    plan = ModelPlan(architecture={}, spacing_zyx_mm=(4.0, 4.0, 4.0), intensity_mean=MEAN_HU, intensity_std=STD_HU,
                     patch_size_zyx=(8, 16, 16), stride_zyx=(5, 10, 10), training_status="trained")
    timer = StageTimer()
    with caplog.at_level(logging.WARNING, logger="spinect"):
        out = segment_image(soft_tissue, _AirAwareNetwork(), plan, timer=timer, smoothing_mm=0)
    assert "reaches 150 HU" in caplog.text and "--whole-volume" in caplog.text
    assert timer.counts["windows run"] == 0
    assert not sitk.GetArrayFromImage(out.labels).any()
    whole = StageTimer()
    segment_image(soft_tissue, _AirAwareNetwork(), plan, timer=whole, smoothing_mm=0, bone_margin_mm=None)
    assert whole.counts["windows run"] == whole.counts["windows run"] + whole.counts.get("windows skipped", 0) > 0


def _monai_reference_with_skipping(volume, network, *, patch, stride, blend, skip_below, margin, cval):
    """MONAI's own inferer, visiting every window; a skipped window returns background with certainty.

    The skip decision is made independently of spinect: the window box grown by ``margin``
    (clipped to the volume, MONAI's padding undone) must hold a voxel >= ``skip_below``.
    """
    from monai.inferers import sliding_window_inference

    pad_before = [max(p - n, 0) // 2 for p, n in zip(patch, volume.shape)]

    def predictor(windows, slices):
        out = torch.zeros((windows.shape[0], 3, *windows.shape[2:]))
        out[:, 0] = 1.0
        for k, window in enumerate(slices):
            region = tuple(slice(max(sl.start - b - m, 0), max(min(sl.stop - b + m, n), 0))
                           for sl, b, m, n in zip(window[2:], pad_before, margin, volume.shape))
            if (volume[region] >= skip_below).any():
                out[k] = torch.softmax(network(windows[k:k + 1]), dim=1)[0]
        return out

    with torch.inference_mode():
        return sliding_window_inference(
            torch.from_numpy(volume)[None, None], roi_size=patch, sw_batch_size=3, predictor=predictor,
            overlap=sliding_window.monai_overlap(patch, stride), mode=sliding_window.BLEND_MODES[blend],
            sigma_scale=0.125, padding_mode="constant", cval=cval, with_coord=True,
        )[0]


@pytest.mark.parametrize("blend", ["sum", "gaussian"])
@pytest.mark.parametrize("shape", [(40, 70, 90), (20, 30, 75)])  # the second is padded on two axes
def test_stitching_only_the_windows_that_run_equals_monais_inferer(blend, shape):
    rng = np.random.default_rng(11)
    volume = np.full(shape, -2.5, np.float32)  # air ...
    volume[5:12, 8:20, 30:60] = rng.normal(1.0, 0.5, size=(7, 12, 30))  # ... with one body region
    margin = (2, 3, 4)
    network = _AirAwareNetwork().eval()
    ours = predict_probabilities(volume, network, patch_size_zyx=PATCH, stride_zyx=STRIDE, blend=blend,
                                 device="cpu", amp=False, batch_size=3, skip_below=0.0, skip_margin_zyx=margin,
                                 padding_value=-2.5)
    reference = _monai_reference_with_skipping(volume, network, patch=PATCH, stride=STRIDE, blend=blend,
                                               skip_below=0.0, margin=margin, cval=-2.5)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(argmax_labels(ours), argmax_labels(reference))


def test_window_grid_decisions_equal_a_box_search_per_window():
    rng = np.random.default_rng(12)
    for shape, margin in (((45, 70, 90), (0, 0, 0)), ((45, 70, 90), (3, 5, 7)), ((10, 25, 90), (2, 2, 2))):
        mask = np.zeros(shape, bool)
        mask[tuple(rng.integers(0, n, size=3) for n in shape)] = True  # three dense voxels
        if shape[0] < PATCH[0]:
            mask[:] = False
            mask[4, 20, 2] = True  # padded z and y; only the first x window (grown by 2) reaches it
        grid = sliding_window._WindowGrid(shape, PATCH, STRIDE)
        grid.require(mask, margin)
        expected = []
        for window in grid.slices:
            region = tuple(slice(max(sl.start - b - m, 0), max(min(sl.stop - b + m, n), 0))
                           for sl, b, m, n in zip(window, grid.pad_before, margin, shape))
            expected.append(bool(mask[region].any()))
        assert 0 < sum(expected) < len(expected)
        assert [i for i, e in enumerate(expected) if e] == grid.run_indices()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 8, 16, 16), (1, 2, 7, 9, 5)])
def test_pairwise_max_pool_equals_max_pool3d(dtype, channels_last, shape):
    from spinect.nets.pooling import PairwiseMaxPool3d

    torch.manual_seed(1)
    x = torch.randn(*shape).to(dtype)
    x[0, 0, 0, 0, :2] = 0.0  # ties
    if channels_last:
        x = x.to(memory_format=torch.channels_last_3d)
    expected = nn.functional.max_pool3d(x, kernel_size=2, stride=2)
    pooled = PairwiseMaxPool3d()(x)
    assert pooled.shape == expected.shape
    assert torch.equal(pooled, expected)
    if channels_last:
        assert pooled.is_contiguous(memory_format=torch.channels_last_3d)


def test_replace_max_pools_swaps_only_plain_2x2x2_pools():
    from spinect.nets import build_network
    from spinect.nets.pooling import PairwiseMaxPool3d, replace_max_pools

    network = build_network(base_width=2, levels=3)
    assert replace_max_pools(network) == 1
    assert isinstance(network.pool, PairwiseMaxPool3d)
    others = nn.Sequential(nn.MaxPool3d(2, padding=1), nn.MaxPool3d(3, stride=2), nn.MaxPool3d(2, ceil_mode=True),
                           nn.MaxPool3d(2, return_indices=True), nn.ModuleList([nn.MaxPool3d((2, 2, 2))]))
    assert replace_max_pools(others) == 1
    assert [type(m) for m in others[:4]] == [nn.MaxPool3d] * 4
    assert isinstance(others[4][0], PairwiseMaxPool3d)


@pytest.mark.parametrize("blend", ["sum", "gaussian"])
def test_cpu_workers_give_the_same_probabilities_and_restore_threads(blend):
    from spinect.nets import build_network

    threads = torch.get_num_threads()
    torch.manual_seed(2)
    network = build_network(base_width=2, levels=3).eval()
    volume = np.random.default_rng(3).normal(size=(30, 50, 45)).astype(np.float32)
    options = dict(patch_size_zyx=PATCH, stride_zyx=STRIDE, blend=blend, batch_size=2, device="cpu")
    timer = StageTimer()
    one = predict_probabilities(volume, network, cpu_workers=1, **options)
    several = predict_probabilities(volume, network, cpu_workers=3, timer=timer, **options)
    assert torch.get_num_threads() == threads
    # Same windows blended in the same order; only oneDNN's per-thread arithmetic could differ.
    torch.testing.assert_close(several, one, rtol=0, atol=1e-6)
    assert timer.seconds["network"] > 0.0
    assert timer.counts["windows run"] == sliding_window.count_windows((30, 50, 45), PATCH, STRIDE)


def test_a_network_error_in_a_worker_propagates_and_restores_threads():
    threads = torch.get_num_threads()

    class Failing(nn.Module):
        num_classes = 3

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0
            self.conv = nn.Conv3d(1, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("boom in window batch")
            return self.conv(x)

    volume = np.zeros((30, 50, 45), dtype=np.float32)
    with pytest.raises(RuntimeError, match="boom in window batch"):
        predict_probabilities(volume, Failing(), patch_size_zyx=PATCH, stride_zyx=STRIDE, batch_size=1,
                              device="cpu", amp=False, cpu_workers=2)
    assert torch.get_num_threads() == threads


def test_cpu_workers_must_be_a_positive_integer():
    volume = np.zeros((16, 32, 32), dtype=np.float32)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(SpinectError, match="cpu_workers"):
            predict_probabilities(volume, _AirAwareNetwork(), cpu_workers=bad, device="cpu")


def test_worker_count_splits_the_threads_on_the_cpu_only(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert sliding_window._worker_count(cpu, None) == (4, 2)  # automatic: at most 4 workers
    assert sliding_window._worker_count(cpu, 2) == (2, 4)
    assert sliding_window._worker_count(cpu, 16) == (8, 1)  # never more workers than threads
    assert sliding_window._worker_count(cpu, 1) == (1, 0)
    assert sliding_window._worker_count(gpu, 4) == (1, 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert sliding_window._worker_count(cpu, None) == (1, 0)
