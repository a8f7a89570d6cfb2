"""Training log: CSV files of loss and validation Dice, and their curves as a PNG.

``RUN_DIR/train_log.csv`` has one row per iteration (step, loss, nerve weight, seconds);
``RUN_DIR/val_log.csv`` one row per validation (step, Dice of each class, their mean, best so
far). ``RUN_DIR/curves.png`` draws both like SPINECT's Figures 3 and 4 (Dice and loss against
iterations), with the class-weight switch marked. On ``--resume`` rows after the resumed step are
dropped, so the files always describe one continuous run.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from spinect.io.atomic import atomic_output

__all__ = ["TrainingLog", "TRAIN_LOG_NAME", "VAL_LOG_NAME", "CURVES_NAME"]

TRAIN_LOG_NAME = "train_log.csv"
VAL_LOG_NAME = "val_log.csv"
CURVES_NAME = "curves.png"
_TRAIN_FIELDS = ("step", "loss", "nerve_weight", "seconds")


class TrainingLog:
    """Append-only CSV logs in ``run_dir`` (plus the curves PNG on request).

    Args:
        run_dir: the run folder.
        class_names: foreground classes reported at validation (e.g. ``("bone", "nerve")``).
        resume_step: keep only rows with ``step < resume_step`` of existing logs (None: start new).
    """

    def __init__(self, run_dir: str | os.PathLike, *, class_names: Sequence[str], resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.val_fields = ("step", *(f"dice_{c}" for c in class_names), "dice_mean", "best_dice_mean")
        self.train_rows = self._start(TRAIN_LOG_NAME, _TRAIN_FIELDS, resume_step)
        self.val_rows = self._start(VAL_LOG_NAME, self.val_fields, resume_step, inclusive=True)

    def _start(self, name: str, fields: Sequence[str], resume_step: int | None, *, inclusive: bool = False) -> list[dict]:
        path = self.run_dir / name
        rows: list[dict] = []
        if resume_step is not None and path.is_file():
            with open(path, newline="") as handle:
                for row in csv.DictReader(handle):
                    step = int(row["step"])
                    if step < resume_step or (inclusive and step == resume_step):
                        rows.append({k: float(row[k]) if k != "step" else step for k in fields if k in row})
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(fields))
            writer.writeheader()
            writer.writerows(rows)
        return rows

    def log_train(self, step: int, loss: float, nerve_weight: float, seconds: float) -> None:
        row = {"step": step, "loss": float(loss), "nerve_weight": float(nerve_weight), "seconds": round(float(seconds), 4)}
        self.train_rows.append(row)
        self._append(TRAIN_LOG_NAME, _TRAIN_FIELDS, row)

    def log_validation(self, step: int, dice: dict[str, float], best: float) -> None:
        row = {"step": step, **{f"dice_{c}": float(v) for c, v in dice.items()}}
        row["dice_mean"] = float(np.mean(list(dice.values())))
        row["best_dice_mean"] = float(best)
        self.val_rows.append(row)
        self._append(VAL_LOG_NAME, self.val_fields, row)

    def _append(self, name: str, fields: Sequence[str], row: dict) -> None:
        with open(self.run_dir / name, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=list(fields)).writerow(row)

    def plot(self, *, switch_step: int | None = None, title: str = "") -> Path:
        """Write ``curves.png``: validation Dice (left) and training loss (right) vs iteration."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_dice, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
        steps = [r["step"] for r in self.val_rows]
        for field in self.val_fields[1:-1]:
            ax_dice.plot(steps, [r.get(field, np.nan) for r in self.val_rows], marker="o", ms=3, label=field.replace("dice_", ""))
        ax_dice.set(xlabel="iteration", ylabel="validation Dice", ylim=(0, 1), title="Dice (validation cases)")
        loss_steps = np.array([r["step"] for r in self.train_rows])
        losses = np.array([r["loss"] for r in self.train_rows])
        if losses.size:
            ax_loss.plot(loss_steps, losses, color="0.75", lw=0.6, label="loss")
            ax_loss.plot(loss_steps, _running_mean(losses, 25), color="C3", label="running mean (25)")
            ax_loss.set_yscale("log")
        ax_loss.set(xlabel="iteration", ylabel="weighted cross-entropy", title="training loss")
        for ax in (ax_dice, ax_loss):
            if switch_step is not None:
                ax.axvline(switch_step, color="k", ls="--", lw=0.8, label="weights 1:1:20 -> 1:1:2")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        path = self.run_dir / CURVES_NAME
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        return path


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (same length as ``values``)."""
    cumsum = np.cumsum(np.insert(values.astype(float), 0, 0.0))
    idx = np.arange(1, values.size + 1)
    start = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[start]) / (idx - start)
