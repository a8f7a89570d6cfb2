"""Sliding-window inference on the 1 mm grid: SPINECT's summed probabilities, or gaussian blending.

SPINECT (paper, Table 1) slides a 32 x 64 x 64 window with stride 20 x 40 x 40 over the
normalised CT, adds each window's softmax probabilities into the output and takes the argmax.
MONAI's :func:`monai.inferers.sliding_window_inference` does the tiling, padding, cropping and
blending; this module turns a stride into MONAI's ``overlap`` so that MONAI steps by exactly that
stride, runs the network in eval mode under ``torch.inference_mode`` and (on CUDA) autocast, and
reports windows through a ``progress(done_windows, total_windows)`` callback.

Windows along an axis of ``n`` voxels (patch ``p``, stride ``s``) start at ``0, s, 2s, ...`` and
the last one is shifted back to end at ``n``: ``1`` window if ``n <= p`` (the volume is padded to
``p`` and the result cropped back), else ``ceil((n - p) / s) + 1``.
"""

from __future__ import annotations

import difflib
import math
from contextlib import nullcontext
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from spinect.errors import InputError, SpinectError
from spinect.inference.device import autocast_dtype, resolve_device

__all__ = ["BLEND_MODES", "WindowProgress", "count_windows", "monai_overlap", "predict_probabilities", "predict_labels"]

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


def predict_probabilities(
    volume_zyx: np.ndarray | torch.Tensor,
    network: torch.nn.Module,
    *,
    patch_size_zyx: Sequence[int] = (32, 64, 64),
    stride_zyx: Sequence[int] = (20, 40, 40),
    blend: str = "sum",
    batch_size: int = 4,
    device: str | torch.device = "auto",
    amp: bool | None = None,
    padding_value: float | None = None,
    progress: WindowProgress | None = None,
) -> torch.Tensor:
    """Per-class scores of a whole volume by sliding-window inference.

    For ``blend="sum"`` the result is SPINECT's sum of window probabilities divided by the number
    of windows covering each voxel, i.e. the **mean** softmax probability; dividing by a positive
    per-voxel count leaves the argmax unchanged. For ``"gaussian"`` it is the gaussian-weighted
    mean (sigma = patch / 8). Either way every voxel's scores sum to 1.

    Args:
        volume_zyx: normalised CT on the network's grid, (Z, Y, X) float; any size (axes
            shorter than the patch are padded with ``padding_value`` and cropped back).
        network: maps (N, 1, z, y, x) to logits (N, C, z, y, x); moved to ``device``, run in
            eval mode (its train/eval mode is restored afterwards).
        patch_size_zyx: window (z, y, x) in voxels; each must suit the network (SPINECT: multiple of 16).
        stride_zyx: step between windows (z, y, x) in voxels, ``1 <= stride <= patch``.
        blend: ``"sum"`` or ``"gaussian"``.
        batch_size: windows per network call.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a torch.device.
        amp: None = autocast (bfloat16, else float16) on CUDA and float32 on CPU; True/False forces.
        padding_value: value of padded voxels; None = the volume's minimum (air after HU clipping).
        progress: ``progress(done_windows, total_windows)`` after every batch of windows.

    Returns:
        (C, Z, Y, X) float32 CPU tensor of blended softmax probabilities.

    Raises:
        InputError: the volume is not a non-empty 3D array of finite numbers.
        SpinectError: bad patch, stride, blend, batch size or device.
    """
    mode = _blend_mode(blend)
    if batch_size < 1:
        raise SpinectError(f"batch size must be >= 1, got {batch_size}")
    inputs = _as_input_tensor(volume_zyx)
    shape_zyx = tuple(inputs.shape[2:])
    total = count_windows(shape_zyx, patch_size_zyx, stride_zyx)
    compute_device = resolve_device(device)
    out_device = _aggregation_device(compute_device, shape_zyx, getattr(network, "num_classes", 8))
    cval = float(inputs.min()) if padding_value is None else float(padding_value)
    predictor = _WindowPredictor(network, autocast_dtype(compute_device, amp), total, progress)
    was_training = network.training
    network.to(compute_device).eval()
    try:
        with torch.inference_mode():
            scores = sliding_window_inference(
                inputs.to(out_device),
                roi_size=tuple(int(p) for p in patch_size_zyx),
                sw_batch_size=int(batch_size),
                predictor=predictor,
                overlap=monai_overlap(patch_size_zyx, stride_zyx),
                mode=mode,
                sigma_scale=_GAUSSIAN_SIGMA_SCALE,
                padding_mode="constant",
                cval=cval,
                sw_device=compute_device,
                device=out_device,
            )
    finally:
        network.train(was_training)
    return scores[0].to("cpu", torch.float32).contiguous()


def predict_labels(volume_zyx: np.ndarray | torch.Tensor, network: torch.nn.Module, **options) -> np.ndarray:
    """Argmax of :func:`predict_probabilities` (same keyword options): (Z, Y, X) uint8 labels."""
    scores = predict_probabilities(volume_zyx, network, **options)
    return torch.argmax(scores, dim=0).to(torch.uint8).numpy()


def monai_overlap(patch_size_zyx: Sequence[int], stride_zyx: Sequence[int]) -> tuple[float, ...]:
    """MONAI ``overlap`` per axis that makes MONAI step by exactly ``stride_zyx``.

    MONAI steps by ``int(patch * (1 - overlap))``; the naive ``1 - stride / patch`` can land a
    hair below ``stride`` in floating point (e.g. 19.999 -> 19), so we aim at ``stride + 0.5``.
    """
    _check_geometry(patch_size_zyx, stride_zyx)
    return tuple(0.0 if s == p else (p - s - 0.5) / p for p, s in zip(patch_size_zyx, stride_zyx))


class _WindowPredictor:
    """Softmax probabilities (float32) of a batch of windows; counts windows for progress."""

    def __init__(
        self,
        network: torch.nn.Module,
        amp_dtype: torch.dtype | None,
        total: int,
        progress: WindowProgress | None,
    ) -> None:
        self.network = network
        self.amp_dtype = amp_dtype
        self.total = total
        self.progress = progress
        self.done = 0

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        windows = windows.to(memory_format=_memory_format(self.network))
        autocast = (
            torch.autocast(windows.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
        )
        with autocast:
            logits = self.network(windows)
        probabilities = torch.softmax(logits.float(), dim=1)
        self.done += windows.shape[0]
        if self.progress is not None:
            self.progress(self.done, self.total)
        return probabilities


def _memory_format(network: torch.nn.Module) -> torch.memory_format:
    """channels_last_3d when the network's first 5D weight is stored that way, else contiguous."""
    for parameter in network.parameters():
        if parameter.dim() == 5:
            if parameter.is_contiguous(memory_format=torch.channels_last_3d) and not parameter.is_contiguous():
                return torch.channels_last_3d
            break
    return torch.contiguous_format


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
    if not bool(torch.isfinite(volume).all()):
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
