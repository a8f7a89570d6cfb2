"""Island removal on synthetic many-island label maps: the linear-time implementation against the old one.

A bad prediction on a large field of view leaves thousands of islands (issue 17: 2,241 on a real
abdomen-pelvis CT, 36 s of island removal). This script builds a label map on a 512×512×300 grid at
0.7×0.7×1.0 mm with a spine (bone column, dural sac) and N false-positive islands -- compact blobs of
several sizes, pieces of at least 300 mm³, thin tube-shaped pieces, dotted lines of fragments 4-6 mm
apart, some at the edge of the image, some bone islands -- and times ``spinect.postprocess.suppress_islands``
(new) and ``benchmarks/islands_reference.py`` (the implementation before the rewrite, kept verbatim)
in the same process, checking that both give identical labels and removal lists.

    python benchmarks/bench_islands.py                      # 1,000 / 2,000 / 5,000 islands
    python benchmarks/bench_islands.py --islands 1000 --old-up-to 2000 --repeats 3

Prints a Markdown table; figures are wall-clock seconds (median of ``--repeats`` for the new one,
with its CPU seconds; for scale, the time of ``scipy.ndimage.label`` on the two classes' masks over the
grid, which the new implementation no longer spends (it labels the labelled voxels' runs,
``spinect.postprocess.runs``); and one run of the old one, skipped above ``--old-up-to`` islands).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "SpineCTSegmentation"))
sys.path.insert(0, str(HERE))

SPACING_ZYX_MM = (1.0, 0.7, 0.7)
SHAPE_ZYX = (300, 512, 512)


def many_island_map(n_islands: int, shape=SHAPE_ZYX, seed: int = 0, bone_share: float = 0.2) -> np.ndarray:
    """(z, y, x) uint8 label map: a spine (bone 1, dural sac 2) and about ``n_islands`` islands.

    Kinds of island (by share): small blobs 1-4 voxels across (55 %), blobs 5-9 voxels across
    (10 %), nerve pieces of at least 300 mm³ at 0.7 mm (5 %), thin bars (tube-shaped, 5 %), dotted
    lines of 3-5 fragments a few mm apart (counted as one island each, 10 %), islands touching the
    image edge (15 %); ``bone_share`` of the compact blobs are bone. Islands may touch and merge.
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    nz, ny, nx = shape
    # Spine: a bone column in front of a dural sac, the full height of the volume.
    labels[:, int(ny * 0.58):int(ny * 0.74), int(nx * 0.43):int(nx * 0.57)] = 1
    labels[:, int(ny * 0.76):int(ny * 0.81), int(nx * 0.47):int(nx * 0.53)] = 2

    def put(z, y, x, dz, dy, dx, value):
        z, y, x = (int(np.clip(c, 0, n - 1)) for c, n in zip((z, y, x), shape))
        labels[z:z + dz, y:y + dy, x:x + dx] = value

    kinds = rng.choice(6, size=n_islands, p=[0.55, 0.10, 0.05, 0.05, 0.10, 0.15])
    for kind in kinds:
        z, y, x = rng.integers(0, nz), rng.integers(0, ny), rng.integers(0, nx)
        value = 1 if (kind in (0, 1) and rng.random() < bone_share) else 2
        if kind == 0:
            s = rng.integers(1, 5, size=3)
            put(z, y, x, *s, value)
        elif kind == 1:
            s = rng.integers(5, 10, size=3)
            put(z, y, x, *s, value)
        elif kind == 2:
            put(z, y, x, 8, 10, 10, 2)  # 800 voxels, 392 mm³
        elif kind == 3:
            axis = rng.integers(0, 3)
            size = [3, 4, 4]
            size[axis] = 30
            put(z, y, x, *size, 2)
        elif kind == 4:
            step = rng.integers(6, 9, size=3) * rng.choice([-1, 0, 1], size=3)
            if not step.any():
                step[2] = 7
            for i in range(rng.integers(3, 6)):
                put(z + i * step[0], y + i * step[1], x + i * step[2], 2, 2, 2, 2)
        else:
            axis = rng.integers(0, 3)
            edge = [z, y, x]
            edge[axis] = 0 if rng.random() < 0.5 else shape[axis] - 3
            s = rng.integers(2, 6, size=3)
            put(*edge, *s, value if kind != 5 else (1 if rng.random() < bone_share else 2))
    return labels


