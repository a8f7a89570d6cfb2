"""Per-stage wall-clock timing and peak memory, for ``--verbose`` and the benchmarks."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator

__all__ = ["StageTimer", "peak_rss_mb"]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (ru_maxrss is KiB on Linux, bytes on macOS).

    Returns NaN on Windows, which has no ``resource`` module.
    """
    try:
        import resource
    except ImportError:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@dataclass
class StageTimer:
    """Accumulates seconds per named stage, in first-seen order."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())

    def table(self) -> str:
        """Aligned text table of the stages, for logs."""
        width = max((len(k) for k in self.seconds), default=5)
        lines = [f"  {name:<{width}}  {sec:8.3f} s" for name, sec in self.seconds.items()]
        lines.append(f"  {'total':<{width}}  {self.total_s:8.3f} s")
        return "\n".join(lines)
