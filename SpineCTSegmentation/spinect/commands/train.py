"""``spinect train DATA --out RUN_DIR``: train a SPINECT network on labelled CTs.

The options are :class:`spinect.requests.TrainRequest`'s; :meth:`~spinect.requests.TrainRequest.to_config`
makes the :class:`spinect.train.TrainingConfig` that :func:`spinect.api.train` runs.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from spinect.requests import TrainRequest, add_arguments, from_args

__all__ = ["register", "run", "config_from_args"]

log = logging.getLogger("spinect")


def register(subparsers) -> None:
    """Add the ``train`` verb: its options are :class:`spinect.requests.TrainRequest`'s fields."""
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
    add_arguments(p, TrainRequest)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The :class:`spinect.train.TrainingConfig` an argument namespace describes (through :class:`TrainRequest`)."""
    return from_args(TrainRequest, args).to_config(command="spinect " + " ".join(shlex.quote(a) for a in sys.argv[1:]))


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