def _same(a, b) -> bool:
    (la, ra), (lb, rb) = a, b
    if not np.array_equal(la, lb) or len(ra) != len(rb):
        return False
    key = lambda r: (r.label_value, r.voxels, r.centroid_zyx)  # noqa: E731
    for x, y in zip(sorted(ra, key=key), sorted(rb, key=key)):
        if (x.label_value, x.voxels, x.volume_mm3, x.reason) != (y.label_value, y.voxels, y.volume_mm3, y.reason):
            return False
        if not np.allclose(x.centroid_zyx, y.centroid_zyx) or not np.isclose(x.distance_mm, y.distance_mm):
            return False
    return True


def _cpu() -> str:
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} logical CPUs, flags: {', '.join(shown) or 'none of avx2/avx512'}"


def _on_file(path: Path) -> int:
    import SimpleITK as sitk
    from scipy import ndimage

    import islands_reference
    from spinect.postprocess import suppress_islands

    image = sitk.ReadImage(str(path))
    labels = sitk.GetArrayFromImage(image).astype(np.uint8)
    spacing = tuple(float(v) for v in image.GetSpacing()[::-1])
    counts = [ndimage.label(labels == v, structure=np.ones((3, 3, 3), bool))[1] for v in (1, 2)]
    print(f"CPU: {_cpu()}; load average before: {os.getloadavg()[0]:.2f}")
    print(f"label map {path}: {labels.shape[::-1]} voxels (x y z) at {spacing[::-1]} mm; components bone {counts[0]:,}, "
          f"nerve {counts[1]:,}\n")
    t0 = time.perf_counter()
    new = suppress_islands(labels, spacing)
    t_new = time.perf_counter() - t0
    t0 = time.perf_counter()
    old = islands_reference.suppress_islands(labels, spacing)
    t_old = time.perf_counter() - t0
    print("| removed | new (s) | old (s) | old / new | identical |")
    print("|---|---|---|---|---|")
    print(f"| {len(new[1]):,} | {t_new:.2f} | {t_old:.2f} | {t_old / t_new:.1f}× | {'yes' if _same(new, old) else '**NO**'} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--islands", type=int, nargs="+", default=[1000, 2000, 5000])
    parser.add_argument("--old-up-to", type=int, default=2000, help="run the old implementation up to this many islands")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-map", type=Path, default=None, metavar="FILE",
                        help="instead of synthetic maps: a label image (0/1 bone/2 nerve), e.g. `spinect segment CT OUT "
                             "--keep-islands` on a real CT; old and new run on it once each")
    args = parser.parse_args(argv)
    if args.label_map is not None:
        return _on_file(args.label_map)

    from scipy import ndimage

    import islands_reference
    from spinect.postprocess import suppress_islands

    print(f"CPU: {_cpu()}; Python {platform.python_version()}, NumPy {np.__version__}; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"grid {SHAPE_ZYX[2]}×{SHAPE_ZYX[1]}×{SHAPE_ZYX[0]} (x×y×z) at {SPACING_ZYX_MM[2]}×{SPACING_ZYX_MM[1]}×"
          f"{SPACING_ZYX_MM[0]} mm; seed {args.seed}\n")
    print("| islands placed | components (bone / nerve) | removed | new (s, median) | new, CPU s | scipy labelling of "
          "both classes, for scale (s) | old (s) | old / new | identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.islands:
        labels = many_island_map(n, seed=args.seed)
        counts = [ndimage.label(labels == v, structure=np.ones((3, 3, 3), bool))[1] for v in (1, 2)]
        times, cpu, floor = [], [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            new = suppress_islands(labels, SPACING_ZYX_MM)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            # For scale: 26-connected labelling of both classes' masks over the whole grid with scipy
            # (the islands are everywhere, so each class's box is the grid), which the new code avoids.
            t0 = time.perf_counter()
            for v in (1, 2):
                ndimage.label(labels == v, structure=np.ones((3, 3, 3), bool))
            floor.append(time.perf_counter() - t0)
        t_new = statistics.median(times)
        old_text, ratio, same = "not run (minutes)", "", ""
        if n <= args.old_up_to:
            t0 = time.perf_counter()
            old = islands_reference.suppress_islands(labels, SPACING_ZYX_MM)
            t_old = time.perf_counter() - t0
            old_text, ratio = f"{t_old:.2f}", f"{t_old / t_new:.1f}×"
            same = "yes" if _same(new, old) else "**NO**"
        print(f"| {n:,} | {counts[0]:,} / {counts[1]:,} | {len(new[1]):,} | {t_new:.2f} | {statistics.median(cpu):.2f} | "
              f"{statistics.median(floor):.2f} | {old_text} | {ratio} | {same} |", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (other processes on the machine slow every figure)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
