"""``spinect train DATA --out RUN_DIR``: train a SPINECT network on labelled CTs."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

__all__ = ["register", "run", "config_from_args"]

log = logging.getLogger("spinect")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a SPINECT network on labelled CTs",
        description=(
            "Train the SPINECT 3D U-Net (weighted cross-entropy 1:1:20 then 1:1:2, batch 4, Adam 5e-4, "
            "32x64x64 patches) on a dataset folder. RUN_DIR receives best.pt/last.pt (model files for "
            "`spinect segment --model`), last_state.pt (for --resume), CSV logs and curves.png. "
            "Run under torchrun for several GPUs."
        ),
    )
    p.add_argument("data", help="dataset folder: manifest.json, or <id>_ct.nii.gz + <id>_labels.nii.gz (or <id>.seg.nrrd) pairs")
    p.add_argument("--out", required=True, help="run folder for checkpoints and logs")
    p.add_argument("--fold", type=int, default=0, help="test fold held out (0..folds-1; default 0)")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5: 32:8:10 of 50 cases)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, default=None, help="epochs of --iterations-per-epoch iterations (default 100)")
    length.add_argument("--iterations", type=int, default=None, help="training iterations (overrides --epochs)")
    p.add_argument("--iterations-per-epoch", type=int, default=100, help="iterations per epoch (default 100)")
    p.add_argument("--val-every", type=int, default=100, help="validate every N iterations (default 100, as SPINECT)")
    p.add_argument("--max-val-cases", type=int, default=None, help="validate on at most N validation cases (default all)")
    p.add_argument("--base-width", type=int, default=32, help="channels of the first U-Net level (default 32: the paper's 22.6 M parameters)")
    p.add_argument("--norm", choices=("batch", "instance", "none"), default="batch", help="normalisation layers (default batch)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last_state.pt")
    p.add_argument("--init", default=None, metavar="MODEL.pt",
                   help="fine-tune: start from this model's weights (its architecture, grid and HU normalisation are kept; "
                        "e.g. the default model, then your own corrected cases)")
    p.add_argument("--classes", choices=("spinect", "levels"), default="spinect",
                   help="spinect: background, bone, nerve (default); levels: L1-L5, sacrum, ilium, other bone, dural sac, "
                        "roots (phantom cases take them from their structure maps); a level model still gives bone and "
                        "nerve, and `segment --levels` the vertebral levels. --init with a 3-class model starts each class "
                        "as its bone or nerve")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="grid the network works on, mm (default 1 1 1, SPINECT's, or the --init model's; e.g. 3 3 3 for a "
                        "level model that sees 96x192x192 mm per window)")
    p.add_argument("--patch", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="training and inference window in voxels (default 32 64 64, SPINECT's)")
    p.add_argument("--stride", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="sliding-window stride of the model's inference, voxels (default 20 40 40)")
    p.add_argument("--early-nerve-weight", type=float, default=20.0,
                   help="nerve class weight for the first 40 %% of iterations (default 20, SPINECT's; then 2)")
    p.add_argument("--stop-at", type=int, default=None, help="pause after N iterations (checkpointed; continue later with --resume)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the network and the sampling (default 0)")
    p.add_argument("--batch-size", type=int, default=4, help="patches per iteration and process (default 4)")
    p.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (default 5e-4)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--precision", choices=("fp32", "auto", "bf16"), default="fp32",  # spinect.train.PRECISIONS
                   help="fp32 (default; reproducible); auto: bfloat16 mixed precision where the GPU/CPU computes it "
                        "natively (about 1.6x faster per step on such CPUs, not bit-reproducible); bf16: always")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The :class:`spinect.train.TrainingConfig` an argument namespace describes."""
    from spinect.errors import InputError
    from spinect.train import PRECISIONS, TrainingConfig

    for name in ("batch_size", "val_every", "iterations_per_epoch", "base_width", "folds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if (args.iterations is not None and args.iterations < 1) or (args.epochs is not None and args.epochs < 1):
        raise InputError("--iterations / --epochs must be >= 1")
    spacing = getattr(args, "spacing", None)
    if spacing is not None and not all(0.3 <= v <= 10.0 for v in spacing):
        raise InputError(f"--spacing must be 3 voxel sizes within 0.3-10 mm, got {spacing}")
    patch, stride = getattr(args, "patch", None), getattr(args, "stride", None)
    if patch is not None and not all(16 <= v <= 256 and v % 16 == 0 for v in patch):
        raise InputError(f"--patch must be 3 multiples of 16 within 16-256 voxels (the U-Net halves it 4 times), got {patch}")
    if stride is not None and (not all(v >= 1 for v in stride)
                               or any(st > pa for st, pa in zip(stride, patch or (32, 64, 64)))):
        raise InputError(f"--stride must be 3 positive integers no larger than the window, got {stride}")
    grid = {}
    if spacing is not None:
        grid["spacing_zyx_mm"] = tuple(float(v) for v in spacing)
    if patch is not None:
        grid["patch_size_zyx"] = tuple(int(v) for v in patch)
    if stride is not None:
        grid["stride_zyx"] = tuple(int(v) for v in stride)
    if not Path(args.data).is_dir():
        raise InputError(f"dataset folder {args.data} not found; pass a folder with manifest.json or <id>_ct/<id>_labels pairs")
    return TrainingConfig(
        data=Path(args.data), out=Path(args.out), fold=args.fold, folds=args.folds,
        epochs=args.epochs if args.epochs is not None else 100, iterations_per_epoch=args.iterations_per_epoch,
        iterations=args.iterations, val_every=args.val_every, max_val_cases=args.max_val_cases,
        base_width=args.base_width, norm=args.norm, device=args.device, resume=args.resume, stop_at=args.stop_at, seed=args.seed,
        batch_size=args.batch_size, lr=args.lr, num_threads=args.threads, show_progress=not args.no_progress,
        amp=PRECISIONS[getattr(args, "precision", "fp32")], init=_init_model(getattr(args, "init", None)),
        classes=getattr(args, "classes", "spinect"),
        early_nerve_weight=_positive_weight(getattr(args, "early_nerve_weight", 20.0)),
        **grid, grid_from_init=not grid,
        command="spinect " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )


def _positive_weight(value: float) -> float:
    """``--early-nerve-weight``: a finite number > 0."""
    import math

    from spinect.errors import InputError

    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise InputError(f"--early-nerve-weight must be a finite number > 0, got {value!r}")
    return float(value)


def _init_model(value: str | None) -> Path | None:
    """``--init`` as a path; ``default`` names the shipped model."""
    from spinect.errors import InputError
    from spinect.model_file import default_model_path

    if value is None:
        return None
    path = default_model_path() if value == "default" else Path(value)
    if not path.is_file():
        raise InputError(f"--init model {value} not found; pass a .pt model file (or 'default' for the shipped model)")
    return path


def run(args: argparse.Namespace) -> int:
    import os

    from spinect.api import train

    config = config_from_args(args)
    result = train(config=config)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only process 0 validates and reports
    scored = "bone, nerve" + (" and each level" if config.classes == "levels" else "")
    log.info(
        "best mean validation Dice (%s) %.4f at step %d -> %s; last -> %s",
        scored, result.best_score, result.best_step, result.best_model, result.last_model,
    )
    return 0
