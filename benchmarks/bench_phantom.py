"""Benchmark: time to generate one phantom case (default 200 x 300 x 300 at 1 mm) on one core.

Target (issue): <= 5 s per case for 200 x 300 x 300 at 1 mm on one core, writing excluded.
Run ``python benchmarks/bench_phantom.py [--shape D H W] [--spacing Z Y X] [--repeats N]``;
it prints the time of each stage of the best run (``generate_case(..., timer=StageTimer())``:
the default case's own stages), the writing time (compressed NIfTI), and the time to paint a new
image of the last case from its structure map (:mod:`spinect.phantom.rerender`, ``ct`` and
``random`` modes, whole case and one training box), with its ratio to generating the case, in
the same process.
Pin to one core with ``taskset -c 0`` for a strict single-core figure; the code itself is
single-threaded NumPy/SciPy and the thread pools are limited to 1 below.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(200, 300, 300))
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from spinect.phantom import generate_case, write_case

    shape, spacing = tuple(args.shape), tuple(args.spacing)
    generate_case(0, shape_zyx=(32, 48, 48))  # warm-up: imports, caches
    from spinect.profiling import StageTimer

    totals, cpu, timers = [], [], []
    for seed in range(args.repeats):
        timer = StageTimer()
        t, c = time.perf_counter(), time.process_time()
        case = generate_case(seed, shape_zyx=shape, spacing_zyx_mm=spacing, timer=timer)
        totals.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)  # CPU seconds: the figure to compare on a busy machine
        timers.append(timer)
    stages = timers[int(np.argmin(totals))].seconds  # the stages of generate_case itself, best run
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_case(case, Path(tmp), "bench")
        write_s = time.perf_counter() - t
    voxels = int(np.prod(shape))
    print(f"phantom {shape[0]}x{shape[1]}x{shape[2]} voxels at {spacing} mm ({voxels / 1e6:.1f} M voxels), {args.repeats} cases")
    print(f"  generate_case: best {min(totals):.2f} s, median {float(np.median(totals)):.2f} s, worst {max(totals):.2f} s  (target <= 5 s)")
    print(f"  generate_case CPU seconds (one thread): best {min(cpu):.2f} s, median {float(np.median(cpu)):.2f} s")
    print(f"  stages of the best run (sum {sum(stages.values()):.2f} s):")
    for name, seconds in stages.items():
        print(f"    {name:<62s} {seconds:6.2f} s")
    print(f"  writing CT + labels + structures + truth (compressed NIfTI): {write_s:.2f} s")
    _bench_rerender(case, spacing, min(totals), args.repeats)


def _bench_rerender(case, spacing, generate_s: float, repeats: int) -> None:
    """Seconds to re-render the case from its structure map (one torch thread, CPU)."""
    import SimpleITK as sitk
    import torch

    from spinect.phantom.rerender import rerender_ct
    from spinect.train.augment import region_size_for

    torch.set_num_threads(1)
    codes = sitk.GetArrayFromImage(case.structures)
    box = tuple(region_size_for((32, 64, 64)))
    centre = [n // 2 for n in codes.shape]
    patch = codes[tuple(slice(c - b // 2, c - b // 2 + b) for c, b in zip(centre, box))]
    rerender_ct(patch, spacing, 0)  # warm-up
    print(f"  re-rendering from the structure map (torch, 1 thread, {torch.device('cpu')}):")
    for mode in ("ct", "random"):
        whole, small = [], []
        for seed in range(max(repeats, 2)):
            t = time.perf_counter()
            rerender_ct(codes, spacing, seed, mode=mode)
            whole.append(time.perf_counter() - t)
        for seed in range(20):
            t = time.perf_counter()
            rerender_ct(patch, spacing, seed, mode=mode)
            small.append(time.perf_counter() - t)
        print(f"    {mode:<6s} whole case best {min(whole):.2f} s (generate_case / re-render = {generate_s / min(whole):.1f}x); "
              f"one {box[0]}x{box[1]}x{box[2]} training box median {1000 * float(np.median(small)):.1f} ms")


if __name__ == "__main__":
    main()
