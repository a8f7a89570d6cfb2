"""Sliding-window inference on the 1 mm grid: SPINECT's summed probabilities, or gaussian blending.

SPINECT (paper, Table 1) slides a 32 x 64 x 64 window with stride 20 x 40 x 40 over the
normalised CT, adds each window's softmax probabilities into the output and takes the argmax.
The windows are MONAI's (:func:`monai.data.utils.dense_patch_slices` with the stride as scan
interval, i.e. exactly the grid of :func:`monai.inferers.sliding_window_inference` with
:func:`monai_overlap`; axes shorter than the patch padded the way MONAI pads them) and so are the
blending weights (:func:`monai.data.utils.compute_importance_map`). We stitch them ourselves
because MONAI's inferer visits every window: here a window that is skipped (air, far from bone)
costs nothing -- no extraction, no network call, no blending of its certain background except
where it overlaps a window that runs. The network runs in eval mode under
``torch.inference_mode``; windows are reported through a ``progress(done_windows, total_windows)``
callback.

Windows along an axis of ``n`` voxels (patch ``p``, stride ``s``) start at ``0, s, 2s, ...`` and
the last one is shifted back to end at ``n``: ``1`` window if ``n <= p`` (the volume is padded to
``p`` and the result cropped back), else ``ceil((n - p) / s) + 1``.

Speed (measurements and reasoning in ``docs/benchmarks.md``):

* windows go through the network ``batch_size`` at a time, in ``channels_last_3d`` layout, in
  bfloat16 where :func:`spinect.inference.autocast_dtype` says so (CUDA; CPUs with native bfloat16
  instructions): a bfloat16 copy of the network with BatchNorm folded into the convolutions, or
  autocast for networks with other normalisation layers;
* with ``skip_below``, windows whose voxels (and a margin around them) are all below that
  normalised intensity -- air outside the body -- are not run: they count as background with
  probability 1. The network sees nothing but the window, so this only departs from running it
  where the network would call air voxels foreground;
* with ``roi_above`` as well, a window runs only if some voxel at or above that normalised
  intensity (bone density) lies within ``roi_margin_zyx`` of it: every voxel within that margin
  of such a voxel is covered only by windows that run, so its result is exactly that of the whole
  volume; farther voxels are background (soft tissue far from any bone holds no spinal nerve);
* on the CPU, up to 4 batches run at once in worker threads that share the cores (the compact
  network's small convolutions keep a core busier alone than two cores sharing one call), while
  the main thread blends finished batches in order; max-pooling runs as pairwise maxima of
  strided views (:mod:`spinect.nets.pooling`), about 10x faster than ``max_pool3d`` there;
* the blending accumulators cover only the box around the windows that run, and live on the GPU
  when they fit (``_aggregation_device``);
* out of GPU memory, the window batch is halved and retried down to one window, then the whole
  volume is redone on the CPU with a warning (:func:`run_with_cpu_fallback`).
"""

from __future__ import annotations

import copy
import difflib
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, nullcontext
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices

from spinect.errors import InputError, ModelError, SpinectError
from spinect.inference.device import autocast_dtype, resolve_device
from spinect.nets.pooling import replace_max_pools

__all__ = [
    "BLEND_MODES",
    "WindowProgress",
    "count_windows",
    "monai_overlap",
    "predict_probabilities",
    "predict_labels",
    "predict_labels_and_probabilities",
    "quantise_probabilities",
    "argmax_labels",
    "run_with_cpu_fallback",
    "mirror_flip_dims",
    "is_out_of_memory",
    "DeviceOutOfMemory",
]

log = logging.getLogger("spinect")
_T = TypeVar("_T")

#: ``progress(done_windows, total_windows)``, called after every batch of windows.
WindowProgress = Callable[[int, int], None]

#: Our blend names -> MONAI's ``mode``: ``sum`` is SPINECT's rule (equal weights), ``gaussian``
#: is nnU-Net's (sigma = 1/8 of the patch, MONAI's default ``sigma_scale``).
BLEND_MODES: dict[str, str] = {"sum": "constant", "gaussian": "gaussian"}

_GAUSSIAN_SIGMA_SCALE = 0.125
# Aggregate on the GPU only when output + count map use at most this share of its free memory.
_GPU_AGGREGATION_SHARE = 0.25


def count_windows(
    shape_zyx: Sequence[int], patch_size_zyx: Sequence[int], stride_zyx: Sequence[int]
) -> int:
    """Number of windows MONAI's sliding window visits on a volume of ``shape_zyx`` voxels.

    Args:
        shape_zyx: volume size (z, y, x) in voxels.
        patch_size_zyx: window size (z, y, x) in voxels.
        stride_zyx: step between window starts (z, y, x) in voxels, ``1 <= stride <= patch``.

    Returns:
        The product over axes of ``1`` (axis not longer than the patch) or
        ``ceil((n - p) / s) + 1``.
    """
    _check_geometry(patch_size_zyx, stride_zyx)
    total = 1
    for n, p, s in zip(shape_zyx, patch_size_zyx, stride_zyx):
        total *= 1 if n <= p else math.ceil((n - p) / s) + 1
    return total


