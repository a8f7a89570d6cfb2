"""Setting up a run: read the dataset, split it, normalise it and describe the model (plan).

The intensity statistics (mean and standard deviation of the clipped HU values) come from the
TRAINING cases only, as SPINECT prescribes, and travel in the model plan; validation and test
cases are normalised with them too. A resumed run reuses the split and statistics it saved.
"""

from __future__ import annotations

import datetime
import json
import logging
import platform
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from spinect.errors import InputError
from spinect.io.atomic import atomic_output
from spinect.manifest import discover_cases
from spinect.plan import CLASS_NAMES, LEVEL_CLASS_GROUPS, LEVEL_CLASS_NAMES, ModelPlan
from spinect.preprocess import intensity_statistics, normalise_hu
from spinect.train.dataset import DataSplit, LoadedCase, load_cases, split_cases
from spinect.train.loss import SPINECT_LATE_WEIGHTS

__all__ = ["RunData", "prepare_run_data", "build_plan", "write_run_files", "run_class_names", "SPLIT_FILE_NAME"]

log = logging.getLogger("spinect")

SPLIT_FILE_NAME = "split.json"


@dataclass(frozen=True)
class RunData:
    """Normalised training and validation cases of a run.

    Attributes:
        train / val: cases whose ``image_hu`` holds the NORMALISED image (float32, z-scored).
        split: the case ids of each subset (test cases are not loaded).
        intensity_mean / intensity_std: statistics of the clipped training HU values.
        pad_value: normalised value of air (-1024 HU), used outside the volume.
        sources: the manifest's ``source`` values of the training cases (e.g. ``phantom``).
    """

    train: list[LoadedCase]
    val: list[LoadedCase]
    split: DataSplit
    intensity_mean: float
    intensity_std: float
    pad_value: float
    sources: tuple[str, ...]


#: ``--classes`` choices -> the network's classes.
RUN_CLASSES: dict[str, tuple[str, ...]] = {"spinect": CLASS_NAMES, "levels": LEVEL_CLASS_NAMES}


def run_class_names(config) -> tuple[str, ...]:
    """The classes this run trains (``config.classes``: ``spinect`` or ``levels``)."""
    choice = getattr(config, "classes", "spinect")
    if choice not in RUN_CLASSES:
        raise InputError(f"--classes must be one of {', '.join(RUN_CLASSES)}, got {choice!r}")
    return RUN_CLASSES[choice]


def prepare_run_data(config, *, saved: dict[str, Any] | None = None, intensity: tuple[float, float] | None = None) -> RunData:
    """Read ``config.data``, split it (or reuse the ``saved`` run's split) and normalise it.

    ``intensity`` (mean, std) fixes the normalisation (fine-tuning keeps the initial model's);
    by default it comes from the training cases (or the saved run).
    """
    cases = discover_cases(config.data)
    if saved is not None:
        split = DataSplit(**{k: tuple(v) for k, v in saved["split"].items()})
        missing = sorted(set(split.train + split.val) - {c.id for c in cases})
        if missing:
            raise InputError(f"--resume: cases {missing} of the saved split are no longer in {config.data}")
    else:
        split = split_cases(cases, seed=config.seed, fold=config.fold, folds=config.folds)
    by_id = {c.id: c for c in cases}
    val_ids = split.val[: config.max_val_cases] if config.max_val_cases else split.val
    options = dict(spacing_zyx_mm=config.spacing_zyx_mm, image_interpolation=config.image_interpolation, class_names=run_class_names(config))
    rerender = float(getattr(config, "rerender", 0.0))
    log.info("loading %d training and %d validation cases from %s", len(split.train), len(val_ids), config.data)
    train = load_cases([by_id[i] for i in split.train], with_structures=rerender > 0, **options)
    if rerender > 0 and not any(c.structures is not None for c in train):
        raise InputError(f"--rerender {rerender:g} paints new images from phantom structure maps, but none of the "
                         f"{len(train)} training cases in {config.data} has one (manifest field 'structures'); "
                         "train on cases written by `spinect phantom`, or leave out --rerender")
    val = load_cases([by_id[i] for i in val_ids], **options)
    if saved is not None:
        mean, std = (float(v) for v in saved["intensity"])
    elif intensity is not None:
        mean, std = (float(v) for v in intensity)
    else:
        mean, std = intensity_statistics([c.image_hu for c in train], hu_window=config.hu_window)
    window = dict(hu_window=config.hu_window, mean=mean, std=std)
    normalised = [
        [LoadedCase(c.id, normalise_hu(c.image_hu, **window), c.labels, c.spacing_zyx_mm, c.structures) for c in group]
        for group in (train, val)
    ]
    pad_value = float(normalise_hu(np.array([-1024.0], np.float32), **window)[0])
    sources = tuple(sorted({by_id[i].source for i in split.train if by_id[i].source}))
    return RunData(normalised[0], normalised[1], split, mean, std, pad_value, sources)


