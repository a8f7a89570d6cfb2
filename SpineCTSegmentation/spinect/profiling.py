"""Per-stage wall-clock timing and peak memory, for ``--verbose`` and the benchmarks."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

__all__ = ["StageTimer", "peak_rss_mb", "maybe_stage"]


def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for benchmark headers; the platform's name elsewhere."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB.

    On Linux, ``VmHWM`` from ``/proc/self/status``: unlike ``ru_maxrss`` it starts afresh at
    ``exec``, so a backend started from a large process (3D Slicer, a benchmark) does not inherit
    its parent's peak. Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS); NaN on Windows,
    which has no ``resource`` module.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@dataclass
class StageTimer:
    """Accumulates seconds per named stage, in first-seen order, and named event counts.

    Attributes:
        seconds: stage name -> wall-clock seconds.
        counts: name -> count (e.g. ``windows run``, ``windows skipped``).
    """

    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to stage ``name`` (for time measured elsewhere)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the count ``name``."""
        self.counts[name] = self.counts.get(name, 0) + int(n)

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())

    def table(self) -> str:
        """Aligned text table of the stages, for logs."""
        width = max((len(k) for k in self.seconds), default=5)
        lines = [f"  {name:<{width}}  {sec:8.3f} s" for name, sec in self.seconds.items()]
        lines.append(f"  {'total':<{width}}  {self.total_s:8.3f} s")
        return "\n".join(lines)


def maybe_stage(timer: StageTimer | None, name: str):
    """``timer.stage(name)``, or a context that does nothing when ``timer`` is None."""
    return contextlib.nullcontext() if timer is None else timer.stage(name)