def predict_probabilities(volume_zyx: np.ndarray | torch.Tensor, network: torch.nn.Module, **options) -> torch.Tensor:
    """Per-class scores of a whole volume by sliding-window inference.

    The keyword options and their defaults are :func:`_predict`'s (one signature for this and
    :func:`predict_labels`): those below.

    For ``blend="sum"`` the result is SPINECT's sum of window probabilities divided by the number
    of windows covering each voxel, i.e. the **mean** softmax probability; dividing by a positive
    per-voxel count leaves the argmax unchanged. For ``"gaussian"`` it is the gaussian-weighted
    mean (sigma = patch / 8). Either way every voxel's scores sum to 1.

    Args:
        volume_zyx: normalised CT on the network's grid, (Z, Y, X) float; any size (axes
            shorter than the patch are padded with ``padding_value`` and cropped back).
        network: maps (N, 1, z, y, x) to logits (N, C, z, y, x). A copy is moved to ``device`` and
            run in eval mode; the caller's network is left as it was (device, mode, layout).
        patch_size_zyx: window (z, y, x) in voxels; each must suit the network (SPINECT: multiple of 16).
        stride_zyx: step between windows (z, y, x) in voxels, ``1 <= stride <= patch``.
        blend: ``"sum"`` or ``"gaussian"``.
        batch_size: windows per network call (halved automatically when the device runs out of
            memory, down to 1; then a CUDA run is redone on the CPU with a warning).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a torch.device.
        amp: None = :func:`spinect.inference.autocast_dtype`'s automatic choice (bfloat16 or
            float16 on CUDA, bfloat16 on CPUs with native bfloat16, else float32);
            True/False forces mixed precision on/off. bfloat16 runs a bfloat16 copy of the
            network with its BatchNorm folded into the convolutions when nothing else needs
            float32, else autocast; softmax and blending stay float32.
        padding_value: value of padded voxels; None = the volume's minimum (air after HU clipping).
        progress: ``progress(done_windows, total_windows)`` after every batch of windows
            (skipped windows count as done).
        skip_below: normalised intensity; a window whose voxels, and those within
            ``skip_margin_zyx`` of it, are all below this value is not run and gets probability
            1 for class 0 (background). None = run every window.
        skip_margin_zyx: margin (z, y, x) in voxels around each window that must be air too
            (a box dilation of the "body" mask ``volume >= skip_below``).
        roi_above: normalised intensity (e.g. 150 HU, bone); with ``skip_below``, a window is
            run only if it also holds a voxel ``>= roi_above`` within ``roi_margin_zyx`` voxels;
            the others get probability 1 for background. None = no such condition.
        roi_margin_zyx: margin (z, y, x) in voxels for ``roi_above``.
        channels_last: run the network and its inputs in ``torch.channels_last_3d`` layout
            (faster with oneDNN on CPU and cuDNN on GPU; results differ only by rounding).
        cpu_workers: on the CPU, how many batches of windows run through the network at once,
            each in its own thread with ``torch.get_num_threads() // cpu_workers`` threads (the
            thread count is restored afterwards). The small convolutions of a compact network
            keep one core each busier than two cores share one call (docs/benchmarks.md). The
            windows are blended in the same order either way. None = ``min(threads, 4)``;
            1 = one call at a time with all threads. Ignored on a GPU.
        mirror_axes_zyx: mirroring test-time augmentation (nnU-Net's): each window also runs
            flipped along each of these axes (0 = z, 1 = y, 2 = x, i.e. left-right) and along
            every combination of them, its probabilities flipped back; a window's probabilities
            are the mean of the ``2 ** len(axes)`` passes, blended as usual. () = no mirroring.
        timer: optional :class:`spinect.profiling.StageTimer`; gets the stages ``windows``
            (finding windows to skip), ``network`` (forward passes and softmax; with CPU workers,
            the time the pass waits for them, window extraction included) and ``stitching``
            (window extraction, blending and normalisation) and the counts ``windows run`` and
            ``windows skipped``.

    Returns:
        (C, Z, Y, X) float32 CPU tensor of blended softmax probabilities.

    Raises:
        InputError: the volume is not a non-empty 3D array of finite numbers.
        SpinectError: bad patch, stride, blend, batch size, margin or device; out of memory on
            the CPU even with one window per batch.
    """
    return _predict(volume_zyx, network, labels_only=False, **options)


def _predict(
    volume_zyx: np.ndarray | torch.Tensor,
    network: torch.nn.Module,
    *,
    labels_only: bool,
    patch_size_zyx: Sequence[int] = (32, 64, 64),
    stride_zyx: Sequence[int] = (20, 40, 40),
    blend: str = "sum",
    batch_size: int = 4,
    device: str | torch.device = "auto",
    amp: bool | None = None,
    padding_value: float | None = None,
    progress: WindowProgress | None = None,
    skip_below: float | None = None,
    skip_margin_zyx: Sequence[int] = (0, 0, 0),
    roi_above: float | None = None,
    roi_margin_zyx: Sequence[int] = (0, 0, 0),
    channels_last: bool = True,
    cpu_workers: int | None = None,
    mirror_axes_zyx: Sequence[int] = (),
    timer=None,
    keep_probabilities: bool = False,
) -> torch.Tensor | np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """:func:`predict_probabilities` (``labels_only=False``) or :func:`predict_labels` (True;
    with ``keep_probabilities`` also the uint8 probabilities, :func:`predict_labels_and_probabilities`)."""
    mode = _blend_mode(blend)
    mirror_flips = mirror_flip_dims(mirror_axes_zyx)
    if batch_size < 1:
        raise SpinectError(f"batch size must be >= 1, got {batch_size}")
    if cpu_workers is not None and (isinstance(cpu_workers, bool) or not isinstance(cpu_workers, int)
                                    or cpu_workers < 1):
        raise SpinectError(f"cpu_workers must be an integer >= 1 or None, got {cpu_workers!r}")
    margin = tuple(int(m) for m in skip_margin_zyx)
    roi_margin = tuple(int(m) for m in roi_margin_zyx)
    for name, given, value in (("skip", skip_margin_zyx, margin), ("roi", roi_margin_zyx, roi_margin)):
        if len(value) != 3 or min(value) < 0:
            raise SpinectError(f"{name} margin needs 3 values >= 0 (z, y, x voxels), got {tuple(given)}")
    if roi_above is not None and skip_below is None:
        raise SpinectError("roi_above needs skip_below (windows are skipped only where air is skipped)")
    compute_device = resolve_device(device)
    inputs = _as_input_tensor(volume_zyx)
    shape_zyx = tuple(inputs.shape[2:])
    cval = float(inputs.min()) if padding_value is None else float(padding_value)
    started = time.perf_counter()
    grid = _WindowGrid(shape_zyx, patch_size_zyx, stride_zyx)
    if skip_below is not None:
        volume = inputs[0, 0].numpy()
        grid.require(volume >= float(skip_below), margin)
        if roi_above is not None:
            grid.require(volume >= float(roi_above), roi_margin)
    if timer is not None:
        timer.add("windows", time.perf_counter() - started)

    def attempt(compute_device: torch.device) -> torch.Tensor | np.ndarray:
        return _predict_on_device(
            inputs, network, compute_device, patch_size_zyx=patch_size_zyx, stride_zyx=stride_zyx, mode=mode,
            batch_size=batch_size, amp=amp, cval=cval, progress=progress, grid=grid, channels_last=channels_last,
            timer=timer, cpu_workers=cpu_workers, labels_only=labels_only, mirror_flips=mirror_flips,
            keep_probabilities=keep_probabilities,
        )

    return run_with_cpu_fallback(attempt, compute_device)


