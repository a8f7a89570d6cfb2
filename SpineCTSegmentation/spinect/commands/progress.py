"""Progress display for CLI verbs: a rich bar for people, JSON lines for programs (Slicer).

Machine format, one line per update on stdout::

    SPINECT_PROGRESS {"stage": "infer", "fraction": 0.42, "message": "window 12/490"}
"""

from __future__ import annotations

import json
import sys
from typing import Callable

__all__ = ["PROGRESS_TOKEN", "progress_lines_callback", "RichProgress", "parse_progress_line"]

PROGRESS_TOKEN = "SPINECT_PROGRESS"


def progress_lines_callback(stream=None) -> Callable[[str, float, str], None]:
    """A progress callback printing one machine-readable line per update (flushed)."""
    stream = stream or sys.stdout
    last = {"fraction": -1.0, "stage": None}

    def callback(stage: str, fraction: float, message: str) -> None:
        # Throttle to 0.5 % steps (or a stage change) so a 5,000-window run stays readable.
        if stage == last["stage"] and fraction - last["fraction"] < 0.005 and fraction < 1.0:
            return
        last.update(fraction=fraction, stage=stage)
        payload = {"stage": stage, "fraction": round(float(fraction), 4), "message": message}
        stream.write(f"{PROGRESS_TOKEN} {json.dumps(payload)}\n")
        stream.flush()

    return callback


def parse_progress_line(line: str) -> dict | None:
    """Inverse of the machine format: the payload dict, or None for other lines."""
    line = line.strip()
    if not line.startswith(PROGRESS_TOKEN + " "):
        return None
    try:
        return json.loads(line[len(PROGRESS_TOKEN) + 1 :])
    except ValueError:
        return None


class RichProgress:
    """Context manager giving a rich progress bar (with ETA) as a progress callback."""

    def __init__(self, description: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[stage]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
        )
        self._task = self._progress.add_task(description, total=1.0, stage="")

    def __enter__(self) -> Callable[[str, float, str], None]:
        self._progress.start()
        return self._update

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def _update(self, stage: str, fraction: float, message: str) -> None:
        self._progress.update(self._task, completed=fraction, stage=f"{stage}: {message}")
