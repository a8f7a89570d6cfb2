"""Choosing the torch device and the mixed-precision dtype for inference."""

from __future__ import annotations

import os
import re

import torch

from spinect.errors import SpinectError

__all__ = ["resolve_device", "autocast_dtype", "cpu_has_native_bfloat16"]

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
    """The mixed-precision dtype for ``device``, or None for plain float32.

    Args:
        device: where the network runs.
        amp: None = automatic: mixed precision on CUDA, and bfloat16 on CPUs that compute it
            natively (:func:`cpu_has_native_bfloat16`; about 2x faster there with argmax
            agreement >= 99.99 % on the benchmark, see docs/benchmarks.md), else float32;
            True = always (bfloat16 on any CPU, emulated where not native); False = never.

    Returns:
        ``torch.bfloat16`` where the GPU supports it, else ``torch.float16`` on CUDA;
        ``torch.bfloat16`` on CPU when ``amp`` is True or automatic on a native-bfloat16 CPU;
        None for float32.
    """
    if amp is False:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp is None and not (device.type == "cpu" and cpu_has_native_bfloat16()):
        return None
    return torch.bfloat16


def cpu_has_native_bfloat16() -> bool:
    """True when this CPU has bfloat16 dot-product instructions (AVX512-BF16 or AMX-BF16).

    oneDNN then runs bfloat16 convolutions at about twice the float32 rate; without them it
    emulates bfloat16 and is slower than float32. ``SPINECT_CPU_BF16=0``/``1`` overrides the
    detection (e.g. to compare precisions, or on a CPU torch does not recognise).
    """
    override = os.environ.get("SPINECT_CPU_BF16", "").strip()
    if override in ("0", "1"):
        return override == "1"
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # noqa: BLE001 - a private probe that misbehaves means "no"
            continue
    return False