def build_plan(config, data: RunData) -> ModelPlan:
    """The model plan of this run (architecture, normalisation, windowing, provenance)."""
    import torch

    from spinect import __version__

    architecture = {
        "name": "spinect_unet", "base_width": int(config.base_width), "levels": int(config.levels),
        "in_channels": 1, "num_classes": len(run_class_names(config)), "norm": config.norm,
    }
    provenance = {
        "training_data": ", ".join(data.sources) or "unspecified",
        "data": str(config.data),
        "cases": data.split.as_dict(),
        "command": config.command or "spinect.train.train(...)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fold": int(config.fold), "folds": int(config.folds), "seed": int(config.seed),
        "iterations": int(config.total_iterations), "batch_size": int(config.batch_size), "lr": float(config.lr),
        "loss": _loss_text(float(getattr(config, "early_nerve_weight", 20.0))),
        "rerender": _rerender_text(config, data),
        "spinect_version": __version__, "torch_version": torch.__version__, "python": platform.python_version(),
    }
    return ModelPlan(
        architecture=architecture, class_names=run_class_names(config),
        class_groups=dict(LEVEL_CLASS_GROUPS) if run_class_names(config) == LEVEL_CLASS_NAMES else {},
        spacing_zyx_mm=tuple(config.spacing_zyx_mm),
        hu_window=tuple(config.hu_window), intensity_mean=data.intensity_mean, intensity_std=data.intensity_std,
        patch_size_zyx=tuple(config.patch_size_zyx), stride_zyx=tuple(config.stride_zyx),
        image_interpolation=config.image_interpolation, training_status=config.training_status,
        provenance=provenance, model_version=str(config.model_version),
    )


def write_run_files(config, data: RunData) -> None:
    """``split.json`` (case ids per subset) in the run folder."""
    payload = {"fold": config.fold, "folds": config.folds, "seed": config.seed, **data.split.as_dict(), "argv": sys.argv}
    with atomic_output(config.out / SPLIT_FILE_NAME) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


def _rerender_text(config, data: RunData) -> str:
    """How the training images were re-rendered (:mod:`spinect.phantom.rerender`), for the provenance."""
    share = float(getattr(config, "rerender", 0.0))
    if share <= 0:
        return "none: every patch shows its case's own CT"
    with_maps = sum(c.structures is not None for c in data.train)
    cases = "1 training case" if with_maps == 1 else f"{with_maps} training cases"
    return (f"{share:.0%} of the patches of the {cases} with a phantom structure map painted anew from it "
            f"({getattr(config, 'rerender_mode', 'mixed')} mode, SynthSeg-style)")


def _loss_text(early_nerve_weight: float) -> str:
    """The loss schedule in words, for the plan's provenance (one weight when it never switches)."""
    late = SPINECT_LATE_WEIGHTS[2]
    if early_nerve_weight == late:
        return f"weighted softmax cross-entropy 1:1:{late:g} throughout"
    return (f"weighted softmax cross-entropy 1:1:{early_nerve_weight:g} for the first 40 % of iterations, "
            f"then 1:1:{late:g}")