def mirror_flip_dims(mirror_axes_zyx: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """The flips (dims of an (N, C, Z, Y, X) batch) that mirroring along ``mirror_axes_zyx`` adds.

    Every non-empty combination of the axes: (2,) -> ((4,),); (1, 2) -> ((3,), (4,), (3, 4)).

    Raises:
        SpinectError: an axis outside 0-2 or given twice.
    """
    axes = [int(a) for a in mirror_axes_zyx]
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise SpinectError(f"mirror axes must be distinct values among 0 (z), 1 (y), 2 (x); got {tuple(mirror_axes_zyx)}")
    dims = [a + 2 for a in sorted(axes)]
    return tuple(tuple(d for bit, d in enumerate(dims) if mask >> bit & 1) for mask in range(1, 2 ** len(dims)))


def predict_labels(volume_zyx: np.ndarray | torch.Tensor, network: torch.nn.Module, **options) -> np.ndarray:
    """Argmax of :func:`predict_probabilities` (same keyword options): (Z, Y, X) uint8 labels.

    Bit for bit ``argmax_labels(predict_probabilities(...))``, without the (C, Z, Y, X) float32
    scores: the windows are blended into a slab of ``patch`` z-slices around the windows being
    run (MONAI's order runs windows row by row along z), and each z-range that no later window
    reaches is finished (certain background of the skipped windows added, divided by its count,
    argmax) and dropped. Per voxel the additions happen in the same order as in
    :func:`predict_probabilities`, so the labels are identical; the memory is the uint8 labels and
    a slab instead of ``C + 1`` float32 values per voxel (issue 17: 1.2 GB less on a 512×512×600 CT).
    With a ``timer`` the argmax time of the slabs is the stage ``argmax``.
    """
    return _predict(volume_zyx, network, labels_only=True, **options)


def predict_labels_and_probabilities(volume_zyx: np.ndarray | torch.Tensor, network: torch.nn.Module,
                                     **options) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`predict_labels` (the same labels, bit for bit) and the blended probabilities of every
    class, quantised to uint8 (:func:`quantise_probabilities`), kept slab by slab as the labels are:
    (C, Z, Y, X) uint8 (1 byte per class and voxel instead of 4). They let the pipeline put the
    segmentation back on the CT's grid by interpolating probabilities instead of copying the
    nearest label (:func:`spinect.pipeline.probabilities_to_input_grid`). The probabilities are
    None only when no window ran and the network does not name its number of classes.
    """
    return _predict(volume_zyx, network, labels_only=True, keep_probabilities=True, **options)


def argmax_labels(scores: torch.Tensor) -> np.ndarray:
    """Index of the largest score per voxel, like ``torch.argmax(scores, 0)`` but much faster.

    ``torch.argmax`` over the leading channel axis of a (C, Z, Y, X) tensor runs a strided
    reduction (about 6 s for 3 x 300 x 358 x 358 voxels on one core); comparing whole channels
    elementwise takes a few passes over memory. Ties go to the lowest index, as with ``argmax``.

    Args:
        scores: (C, Z, Y, X) finite scores on any device, C <= 256.

    Returns:
        (Z, Y, X) uint8 NumPy array of class indices.
    """
    if scores.dim() < 1 or scores.shape[0] < 1 or scores.shape[0] > 256:
        raise SpinectError(f"need 1 to 256 channels of scores, got shape {tuple(scores.shape)}")
    best = scores[0].clone()
    labels = torch.zeros(scores.shape[1:], dtype=torch.uint8, device=scores.device)
    for index in range(1, scores.shape[0]):
        better = scores[index] > best
        labels.masked_fill_(better, index)
        torch.maximum(best, scores[index], out=best)
    return labels.cpu().numpy()


def monai_overlap(patch_size_zyx: Sequence[int], stride_zyx: Sequence[int]) -> tuple[float, ...]:
    """MONAI ``overlap`` per axis that makes MONAI step by exactly ``stride_zyx``.

    MONAI steps by ``int(patch * (1 - overlap))``; the naive ``1 - stride / patch`` can land a
    hair below ``stride`` in floating point (e.g. 19.999 -> 19), so we aim at ``stride + 0.5``.
    """
    _check_geometry(patch_size_zyx, stride_zyx)
    return tuple(0.0 if s == p else (p - s - 0.5) / p for p, s in zip(patch_size_zyx, stride_zyx))


class DeviceOutOfMemory(SpinectError):
    """The device ran out of memory even with one window per network call."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for PyTorch's out-of-memory errors (CUDA, and allocator messages on other devices)."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def run_with_cpu_fallback(attempt: Callable[[torch.device], _T], device: torch.device) -> _T:
    """``attempt(device)``; if it runs out of device memory on a GPU, warn and return ``attempt(cpu)``.

    Args:
        attempt: does the whole job on the device it is given.
        device: the device to try first.

    Raises:
        DeviceOutOfMemory: out of memory on the CPU (no further fallback).
    """
    try:
        return attempt(device)
    except DeviceOutOfMemory as exc:
        if device.type == "cpu":
            raise
        failure = exc
    # Outside the except block, so the GPU tensors the traceback holds can be freed first.
    _release_cached_memory(device)
    log.warning("%s; falling back to the CPU for this volume (much slower)", failure)
    return attempt(torch.device("cpu"))


def _predict_on_device(
    inputs: torch.Tensor,
    network: torch.nn.Module,
    compute_device: torch.device,
    *,
    patch_size_zyx: Sequence[int],
    stride_zyx: Sequence[int],
    mode: str,
    batch_size: int,
    amp: bool | None,
    cval: float,
    progress: WindowProgress | None,
    grid: "_WindowGrid",
    channels_last: bool,
    timer,
    cpu_workers: int | None = None,
    host_blend: bool = False,
    labels_only: bool = False,
    mirror_flips: tuple[tuple[int, ...], ...] = (),
    keep_probabilities: bool = False,
) -> torch.Tensor | np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """One complete sliding-window pass with the network on ``compute_device`` (see predict_probabilities).

    ``host_blend`` keeps the blending buffers in host memory even on a GPU; ``labels_only``
    returns the argmax labels (:func:`_stitch_labels`) instead of the scores.
    """
    shape_zyx = tuple(inputs.shape[2:])
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    amp_dtype = autocast_dtype(compute_device, amp)
    try:
        runner, cast_dtype = _inference_copy(network, compute_device, memory_format, amp_dtype)
    except Exception as exc:
        if is_out_of_memory(exc):
            raise DeviceOutOfMemory(f"{compute_device} out of memory loading the network ({exc})") from exc
        raise
    num_classes = getattr(network, "num_classes", None)
    out_device = torch.device("cpu") if host_blend else _aggregation_device(compute_device, shape_zyx, num_classes or 8)
    predictor = _WindowPredictor(
        runner, compute_device, None if cast_dtype is not None else amp_dtype, batch_size=batch_size,
        memory_format=memory_format, timer=timer, input_dtype=cast_dtype, mirror_flips=mirror_flips,
    )
    started = time.perf_counter()
    argmax_s = [0.0]
    try:
        with torch.inference_mode():
            stitch = (functools.partial(_stitch_labels, argmax_s=argmax_s, keep_probabilities=keep_probabilities)
                      if labels_only else _stitch_windows)
            result = stitch(
                inputs.to(out_device), predictor, grid, mode=mode, cval=cval, num_classes=num_classes,
                batch_size=batch_size, progress=progress, workers=_worker_count(compute_device, cpu_workers),
            )
    except DeviceOutOfMemory:
        raise
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        if out_device.type != "cpu":
            # The blending buffers did not fit after all: keep the network on the GPU, blend on the host.
            del predictor, runner
            _release_cached_memory(out_device)
            log.warning("out of GPU memory while blending windows on %s; blending on the CPU instead", out_device)
            return _predict_on_device(
                inputs, network, compute_device, patch_size_zyx=patch_size_zyx, stride_zyx=stride_zyx, mode=mode,
                batch_size=batch_size, amp=amp, cval=cval, progress=progress, grid=grid,
                channels_last=channels_last, timer=timer, cpu_workers=cpu_workers, host_blend=True,
                labels_only=labels_only, mirror_flips=mirror_flips, keep_probabilities=keep_probabilities,
            )
        raise DeviceOutOfMemory(f"{compute_device} out of memory outside the network ({exc})") from exc
    if timer is not None:
        elapsed = time.perf_counter() - started
        timer.add("stitching", max(0.0, elapsed - predictor.network_s - argmax_s[0]))
        timer.add("network", predictor.network_s)
        if labels_only:
            timer.add("argmax", argmax_s[0])
        timer.count("windows run", grid.run_count)
        timer.count("windows skipped", grid.total - grid.run_count)
    return result


def _stitch_windows(
    inputs: torch.Tensor,
    predictor: "_WindowPredictor",
    grid: "_WindowGrid",
    *,
    mode: str,
    cval: float,
    num_classes: int | None,
    batch_size: int,
    progress: WindowProgress | None,
    workers: tuple[int, int] = (1, 0),
) -> torch.Tensor:
    """Blend the probabilities of the windows ``grid`` runs; every other window is certain background.

    Matches MONAI's ``sliding_window_inference`` (same windows, padding, weights; a skipped
    window counting as probability 1 for class 0) up to the order of floating-point additions.
    Only the box around the windows that run is accumulated; outside it every covering window
    is skipped, so the blended result there is exactly (1, 0, ..., 0).

    Args:
        inputs: (1, 1, Z, Y, X) float32 volume on the blending device.
        workers: (concurrent network calls, torch threads each); see :func:`_probabilities_in_order`.

    Returns:
        (C, Z, Y, X) float32 CPU tensor (a view of the blending buffer when that is on the CPU).
    """
    device = inputs.device
    padded = F.pad(inputs, [side for before, after in reversed(list(zip(grid.pad_before, grid.pad_after)))
                            for side in (before, after)], value=cval) if any(grid.pad_after) else inputs
    run = grid.run_indices()
    if num_classes is None:
        if not run:
            raise SpinectError("the network does not say how many classes it predicts and no window needs running")
        num_classes = int(predictor(padded[(slice(0, 1), slice(None), *grid.slices[run[0]])]).shape[1])
    result = torch.zeros((num_classes, *grid.padded_shape), dtype=torch.float32, device=device)
    result[0] = 1.0
    done = 0
    if run:
        box = grid.run_box()
        accumulated = result[(slice(None), *box)]
        accumulated[0] = 0.0
        count = torch.zeros(accumulated.shape[1:], dtype=torch.float32, device=device)
        weights = compute_importance_map(grid.patch, mode=mode, sigma_scale=_GAUSSIAN_SIGMA_SCALE, device=device)
        constant = mode == "constant"
        batches = [run[first : first + batch_size] for first in range(0, len(run), batch_size)]
        # closing(): an error while blending must stop the workers and restore torch's thread count now.
        with closing(_probabilities_in_order(padded, grid, batches, predictor, workers)) as stream:
            for batch, probabilities in stream:
                probabilities = probabilities.to(device)
                for k, index in enumerate(batch):
                    local = _shifted(grid.slices[index], box)
                    if constant:
                        accumulated[(slice(None), *local)] += probabilities[k]
                        count[local] += 1.0
                    else:
                        accumulated[(slice(None), *local)] += weights * probabilities[k]
                        count[local] += weights
                done = batch[-1] + 1
                if progress is not None:
                    progress(done, grid.total)
        # Skipped windows that overlap the box: background with certainty, at their blending weight.
        for index in grid.skipped_overlapping(box):
            local, inner = _intersection(grid.slices[index], box)
            accumulated[0][local] += 1.0 if constant else weights[inner]
            count[local] += 1.0 if constant else weights[inner]
        accumulated /= count
        _refuse_nonfinite(accumulated)
    if progress is not None and done < grid.total:
        progress(grid.total, grid.total)
    crop = tuple(slice(before, before + n) for before, n in zip(grid.pad_before, grid.shape))
    return result[(slice(None), *crop)].to("cpu").contiguous()


def _stitch_labels(
    inputs: torch.Tensor,
    predictor: "_WindowPredictor",
    grid: "_WindowGrid",
    *,
    mode: str,
    cval: float,
    num_classes: int | None,
    batch_size: int,
    progress: WindowProgress | None,
    workers: tuple[int, int] = (1, 0),
    argmax_s: list[float] | None = None,
    keep_probabilities: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """The labels of :func:`_stitch_windows`' scores, blended slab by slab along z (see :func:`predict_labels`).

    The slab holds ``patch[0]`` z-slices of the box around the windows that run, from ``z0`` on.
    Windows come in MONAI's order, z slowest, so before a window starting at ``s`` is blended the
    slices below ``s`` are final: no later window reaches them. Finishing a slice range does
    what :func:`_stitch_windows` does after its last window, on that range only (the skipped
    windows' certain background in the same order, the division by the count, the finiteness
    check), then the argmax; the slab then moves up. Each voxel thus sees the same float32
    operations in the same order as in :func:`_stitch_windows`.

    Args:
        argmax_s: when given, ``argmax_s[0]`` gets the seconds spent in the argmax.
        keep_probabilities: also keep each finished slab's probabilities, quantised to uint8
            (:func:`quantise_probabilities`).

    Returns:
        (Z, Y, X) uint8 labels (CPU), 0 outside the box; with ``keep_probabilities`` the pair
        (labels, (C, Z, Y, X) uint8 probabilities, background 255 outside the box; None when no
        window ran and the network does not say its number of classes).
    """
    device = inputs.device
    padded = F.pad(inputs, [side for before, after in reversed(list(zip(grid.pad_before, grid.pad_after)))
                            for side in (before, after)], value=cval) if any(grid.pad_after) else inputs
    run = grid.run_indices()
    labels = np.zeros(grid.padded_shape, dtype=np.uint8)
    kept = None  # with keep_probabilities: the uint8 probabilities, once the number of classes is known
    done = 0
    if run:
        starts_z = [grid.slices[i][0].start for i in run]
        if any(b < a for a, b in zip(starts_z, starts_z[1:])):  # not MONAI's z-slowest order: blend it whole
            scores = _stitch_windows(inputs, predictor, grid, mode=mode, cval=cval, num_classes=num_classes,
                                     batch_size=batch_size, progress=progress, workers=workers)
            if keep_probabilities:
                return argmax_labels(scores), quantise_probabilities(scores)
            return argmax_labels(scores)
        if num_classes is None:
            num_classes = int(predictor(padded[(slice(0, 1), slice(None), *grid.slices[run[0]])]).shape[1])
        if keep_probabilities:
            kept = _certain_background(num_classes, grid.padded_shape)
        box = grid.run_box()
        depth = grid.patch[0]
        rows = tuple(box[1:])
        accumulated = torch.zeros((num_classes, depth, *(b.stop - b.start for b in rows)), dtype=torch.float32,
                                  device=device)
        count = torch.zeros(accumulated.shape[1:], dtype=torch.float32, device=device)
        weights = compute_importance_map(grid.patch, mode=mode, sigma_scale=_GAUSSIAN_SIGMA_SCALE, device=device)
        constant = mode == "constant"
        skipped = grid.skipped_overlapping(box)
        slab_z = [box[0].start]  # padded z of the slab's first slice

        def finish(upto: int) -> None:
            """Finish padded z-slices [slab start, upto) (at most ``depth``) and move the slab up."""
            z0 = slab_z[0]
            n = upto - z0
            if n <= 0:
                return
            slab = (slice(z0, upto), *rows)
            for index in skipped:
                window = grid.slices[index]
                if window[0].start >= upto or window[0].stop <= z0:
                    continue
                local, inner = _intersection(window, slab)
                accumulated[0][local] += 1.0 if constant else weights[inner]
                count[local] += 1.0 if constant else weights[inner]
            part = accumulated[:, :n]
            part /= count[:n]
            _refuse_nonfinite(part)
            started = time.perf_counter()
            labels[slab] = argmax_labels(part)
            if kept is not None:
                kept[(slice(None), *slab)] = quantise_probabilities(part)
            if argmax_s is not None:
                argmax_s[0] += time.perf_counter() - started
            if n < depth:
                accumulated[:, : depth - n] = accumulated[:, n:].clone()
                count[: depth - n] = count[n:].clone()
            accumulated[:, depth - n :] = 0.0
            count[depth - n :] = 0.0
            slab_z[0] = upto

        def reach(upto: int) -> None:
            """Finish every slice below ``upto``, ``depth`` slices at a time."""
            while slab_z[0] < upto:
                finish(min(upto, slab_z[0] + depth))

        batches = [run[first : first + batch_size] for first in range(0, len(run), batch_size)]
        with closing(_probabilities_in_order(padded, grid, batches, predictor, workers)) as stream:
            for batch, probabilities in stream:
                probabilities = probabilities.to(device)
                for k, index in enumerate(batch):
                    window = grid.slices[index]
                    if window[0].stop > slab_z[0] + depth:
                        reach(window[0].start)
                    local = _shifted(window, (slice(slab_z[0], slab_z[0] + depth), *rows))
                    if constant:
                        accumulated[(slice(None), *local)] += probabilities[k]
                        count[local] += 1.0
                    else:
                        accumulated[(slice(None), *local)] += weights * probabilities[k]
                        count[local] += weights
                done = batch[-1] + 1
                if progress is not None:
                    progress(done, grid.total)
        reach(box[0].stop)
    if progress is not None and done < grid.total:
        progress(grid.total, grid.total)
    crop = tuple(slice(before, before + n) for before, n in zip(grid.pad_before, grid.shape))
    labels = labels if labels.shape == grid.shape else np.ascontiguousarray(labels[crop])
    if not keep_probabilities:
        return labels
    if kept is None and num_classes is not None:  # no window ran
        kept = _certain_background(num_classes, grid.padded_shape)
    if kept is not None and kept.shape[1:] != grid.shape:
        kept = np.ascontiguousarray(kept[(slice(None), *crop)])
    return labels, kept


def _certain_background(num_classes: int, shape_zyx: Sequence[int]) -> np.ndarray:
    """(C, Z, Y, X) uint8 probabilities of certain background (where no window runs)."""
    out = np.zeros((num_classes, *shape_zyx), dtype=np.uint8)
    out[0] = 255
    return out


def quantise_probabilities(scores: torch.Tensor) -> np.ndarray:
    """(C, ...) probabilities in [0, 1] as uint8 (round(255 p)): a quarter of float32's memory,
    steps of 0.004 (ample for where a boundary lies between voxel centres)."""
    return (scores * 255.0 + 0.5).clamp_(0.0, 255.0).to(torch.uint8).cpu().numpy()


def _refuse_nonfinite(scores: torch.Tensor) -> None:
    """NaN scores lose every comparison in the argmax, so they would become background: an empty
    segmentation with no error. Refuse them instead.

    Raises:
        ModelError: naming how many voxels got NaN or infinite scores.
    """
    if math.isfinite(float(scores.sum())):  # a reduction: no voxel-sized temporary on the common path
        return
    bad = sum(int(channel.numel() - torch.isfinite(channel).sum()) for channel in scores)
    if bad:
        raise ModelError(
            f"the network produced NaN or infinite scores ({bad} values): its labels would be empty or wrong. The model "
            "is damaged or overflows in reduced precision; use another model (or --device cpu), and report it if "
            "this is the shipped model"
        )


#: Most concurrent CPU network calls chosen automatically (each gets threads // workers threads).
_MAX_AUTO_CPU_WORKERS = 4


def _worker_count(device: torch.device, cpu_workers: int | None) -> tuple[int, int]:
    """(concurrent network calls, torch threads for each) for a pass on ``device``."""
    if device.type != "cpu":
        return 1, 0
    threads = torch.get_num_threads()
    workers = min(threads, _MAX_AUTO_CPU_WORKERS) if cpu_workers is None else min(cpu_workers, max(threads, 1))
    return (workers, max(1, threads // workers)) if workers > 1 else (1, 0)


def _probabilities_in_order(
    padded: torch.Tensor,
    grid: "_WindowGrid",
    batches: list[list[int]],
    predictor: "_WindowPredictor",
    workers: tuple[int, int],
):
    """Yield ``(batch, probabilities)`` for each batch of window indices, in the order given.

    With ``workers = (w, t)``, ``w > 1``, up to ``2 w`` batches are extracted and run ahead in
    ``w`` threads with ``t`` torch threads each (torch's thread count is global, so it is set for
    the pass and restored after); the caller blends them in order while the next ones run, so
    the result does not depend on ``w``. The predictor's network time is then the time spent
    waiting for the workers.
    """

    def probabilities_of(batch: list[int]) -> torch.Tensor:
        return predictor(torch.cat([padded[(slice(None), slice(None), *grid.slices[i])] for i in batch]))

    count, threads_each = workers
    if count <= 1 or len(batches) <= 1:
        for batch in batches:
            yield batch, probabilities_of(batch)
        return
    threads_before = torch.get_num_threads()
    predictor.timed_per_call = False
    pending: deque[tuple[list[int], object]] = deque()
    executor = ThreadPoolExecutor(max_workers=count, thread_name_prefix="spinect-window")
    try:
        torch.set_num_threads(threads_each)
        upcoming = iter(batches)
        for batch in upcoming:
            pending.append((batch, executor.submit(probabilities_of, batch)))
            if len(pending) >= 2 * count:
                break
        while pending:
            batch, future = pending.popleft()
            waited = time.perf_counter()
            probabilities = future.result()
            predictor.network_s += time.perf_counter() - waited
            following = next(upcoming, None)
            if following is not None:
                pending.append((following, executor.submit(probabilities_of, following)))
            yield batch, probabilities
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads_before)
        predictor.timed_per_call = True


def _shifted(window: Sequence[slice], box: Sequence[slice]) -> tuple[slice, ...]:
    return tuple(slice(w.start - b.start, w.stop - b.start) for w, b in zip(window, box))


def _intersection(window: Sequence[slice], box: Sequence[slice]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(the overlap in box coordinates, the same voxels in window coordinates)."""
    starts = [max(w.start, b.start) for w, b in zip(window, box)]
    stops = [min(w.stop, b.stop) for w, b in zip(window, box)]
    local = tuple(slice(a - b.start, z - b.start) for a, z, b in zip(starts, stops, box))
    inner = tuple(slice(a - w.start, z - w.start) for a, z, w in zip(starts, stops, window))
    return local, inner


class _WindowGrid:
    """MONAI's window grid on a volume and which of its windows to run.

    Windows are those of :func:`monai.data.utils.dense_patch_slices` on the volume padded as
    MONAI pads it (an axis shorter than the patch gets ``(p - n) // 2`` voxels before, the rest
    after), in MONAI's order (z slowest). :meth:`require` adds a condition "the window, grown by a
    margin, holds a voxel of this mask"; a window runs when it meets every condition.
    """

    def __init__(self, shape_zyx: Sequence[int], patch_size_zyx: Sequence[int], stride_zyx: Sequence[int]) -> None:
        _check_geometry(patch_size_zyx, stride_zyx)
        self.shape = tuple(int(n) for n in shape_zyx)
        self.patch = tuple(int(p) for p in patch_size_zyx)
        self.pad_before = tuple(max(p - n, 0) // 2 for p, n in zip(self.patch, self.shape))
        self.pad_after = tuple(max(p - n, 0) - b for p, n, b in zip(self.patch, self.shape, self.pad_before))
        self.padded_shape = tuple(max(n, p) for n, p in zip(self.shape, self.patch))
        # MONAI steps by the patch where the padded axis equals it, else by the stride (monai_overlap).
        intervals = [p if n == p else int(s) for n, p, s in zip(self.padded_shape, self.patch, stride_zyx)]
        self.slices = dense_patch_slices(self.padded_shape, self.patch, intervals)
        self.starts = [sorted({sl[axis].start for sl in self.slices}) for axis in range(3)]
        position = [{start: i for i, start in enumerate(starts)} for starts in self.starts]
        self.index_zyx = np.array([[position[a][sl[a].start] for a in range(3)] for sl in self.slices], dtype=np.int64)
        self.runs = np.ones([len(s) for s in self.starts], dtype=bool)
        self.total = len(self.slices)

    def require(self, mask_zyx: np.ndarray, margin_zyx: Sequence[int]) -> None:
        """Run only windows that, grown by ``margin_zyx`` voxels, hold a True voxel of ``mask_zyx``.

        A box "any" is separable: reduce x to one value per window column, then y, then z
        (a few passes over the mask, instead of one box per window).
        """
        reduced = mask_zyx
        for axis in (2, 1, 0):
            n = mask_zyx.shape[axis]
            columns = []
            for start in self.starts[axis]:
                low = max(start - self.pad_before[axis] - int(margin_zyx[axis]), 0)
                high = min(start - self.pad_before[axis] + self.patch[axis] + int(margin_zyx[axis]), n)
                index = [slice(None)] * 3
                index[axis] = slice(low, max(high, low))
                columns.append(reduced[tuple(index)].any(axis=axis))
            reduced = np.stack(columns, axis=axis)
        self.runs &= reduced

    @property
    def run_count(self) -> int:
        return int(self.runs.sum())

    def run_indices(self) -> list[int]:
        """Indices into :attr:`slices` of the windows to run, in MONAI's order."""
        return np.flatnonzero(self.runs[tuple(self.index_zyx.T)]).tolist()

    def run_box(self) -> tuple[slice, ...]:
        """The smallest box (padded coordinates) holding every window that runs."""
        run = self.index_zyx[self.runs[tuple(self.index_zyx.T)]]
        return tuple(
            slice(self.starts[a][run[:, a].min()], self.starts[a][run[:, a].max()] + self.patch[a]) for a in range(3)
        )

    def skipped_overlapping(self, box: Sequence[slice]) -> list[int]:
        """Indices of skipped windows that share a voxel with ``box``."""
        skipped = ~self.runs[tuple(self.index_zyx.T)]
        return [
            i for i in np.flatnonzero(skipped).tolist()
            if all(sl.start < b.stop and b.start < sl.stop for sl, b in zip(self.slices[i], box))
        ]


class _WindowPredictor:
    """Softmax probabilities (float32) of a batch of windows.

    Runs them ``batch_size`` at a time on the compute device and halves that on out-of-memory
    errors; times the network. With ``mirror_flips`` (:func:`mirror_flip_dims`) each chunk also
    runs flipped along each of them and the probabilities are the mean over the passes.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        *,
        batch_size: int,
        memory_format: torch.memory_format,
        timer=None,
        input_dtype: torch.dtype | None = None,
        mirror_flips: tuple[tuple[int, ...], ...] = (),
    ) -> None:
        self.network = network
        self.mirror_flips = tuple(tuple(f) for f in mirror_flips)
        self.device = device
        self.amp_dtype = amp_dtype
        self.input_dtype = input_dtype
        self.batch_size = int(batch_size)
        self._halving = threading.Lock()
        self.memory_format = memory_format
        self.timed = timer is not None
        # False while worker threads run it: the pass then times how long it waits for them.
        self.timed_per_call = True
        self.network_s = 0.0

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        """Probabilities of ``windows`` in chunks of ``batch_size``, halving it on out-of-memory."""
        windows = windows.to(self.device)
        chunks: list[torch.Tensor] = []
        start = 0
        while start < windows.shape[0]:
            size = self.batch_size
            chunk = windows[start : start + size]
            try:
                chunks.append(self._forward(chunk))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                if size == 1:
                    raise DeviceOutOfMemory(
                        f"{windows.device} out of memory even with one window per network call ({exc})"
                    ) from exc
                with self._halving:  # CPU workers share the batch size: halve it once per failed size
                    if self.batch_size == size:
                        self.batch_size = size // 2
                        _release_cached_memory(windows.device)
                        log.warning("out of memory on %s: retrying with %d windows per batch", windows.device,
                                    self.batch_size)
                continue
            start += chunk.shape[0]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def _forward(self, windows: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        count = windows.shape[0]
        if count == 1 and windows.device.type == "cpu" and self.amp_dtype is None and self.input_dtype is None:
            # PyTorch runs float32 3D convolutions of a batch of one through its slow native kernel
            # (about 5x slower than oneDNN here); a batch of two takes the oneDNN path.
            windows = windows.expand(2, *windows.shape[1:])
        windows = windows.to(dtype=self.input_dtype, memory_format=self.memory_format)
        autocast = (
            torch.autocast(windows.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
        )
        # inference_mode is thread-local: enter it here, as windows may run in worker threads.
        with torch.inference_mode(), autocast:
            logits = self.network(windows)
            probabilities = torch.softmax(logits[:count].float(), dim=1)
            for dims in self.mirror_flips:
                flipped = windows.flip(dims).contiguous(memory_format=self.memory_format)
                probabilities += torch.softmax(self.network(flipped)[:count].float(), dim=1).flip(dims)
            if self.mirror_flips:
                probabilities /= float(len(self.mirror_flips) + 1)
        if self.timed and self.timed_per_call:
            if probabilities.device.type == "cuda":
                torch.cuda.synchronize(probabilities.device)
            self.network_s += time.perf_counter() - started
        return probabilities


def _inference_copy(
    network: torch.nn.Module,
    device: torch.device,
    memory_format: torch.memory_format,
    amp_dtype: torch.dtype | None = None,
) -> tuple[torch.nn.Module, torch.dtype | None]:
    """An eval-mode copy of ``network`` on ``device`` in ``memory_format``; the original is untouched.

    On the CPU, plain 2x2x2 max-pooling layers become :class:`spinect.nets.pooling.PairwiseMaxPool3d`
    (same result, about 10x faster there). For bfloat16, BatchNorm layers that follow a convolution
    are folded into it (in float32, with the running statistics) and, when no normalisation layer
    is left, the whole copy is cast to bfloat16: the same bfloat16 convolutions as under autocast
    without re-casting the weights at every call (11 % faster per window on one CPU core; within
    noise on two, docs/benchmarks.md).

    Returns:
        (the copy, the dtype its inputs must be cast to, or None to run it under autocast).
    """
    runner = copy.deepcopy(network)
    runner.eval()
    cast_dtype = None
    if device.type == "cpu":
        replace_max_pools(runner)
    if amp_dtype == torch.bfloat16:
        _fold_batch_norms(runner)
        if not any(isinstance(m, _NORM_LAYERS) for m in runner.modules()):
            cast_dtype = torch.bfloat16
    return runner.to(device=device, dtype=cast_dtype, memory_format=memory_format), cast_dtype


_CONV_LAYERS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_NORM_LAYERS = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)


def _fold_batch_norms(module: torch.nn.Module) -> None:
    """Fold eval-mode BatchNorm layers directly after a convolution (in an ``nn.Sequential``) into it."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for sequence in module.modules():
        if not isinstance(sequence, torch.nn.Sequential):
            continue
        for index in range(len(sequence) - 1):
            conv, norm = sequence[index], sequence[index + 1]
            if (isinstance(conv, _CONV_LAYERS) and isinstance(norm, torch.nn.modules.batchnorm._BatchNorm)
                    and norm.track_running_stats and norm.running_mean is not None):
                sequence[index] = fuse_conv_bn_eval(conv, norm)
                sequence[index + 1] = torch.nn.Identity()


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _check_geometry(patch_size_zyx: Sequence[int], stride_zyx: Sequence[int]) -> None:
    if len(patch_size_zyx) != 3 or len(stride_zyx) != 3:
        raise SpinectError(
            f"patch and stride need 3 values (z, y, x), got {tuple(patch_size_zyx)} and {tuple(stride_zyx)}"
        )
    for p, s in zip(patch_size_zyx, stride_zyx):
        if int(p) < 1 or not 1 <= int(s) <= int(p):
            raise SpinectError(
                f"stride {tuple(stride_zyx)} must be between 1 and the patch size {tuple(patch_size_zyx)} "
                "on every axis (a larger stride would leave voxels unpredicted)"
            )


def _blend_mode(blend: str) -> str:
    if blend not in BLEND_MODES:
        close = difflib.get_close_matches(str(blend), BLEND_MODES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpinectError(f"unknown blend {blend!r}{hint}; use one of {', '.join(BLEND_MODES)}")
    return BLEND_MODES[blend]


def _as_input_tensor(volume_zyx: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(1, 1, Z, Y, X) float32 CPU tensor; rejects anything but a non-empty finite 3D volume."""
    if isinstance(volume_zyx, torch.Tensor):
        volume = volume_zyx.detach()
    else:
        array = np.asarray(volume_zyx, dtype=np.float32)
        volume = torch.from_numpy(array if array.flags.writeable else array.copy())
    if volume.dim() != 3 or volume.numel() == 0:
        raise InputError(f"the network input must be a non-empty 3D (z, y, x) volume, got shape {tuple(volume.shape)}")
    volume = volume.to("cpu", torch.float32)
    # min and max propagate NaN and reach +-inf: one pass, no (Z, Y, X) boolean temporary.
    if not all(math.isfinite(float(v)) for v in torch.aminmax(volume)):
        raise InputError(
            "the normalised volume contains NaN or infinite values; "
            "check the CT's intensities and the model's normalisation"
        )
    return volume[None, None]


def _aggregation_device(compute_device: torch.device, shape_zyx: Sequence[int], num_classes: int) -> torch.device:
    """Blend on the GPU when output and count map fit easily in its free memory, else on the CPU."""
    if compute_device.type != "cuda":
        return torch.device("cpu")
    needed_bytes = (int(num_classes) + 2) * math.prod(shape_zyx) * 4  # output, count map, input
    free_bytes, _ = torch.cuda.mem_get_info(compute_device)
    return compute_device if needed_bytes <= _GPU_AGGREGATION_SHARE * free_bytes else torch.device("cpu")
