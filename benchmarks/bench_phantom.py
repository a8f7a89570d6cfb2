"""Benchmark: time to generate one phantom case (default 200 x 300 x 300 at 1 mm) on one core.

Target (issue): <= 5 s per case for 200 x 300 x 300 at 1 mm on one core, writing excluded.
Run ``python benchmarks/bench_phantom.py [--shape D H W] [--spacing Z Y X] [--repeats N]``;
it prints the time of each stage of the best run and the writing time (compressed NIfTI).
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


def _stages(seed: int, shape, spacing) -> dict[str, float]:
    from spinect.phantom import appearance as A
    from spinect.phantom.anatomy import build_anatomy
    from spinect.phantom.params import sample_params
    from spinect.phantom.render import make_grid, rasterise
    from spinect.phantom.structures import labels_from_structures
    from spinect.phantom.truth import build_truth

    times: dict[str, float] = {}
    t = time.perf_counter()
    geo, look, noise = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    anatomy = build_anatomy(sample_params(geo), geo)
    grid = make_grid(anatomy, shape, spacing)
    times["anatomy"] = time.perf_counter() - t
    t = time.perf_counter()
    appearance = A.sample_look("ct", look, spacing)  # the default mode of generate_case
    structures, hu = rasterise(anatomy, grid, appearance.values, noise)
    times["rasterise (labels + partial volume)"] = time.perf_counter() - t
    t = time.perf_counter()
    hu = appearance.finish(hu, structures, spacing, noise)
    A.to_int16(hu)
    labels = labels_from_structures(structures)
    times["scanner (kernel, noise, offset) + int16"] = time.perf_counter() - t
    t = time.perf_counter()
    build_truth(anatomy, grid, labels=labels)
    times["truth (triangles, tables, window)"] = time.perf_counter() - t
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(200, 300, 300))
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from spinect.phantom import generate_case, write_case

    shape, spacing = tuple(args.shape), tuple(args.spacing)
    generate_case(0, shape_zyx=(32, 48, 48))  # warm-up: imports, caches
    totals, cpu = [], []
    for seed in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        case = generate_case(seed, shape_zyx=shape, spacing_zyx_mm=spacing)
        totals.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)  # CPU seconds: the figure to compare on a busy machine
    stages = _stages(0, shape, spacing)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_case(case, Path(tmp), "bench")
        write_s = time.perf_counter() - t
    voxels = int(np.prod(shape))
    print(f"phantom {shape[0]}x{shape[1]}x{shape[2]} voxels at {spacing} mm ({voxels / 1e6:.1f} M voxels), {args.repeats} cases")
    print(f"  generate_case: best {min(totals):.2f} s, median {float(np.median(totals)):.2f} s, worst {max(totals):.2f} s  (target <= 5 s)")
    print(f"  generate_case CPU seconds (one thread): best {min(cpu):.2f} s, median {float(np.median(cpu)):.2f} s")
    for name, seconds in stages.items():
        print(f"    {name:<38s} {seconds:6.2f} s")
    print(f"  writing CT + labels + structures + truth (compressed NIfTI): {write_s:.2f} s")


if __name__ == "__main__":
    main()
