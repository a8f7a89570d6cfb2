"""Resumable training state (``RUN_DIR/last_state.pt``) and distributed-training setup.

The model files ``best.pt`` / ``last.pt`` hold only weights and plan (:mod:`spinect.model_file`).
``last_state.pt`` adds what ``--resume`` needs to continue exactly where training stopped: the
step, optimizer state (Adam moments), best validation score, RNG states, split and intensity
statistics. It is a plain dict of tensors and JSON values, readable with ``weights_only=True``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinect.errors import InputError
from spinect.io.atomic import atomic_output

__all__ = ["STATE_NAME", "save_training_state", "load_training_state", "capture_rng", "restore_rng", "DistributedContext", "init_distributed"]

STATE_NAME = "last_state.pt"


def capture_rng() -> dict[str, Any]:
    """Torch (CPU and CUDA), NumPy legacy and Python RNG states as tensors / JSON values."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": repr(random.getstate())}
    legacy = np.random.get_state()
    state["numpy"] = {"keys": torch.as_tensor(legacy[1].astype(np.int64)), "pos": int(legacy[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (missing entries are skipped)."""
    import ast

    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        keys = state["numpy"]["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, int(state["numpy"]["pos"]), 0, 0.0))
    if "python" in state:
        random.setstate(_as_tuple(ast.literal_eval(state["python"])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_training_state(run_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (network/optimizer state dicts, step, ...) atomically to ``last_state.pt``."""
    path = Path(run_dir) / STATE_NAME
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
    return path


def load_training_state(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``run_dir/last_state.pt``.

    Raises:
        InputError: no state file (nothing to resume) or an unreadable one.
    """
    path = Path(run_dir) / STATE_NAME
    if not path.is_file():
        raise InputError(f"--resume: {path} not found; start a new run without --resume or pass the run folder of an earlier run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise InputError(f"--resume: cannot read {path} ({type(exc).__name__}: {exc}); start a new run") from exc


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a ``torchrun`` job (world size 1 without one)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group when ``WORLD_SIZE > 1`` (torchrun sets it): NCCL on CUDA, else gloo."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(world_size=world_size, rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))
