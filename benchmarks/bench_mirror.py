"""What mirroring test-time augmentation (``spinect segment --mirror``) costs on the CPU.

Runs ``spinect.api.segment`` on one CT with each ``--mirror`` mode in the same process,
alternating the modes run by run, and prints the end-to-end and network seconds (median), the
ratio against ``none`` and how many voxels' labels the mirroring changed. What it gains is
measured on real CT by ``benchmarks/validate_real_ct.py --mirror lr`` (docs/real_ct_validation.md).

    python benchmarks/bench_mirror.py                      # generated 512x512x300 phantom CT
    python benchmarks/bench_mirror.py --input CT.nii.gz --modes none lr lr-ap --runs 3
    python benchmarks/bench_mirror.py --modes none:nearest none --runs 3   # the two ways back (--nearest-labels)

A mode ``M:nearest`` runs mirror mode ``M`` with ``--nearest-labels`` (labels back on the CT's grid by
the nearest 1 mm label instead of the interpolated probabilities).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SpineCTSegmentation"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, help="CT to segment (default: a generated phantom CT, --shape/--spacing)")
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 0.7, 0.7), metavar=("Z", "Y", "X"))
    parser.add_argument("--model", type=Path, help="model file (default: the shipped default model)")
    parser.add_argument("--modes", nargs="+", default=["none", "lr"],
                        help="mirror modes (M or M:nearest for --nearest-labels); the first is the baseline")
    parser.add_argument("--runs", type=int, default=2, help="timed runs per mode (median reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np
    import SimpleITK as sitk
    import torch

    from spinect.api import segment
    from spinect.inference import autocast_dtype

    torch.set_num_threads(args.threads)
    dtype = autocast_dtype(torch.device("cpu"), None)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    print(f"CPU: {cpu}; {args.threads} torch threads; precision {'float32' if dtype is None else dtype}; "
          f"torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.input
        if source is None:
            from spinect.phantom import generate_case

            case = generate_case(0, shape_zyx=tuple(args.shape), spacing_zyx_mm=tuple(args.spacing))
            source = Path(tmp) / "ct.nii.gz"
            sitk.WriteImage(case.ct, str(source))
            print(f"input: phantom seed 0, {tuple(args.shape)} voxels (z y x) at {tuple(args.spacing)} mm")
        else:
            print(f"input: {source}")
        segment(source, None, model=args.model, **_options(args.modes[0]))  # warm-up: imports, model load, caches
        seconds: dict[str, list[tuple[float, float]]] = {m: [] for m in args.modes}
        labels: dict[str, np.ndarray] = {}
        for _ in range(args.runs):
            for mode in args.modes:
                started = time.perf_counter()
                result = segment(source, None, model=args.model, **_options(mode))
                seconds[mode].append((time.perf_counter() - started, result.timings_s.get("network", float("nan"))))
                labels[mode] = sitk.GetArrayFromImage(result.labels)
    base = args.modes[0]
    base_total = statistics.median(s for s, _ in seconds[base])
    print(f"\n| mirror | end to end s (median of {args.runs}) | network s | x {base} | labels changed |")
    print("|---|---|---|---|---|")
    for mode in args.modes:
        total = statistics.median(s for s, _ in seconds[mode])
        network = statistics.median(n for _, n in seconds[mode])
        changed = float(np.mean(labels[mode] != labels[base])) * 100.0
        print(f"| {mode} | {total:.2f} | {network:.2f} | {total / base_total:.2f} | {changed:.3f} % |")
    return 0


def _options(mode: str) -> dict:
    """``segment`` keywords of a mode ``MIRROR`` or ``MIRROR:nearest``."""
    mirror, _, way = mode.partition(":")
    if way not in ("", "nearest"):
        raise SystemExit(f"bench_mirror: mode {mode!r}: use MIRROR or MIRROR:nearest")
    return {"mirror": mirror, "nearest_labels": way == "nearest"}


if __name__ == "__main__":
    sys.exit(main())
