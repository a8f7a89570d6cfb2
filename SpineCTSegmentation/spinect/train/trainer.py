"""The SPINECT training loop (``spinect train``).

Paper recipe (section "Training" and "5-fold validation"): 32 x 64 x 64 patches, mini-batch 4,
learning rate 5e-4 (we use Adam), He initialisation, weighted cross-entropy 1:1:20 then 1:1:2
(:mod:`spinect.train.loss`), augmentation (:mod:`spinect.train.augment`), and every N iterations
a full sliding-window segmentation of the validation cases; the weights are saved whenever the
mean Dice of bone and nerve beats the best so far.

A run folder holds ``best.pt`` and ``last.pt`` (model files with their plan, loadable by
:func:`spinect.model_file.load_model`), ``last_state.pt`` (for ``--resume``), ``split.json``,
``train_log.csv``, ``val_log.csv`` and ``curves.png``. Under ``torchrun`` (``WORLD_SIZE > 1``)
each process trains on its own patches with DistributedDataParallel; process 0 validates and
writes the files.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinect.errors import InputError
from spinect.plan import CLASS_NAMES, ModelPlan
from spinect.train.augment import augment_patch, build_augmentation, region_size_for
from spinect.train.dataset import DataSplit, LoadedCase
from spinect.train.history import TrainingLog
from spinect.train.loss import SPINECT_EARLY_WEIGHTS, SPINECT_LATE_WEIGHTS, WeightSchedule, weighted_cross_entropy
from spinect.train.sampling import DEFAULT_CLASS_FRACTIONS, PatchSampler
from spinect.train.setup import RunData, build_plan, prepare_run_data, write_run_files
from spinect.train.state import STATE_NAME, DistributedContext, capture_rng, init_distributed, load_training_state, restore_rng, save_training_state

__all__ = ["PRECISIONS", "TrainingConfig", "TrainingResult", "train", "training_autocast_dtype", "validate"]

log = logging.getLogger("spinect")

#: ``--precision`` names -> :attr:`TrainingConfig.amp` (fp32 first: the default).
PRECISIONS: dict[str, bool | None] = {"fp32": False, "auto": None, "bf16": True}


@dataclass
class TrainingConfig:
    """Everything ``spinect train`` can set (defaults: SPINECT's recipe).

    ``iterations`` wins over ``epochs``; an epoch is ``iterations_per_epoch`` iterations (SPINECT
    validated every 100 iterations and switched weights after 40 of 100 epochs). ``stop_at`` pauses
    the run after that many iterations (checkpointed; continue with ``resume``) without changing
    the schedule, which always spans ``total_iterations``; ``time_limit_s`` pauses it the same way
    at the first step that ends after that many seconds of the loop (a lent GPU's budget).

    Speed: ``channels_last`` runs the network in ``channels_last_3d`` layout (oneDNN/cuDNN's fast
    path; results equal to the contiguous layout up to rounding). ``amp`` False (default) = float32;
    None = bfloat16 autocast where the device computes it natively (GPUs with bfloat16, CPUs with
    AVX512-BF16/AMX; weights, optimiser and loss stay float32); True = always bfloat16. On a 2-core
    AVX512-BF16 CPU a step of the base-width-8 network takes 0.82 s contiguous float32, 0.43 s
    channels_last float32 and 0.27 s channels_last bfloat16. bfloat16 is not the default: its CPU
    backward passes are not bit-reproducible (a resumed run no longer ends on the same weights)
    and with tiny networks it produced non-finite gradients; steps whose loss or gradients are not
    finite are skipped with a warning in any precision.

    ``classes``: ``spinect`` (background, bone, nerve) or ``levels`` (:data:`spinect.plan.
    LEVEL_CLASS_NAMES`: L1-L5, sacrum, ilium, other bone, dural sac, roots; phantom cases take
    them from their structure maps). A level model still gives bone and nerve (its plan maps
    its classes onto them), and with ``segment --levels`` the vertebral levels too.
    """

    data: Path
    out: Path
    fold: int = 0
    folds: int = 5
    epochs: int = 100
    iterations_per_epoch: int = 100
    iterations: int | None = None
    val_every: int = 100
    base_width: int = 32
    levels: int = 5
    norm: str = "batch"
    device: str = "auto"
    resume: bool = False
    seed: int = 0
    batch_size: int = 4
    lr: float = 5e-4
    patch_size_zyx: tuple[int, int, int] = (32, 64, 64)
    stride_zyx: tuple[int, int, int] = (20, 40, 40)
    spacing_zyx_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hu_window: tuple[float, float] = (-1000.0, 2000.0)
    image_interpolation: str = "linear"
    class_fractions: dict[int, float] = field(default_factory=lambda: dict(DEFAULT_CLASS_FRACTIONS))
    noise_std: float = 0.05
    max_jitter_mm: float = 0.2
    max_val_cases: int | None = None
    stop_at: int | None = None
    time_limit_s: float | None = None
    training_status: str = "trained"
    model_version: str = "1"
    command: str = ""
    num_threads: int | None = None
    show_progress: bool = True
    amp: bool | None = False
    channels_last: bool = True
    init: Path | None = None
    classes: str = "spinect"
    early_nerve_weight: float = 20.0
    #: With ``init``: take the grid (spacing, patch) from the init model (True) or keep this config's
    #: ``spacing_zyx_mm``, ``patch_size_zyx`` and ``stride_zyx`` (False: e.g. a coarse level model
    #: with a large window, started from the 1 mm default model's weights).
    grid_from_init: bool = True
    #: Share of the training patches whose image is painted anew from the case's phantom structure
    #: map (:mod:`spinect.phantom.rerender`; cases without one keep their CT), and the painting's mode.
    rerender: float = 0.0
    rerender_mode: str = "mixed"

    @property
    def total_iterations(self) -> int:
        return int(self.iterations) if self.iterations is not None else int(self.epochs * self.iterations_per_epoch)


@dataclass(frozen=True)
class TrainingResult:
    """Where the run's files are and how it ended."""

    run_dir: Path
    best_model: Path
    last_model: Path
    best_score: float
    best_step: int
    steps_done: int
    split: DataSplit
    final_loss: float


def train(config: TrainingConfig) -> TrainingResult:
    """Train a SPINECT network on ``config.data`` and write the run folder ``config.out``."""
    from spinect.inference import resolve_device
    from spinect.nets import build_network

    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    _check_rerender(config)
    device = resolve_device(config.device)
    context = init_distributed(device)
    if context.enabled and device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    config.out = Path(config.out)
    config.out.mkdir(parents=True, exist_ok=True)
    if not config.resume and (config.out / STATE_NAME).is_file():
        raise InputError(f"{config.out} already holds a training run; pass --resume to continue it or choose another --out")
    state = load_training_state(config.out) if config.resume else None
    init_weights = _apply_init_model(config) if config.init is not None else None
    data = prepare_run_data(config, saved=state, intensity=init_weights[1] if init_weights else None)
    plan = build_plan(config, data)
    precision = "bfloat16 mixed precision" if training_autocast_dtype(device, config.amp) is not None else "float32"
    plan = plan.replace(provenance={**plan.provenance, "precision": precision, "device": device.type})
    torch.manual_seed(config.seed)
    network = build_network(**plan.architecture).to(device)
    if init_weights is not None and state is None:
        network.load_state_dict(init_weights[0], strict=True)
        plan = plan.replace(provenance={**plan.provenance, "init_model": str(config.init)})
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    start_step, best = 0, (-1.0, -1)
    if state is not None:
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"])
        start_step, best = int(state["step"]), (float(state["best_score"]), int(state["best_step"]))
        log.info("resuming %s at step %d (best mean Dice %.4f at step %d)", config.out, start_step, *best)
    model = torch.nn.parallel.DistributedDataParallel(network, device_ids=[device] if device.type == "cuda" else None) if context.enabled else network
    if context.is_main:
        write_run_files(config, data)
    loop = _Loop(config, context, device, model, network, optimizer, plan, data, best)
    try:
        return loop.run(start_step)
    finally:
        if context.enabled:
            torch.distributed.destroy_process_group()


def _check_rerender(config: TrainingConfig) -> None:
    """Refuse a re-rendering share outside [0, 1] or an unknown mode before anything is read."""
    from spinect.phantom.rerender import RERENDER_MODES

    share = float(config.rerender)
    if not 0.0 <= share <= 1.0:
        raise InputError(f"--rerender is the share of patches painted anew, a number in 0..1; got {config.rerender!r}")
    if config.rerender_mode not in RERENDER_MODES:
        raise InputError(f"--rerender-mode must be one of {', '.join(RERENDER_MODES)}, got {config.rerender_mode!r}")


def _apply_init_model(config: TrainingConfig) -> tuple[dict[str, torch.Tensor], tuple[float, float]]:
    """Read the ``--init`` model: its architecture, grid and HU normalisation replace the
    config's (the weights only make sense on the inputs they were trained on).

    Returns:
        (state dict of its weights, (intensity mean, intensity std) of its plan).

    Raises:
        InputError: the file is not a readable model, or its classes differ from this run's.
    """
    from spinect.errors import ModelError
    from spinect.model_file import load_model
    from spinect.train.setup import run_class_names

    try:
        network, plan = load_model(config.init, device="cpu")
    except ModelError as exc:
        raise InputError(f"--init {config.init}: {exc}") from exc
    wanted = run_class_names(config)
    weights = network.state_dict()
    if tuple(plan.class_names) != wanted:
        if not (tuple(plan.class_names) == CLASS_NAMES and config.classes == "levels"):
            raise InputError(
                f"--init {config.init} predicts classes {list(plan.class_names)}, but training uses {list(wanted)}; "
                "start from a model with the same classes (or a 3-class model for --classes levels) or train from scratch"
            )
        weights = expand_head_to_levels(weights)
    arch = plan.architecture
    config.base_width = int(arch.get("base_width", config.base_width))
    config.levels = int(arch.get("levels", config.levels))
    config.norm = str(arch.get("norm", config.norm))
    if config.grid_from_init:
        config.spacing_zyx_mm = tuple(float(v) for v in plan.spacing_zyx_mm)
        config.patch_size_zyx = tuple(int(v) for v in plan.patch_size_zyx)
    else:
        log.info("fine-tuning on a %s mm grid with %s-voxel windows; %s was trained on %s mm, %s", tuple(config.spacing_zyx_mm),
                 tuple(config.patch_size_zyx), config.init, tuple(plan.spacing_zyx_mm), tuple(plan.patch_size_zyx))
    config.hu_window = tuple(float(v) for v in plan.hu_window)
    log.info("fine-tuning from %s (base width %d, %d levels)", config.init, config.base_width, config.levels)
    return weights, (float(plan.intensity_mean), float(plan.intensity_std))


def expand_head_to_levels(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A 3-class model's weights with its 1x1x1 head copied onto a level model's classes.

    Each level-model class starts as the 3-class model's class it belongs to (every bone class
    as ``bone``, dural sac and roots as ``nerve``), so the level model starts with the same
    bone/nerve labels and fine-tuning only has to learn to tell the levels apart.
    """
    from spinect.plan import LEVEL_CLASS_GROUPS, LEVEL_CLASS_NAMES

    source = {"background": 0, **{n: 1 for n in LEVEL_CLASS_GROUPS["bone"]}, **{n: 2 for n in LEVEL_CLASS_GROUPS["nerve"]}}
    rows = torch.tensor([source[n] for n in LEVEL_CLASS_NAMES])
    out = dict(state_dict)
    for key in ("head.weight", "head.bias"):
        if key not in out:
            raise InputError(f"the --init model has no 1x1x1 head ({key}); it cannot start a level model")
        out[key] = out[key][rows].clone()
    return out


class _Loop:
    """State of one training run; :meth:`run` iterates from a given step to the end."""

    def __init__(self, config, context: DistributedContext, device, model, network, optimizer, plan: ModelPlan, data: RunData, best) -> None:
        self.config, self.context, self.device = config, context, device
        self.model, self.network, self.optimizer, self.plan, self.data = model, network, optimizer, plan, data
        self.best_score, self.best_step = best
        self.schedule = class_weight_schedule(plan, config.total_iterations, early_nerve_weight=config.early_nerve_weight)
        region = region_size_for(config.patch_size_zyx, max_jitter_mm=config.max_jitter_mm, spacing_mm=min(config.spacing_zyx_mm))
        self.sampler = PatchSampler(
            [c.image_hu for c in data.train], [c.labels for c in data.train], region_size_zyx=region,
            class_fractions=class_fractions_for(plan, config.class_fractions), pad_image_value=data.pad_value,
            structures=[c.structures for c in data.train] if config.rerender > 0 else None,
        )
        self.window = dict(hu_window=plan.hu_window, mean=plan.intensity_mean, std=plan.intensity_std)
        self.augment = build_augmentation(
            config.patch_size_zyx, image_interpolation=config.image_interpolation, max_jitter_mm=config.max_jitter_mm,
            spacing_mm=min(config.spacing_zyx_mm), noise_std=config.noise_std,
        )
        self.foreground = list(validation_names(plan))
        self.skipped_steps = 0
        self.amp_dtype = training_autocast_dtype(device, config.amp)
        self.memory_format = torch.channels_last_3d if config.channels_last else torch.contiguous_format
        if config.channels_last:
            network.to(memory_format=self.memory_format)

    def run(self, start_step: int) -> TrainingResult:
        total = self.config.total_iterations
        history = None
        if self.context.is_main:  # only process 0 logs, validates and writes files
            resume_step = start_step if self.config.resume else None
            history = TrainingLog(self.config.out, class_names=self.foreground, resume_step=resume_step)
        bar = self._progress_bar(start_step, total)
        loss_value = float("nan")
        end = min(total, self.config.stop_at) if self.config.stop_at else total
        started = time.perf_counter()
        step = start_step
        while step < end:
            tic = time.perf_counter()
            loss_value = self._train_step(step)
            if history is not None:
                history.log_train(step, loss_value, self.schedule.weights_at(step)[-1], time.perf_counter() - tic)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", best=f"{max(self.best_score, 0):.3f}", refresh=False)
            if self.config.time_limit_s is not None and step + 1 < end and self._time_up(started):
                end = step + 1
                if self.context.is_main:
                    log.info("time limit of %.1f min reached: paused after %d iterations (continue with --resume)",
                             self.config.time_limit_s / 60.0, end)
            if (step + 1) % self.config.val_every == 0 or step + 1 == end:
                self._checkpoint(step + 1, history)
            step += 1
        if bar is not None:
            bar.close()
        if start_step >= total and self.context.is_main and not (self.config.out / "best.pt").is_file():
            self._checkpoint(total, history)
        return TrainingResult(
            run_dir=self.config.out, best_model=self.config.out / "best.pt", last_model=self.config.out / "last.pt",
            best_score=self.best_score, best_step=self.best_step, steps_done=max(end, start_step), split=self.data.split,
            final_loss=loss_value,
        )

    def _time_up(self, started: float) -> bool:
        """Whether ``time_limit_s`` has passed since ``started``; with several processes, on any of
        them (all stop at the same step, or their gradient all-reduces would wait forever)."""
        up = time.perf_counter() - started >= float(self.config.time_limit_s)
        if self.context.enabled:
            flag = torch.tensor([1.0 if up else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            up = bool(flag.item() > 0)
        return up

    def _train_step(self, step: int) -> float:
        # Per-step seeds: a resumed run draws exactly the patches the uninterrupted run would have.
        rng = np.random.default_rng([self.config.seed, self.context.rank, step])
        self.augment.set_random_state(seed=int(rng.integers(2**31)))
        images, labels = [], []
        for _ in range(self.config.batch_size):
            sample = self.sampler.sample(rng)
            box = sample.image
            if self.config.rerender > 0 and sample.structures is not None and rng.random() < self.config.rerender:
                box = self._rerender(sample.structures, rng)
            image, label = augment_patch(self.augment, box, sample.labels)
            images.append(image)
            labels.append(label)
        x = torch.stack(images).to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        y = torch.stack(labels).to(self.device, non_blocking=True)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            logits = self.model(x)
        loss = weighted_cross_entropy(logits.float(), y, self.schedule.weights_at(step))
        loss.backward()
        if not _finite_gradients(self.network, loss):
            # As a gradient scaler does: one bad step must not poison the weights with NaN.
            self.skipped_steps += 1
            log.warning("step %d: loss or gradients not finite; step skipped (%d so far)", step, self.skipped_steps)
            self.optimizer.zero_grad(set_to_none=True)
            return float(loss.detach())
        self.optimizer.step()
        return float(loss.detach())

    def _rerender(self, structures: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A new normalised image of one box, painted from its structure codes on the training device
        (one CPU thread: 13-20 ms per box, ``benchmarks/bench_phantom.py``), seeded from ``rng``."""
        from spinect.phantom.rerender import rerender_ct
        from spinect.preprocess import normalise_hu

        hu, _ = rerender_ct(structures, self.config.spacing_zyx_mm, int(rng.integers(2**63 - 1)),
                            mode=self.config.rerender_mode, device=self.device)
        return normalise_hu(hu, **self.window)

    def _checkpoint(self, steps_done: int, history: TrainingLog | None) -> None:
        """Validate, keep the best weights, write last.pt / last_state.pt and the curves (process 0)."""
        if self.context.is_main:
            dice = validate(self.network, self.data.val, self.plan, device=self.device)
            # Mean Dice of what validation reports: a level model's bone, nerve and each level.
            score = float(np.mean(list(dice.values())))
            improved = score > self.best_score
            if improved:
                self.best_score, self.best_step = score, steps_done
            metrics = {"step": steps_done, **{f"dice_{k}": round(v, 5) for k, v in dice.items()}, "dice_mean": round(score, 5)}
            if improved:
                self._save_model("best.pt", steps_done, metrics)
            self._save_model("last.pt", steps_done, metrics)
            save_training_state(self.config.out, self._state(steps_done))
            if history is not None:
                history.log_validation(steps_done, dice, self.best_score)
                history.plot(switch_step=self.schedule.switch_step, title=f"spinect train: {self.config.out.name}")
            log.info(
                "step %d: validation Dice %s (mean %.4f; best %.4f at step %d)%s", steps_done,
                ", ".join(f"{k} {v:.4f}" for k, v in dice.items()), score, self.best_score, self.best_step,
                " -> best.pt" if improved else "",
            )
        if self.context.enabled:
            torch.distributed.barrier()

    def _save_model(self, name: str, steps_done: int, metrics: dict[str, Any]) -> None:
        from spinect.model_file import save_model

        provenance = dict(self.plan.provenance)
        provenance.update(step=steps_done, metrics={"validation": metrics})
        save_model(self.config.out / name, self.network, self.plan.replace(provenance=provenance))

    def _state(self, steps_done: int) -> dict[str, Any]:
        return {
            "step": steps_done, "network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
            "best_score": self.best_score, "best_step": self.best_step, "rng": capture_rng(),
            "plan": self.plan.to_dict(), "split": self.data.split.as_dict(),
            "intensity": [self.plan.intensity_mean, self.plan.intensity_std],
            "config": json.loads(json.dumps(asdict(self.config), default=str)),
        }

    def _progress_bar(self, start: int, total: int):
        if not (self.context.is_main and self.config.show_progress):
            return None
        from tqdm import tqdm

        # In a log file (no terminal) print a line every ~30 s instead of redrawing constantly.
        interactive = sys.stderr.isatty()
        return tqdm(total=total, initial=start, desc="train", unit="it", dynamic_ncols=interactive,
                    mininterval=0.5 if interactive else 30.0, file=sys.stderr)


def _finite_gradients(network: torch.nn.Module, loss: torch.Tensor) -> bool:
    """True when the loss and every gradient of ``network`` are finite (their total norm is)."""
    if not bool(torch.isfinite(loss.detach())):
        return False
    grads = [p.grad for p in network.parameters() if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def training_autocast_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """bfloat16 for mixed-precision training, or None for float32.

    Only bfloat16: it has float32's exponent range, so no loss scaling is needed. float16 (GPUs
    without bfloat16) would need a gradient scaler, so such GPUs train in float32.

    Args:
        device: where the network trains.
        amp: None = automatic (:func:`spinect.inference.autocast_dtype`'s choice, bfloat16 only),
            True = bfloat16 on any device that has it, False = float32.
    """
    from spinect.inference import autocast_dtype

    return torch.bfloat16 if autocast_dtype(device, amp) == torch.bfloat16 else None


def validate(network: torch.nn.Module, cases: list[LoadedCase], plan: ModelPlan, *, device="cpu", batch_size: int = 4) -> dict[str, float]:
    """SPINECT's validation: full sliding-window segmentation, Dice per foreground class.

    Args:
        network: the (unwrapped) network.
        cases: validation cases with ``image_hu`` already normalised (:class:`RunData`).
        plan: gives the patch, stride and class names.

    Returns:
        class name -> Dice averaged over ``cases`` (background excluded).
    """
    from spinect.inference import predict_probabilities
    from spinect.metrics import overlap_scores

    scores: dict[str, list[float]] = {name: [] for name in validation_names(plan)}
    for case in cases:
        probabilities = predict_probabilities(
            case.image_hu, network, patch_size_zyx=plan.patch_size_zyx, stride_zyx=plan.stride_zyx,
            blend=plan.blend, batch_size=batch_size, device=device,
        )
        predicted = torch.argmax(probabilities, dim=0).numpy()
        for name, values in _class_masks(plan, predicted, case.labels):
            scores[name].append(overlap_scores(*values).dice)
    return {name: float(np.mean(values)) for name, values in scores.items()}


def validation_names(plan: ModelPlan) -> tuple[str, ...]:
    """What validation reports: each foreground class; for a model with a class map, bone and
    nerve (unions) first, then each vertebral level."""
    if not plan.class_groups:
        return tuple(plan.class_names[1:])
    from spinect.plan import LEVEL_NAMES

    return ("bone", "nerve", *(n for n in LEVEL_NAMES if n in plan.class_names))


def _class_masks(plan: ModelPlan, predicted: np.ndarray, truth: np.ndarray):
    """(name, (predicted mask, true mask)) for each of :func:`validation_names`."""
    for name in validation_names(plan):
        if plan.class_groups and name in plan.class_groups:
            values = [plan.class_names.index(n) for n in plan.class_groups[name]]
            yield name, (np.isin(predicted, values), np.isin(truth, values))
        else:
            value = plan.class_names.index(name)
            yield name, (predicted == value, truth == value)


def class_weight_schedule(plan: ModelPlan, total_steps: int, *, early_nerve_weight: float = 20.0) -> WeightSchedule:
    """SPINECT's 1:1:20 then 1:1:2 schedule (the 20 is ``early_nerve_weight``), each class of a
    class map weighted as its group (bone or nerve).

    A coarse level model (3 mm) hardly sees nerves, and 20x made one label a broad band around
    them as nerve (bone Dice 0.004 after 500 steps); such runs use a lower early weight.
    """
    early_by_group = (*SPINECT_EARLY_WEIGHTS[:2], float(early_nerve_weight))
    group = plan.spinect_lookup()  # class -> 0/1/2 (identity for a 3-class model)
    return WeightSchedule(total_steps=total_steps, early=tuple(float(early_by_group[g]) for g in group),
                          late=tuple(float(SPINECT_LATE_WEIGHTS[g]) for g in group))


def class_fractions_for(plan: ModelPlan, fractions: dict[int, float]) -> dict[int, float]:
    """Patch-centre shares by SPINECT label (1 bone, 2 nerve), spread over a class map's classes."""
    if not plan.class_groups:
        return dict(fractions)
    group = plan.spinect_lookup()
    out: dict[int, float] = {}
    for label, share in fractions.items():
        members = [c for c, g in enumerate(group) if g == label]
        out.update({c: share / len(members) for c in members})
    return out

