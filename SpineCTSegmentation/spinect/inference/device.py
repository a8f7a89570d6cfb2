"""Choosing the torch device and the mixed-precision dtype for inference."""

from __future__ import annotations

import re

import torch

from spinect.errors import SpinectError

__all__ = ["resolve_device", "autocast_dtype"]

_CUDA_PATTERN = re.compile(r"^cuda(:\d+)?$")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a usable :class:`torch.device`.

    ``"auto"`` picks the first CUDA GPU when PyTorch sees one, else the CPU.

    Raises:
        SpinectError: unknown device name, CUDA requested on a machine without a usable CUDA
            GPU, or a GPU index that does not exist.
    """
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not _CUDA_PATTERN.match(name):
        raise SpinectError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise SpinectError(
            f"device {device!r} requested but PyTorch sees no CUDA GPU (CPU-only build or no driver); "
            "use --device cpu (or auto)"
        )
    resolved = torch.device(name)
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise SpinectError(
            f"device {device!r} requested but only {torch.cuda.device_count()} CUDA GPU(s) exist; "
            "use cuda:0, auto or --device cpu"
        )
    return resolved


def autocast_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The autocast dtype for ``device``, or None for plain float32.

    Args:
        device: where the network runs.
        amp: None = automatic (mixed precision on CUDA, float32 on CPU); True = always
            (bfloat16 on CPU); False = never.

    Returns:
        ``torch.bfloat16`` where the GPU supports it, else ``torch.float16`` on CUDA;
        ``torch.bfloat16`` on CPU when ``amp`` is True; None for float32.
    """
    if amp is False or (amp is None and device.type != "cuda"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16
