#!/usr/bin/env python
"""Phantom training data mixed like the real CTs a clinician loads, generated on every core.

The mix behind the CPU fine-tunes of the default model (docs/real_ct_validation.md), per 46
cases: 14 lumbosacral fields of 288 x 192 x 256 mm, 6 small 1.5 mm crops (112 x 80 x 112 mm,
like the real L3 crop), 12 lumbar fields of 112 x 160 x 160 mm, 8 chest fields (320 x 240 x
336 mm) and 6 thoracolumbar fields (256 x 224 x 320 mm); z spacing 1, 1.25, 2.5 or 3 mm and
in-plane 0.8 or 1 mm (thick slices rendered as such), IV contrast in half of the CT-realistic
cases, 35 % of them aged 70-90 (dim marrow), 12 % randomised appearance; every twelfth case is
held out for validation (manifest ``split``; with 5 cases or fewer, the last). ``--n`` scales the mix.

Each case's choices and phantom come from ``(seed, index)`` alone, so the data do not depend on
``--workers`` (default: every core) and a case can be regenerated on its own.

    python scripts/make_training_mix.py runs/mix --n 46 --seed 9500
    spinect train runs/mix --out runs/mix_run --init default --iterations 3000 ...
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SpineCTSegmentation"))

#: (field, field of view z y x mm, fixed spacing or None, cases per 46)
MIX: tuple[tuple[str, tuple[int, int, int], tuple[float, float, float] | None, int], ...] = (
    ("lumbosacral", (288, 192, 256), None, 14),
    ("lumbosacral", (112, 80, 112), (1.5, 1.5, 1.5), 6),
    ("lumbosacral", (112, 160, 160), None, 12),
    ("chest", (320, 240, 336), None, 8),
    ("thoracolumbar", (256, 224, 320), None, 6),
)


def case_specs(n: int, fields: tuple[str, ...] | None = None
               ) -> list[tuple[str, tuple[int, int, int], tuple[float, float, float] | None]]:
    """The fields of ``n`` cases in the proportions of :data:`MIX` (largest remainders), optionally
    of the ``fields`` named only (``lumbosacral``, ``chest``, ``thoracolumbar``)."""
    mix = [m for m in MIX if fields is None or m[0] in fields]
    if not mix:
        raise ValueError(f"no field of the mix among {fields}; choose from {sorted({m[0] for m in MIX})}")
    total = sum(m[3] for m in mix)
    exact = [n * m[3] / total for m in mix]
    counts = [int(e) for e in exact]
    for i in sorted(range(len(mix)), key=lambda i: exact[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    return [(field, fov, spacing) for (field, fov, spacing, _), c in zip(mix, counts) for _ in range(c)]


def make_one(out: str, seed: int, index: int, n: int, field: str, fov_mm, spacing) -> dict:
    """Generate and write case ``index``; returns its manifest entry (as a dict)."""
    import torch

    torch.set_num_threads(1)
    from spinect.phantom.case import case_seed, generate_case
    from spinect.phantom.writer import write_case

    rng = np.random.default_rng([seed, index])
    if spacing is None:
        z = float(rng.choice([1.0, 1.0, 1.25, 2.5, 3.0]))
        xy = float(rng.choice([0.8, 1.0, 1.0]))
        spacing = (z, xy, xy)
    shape = tuple(int(round(f / s)) for f, s in zip(fov_mm, spacing))
    appearance = "random" if rng.random() < 0.12 else "ct"
    overrides: dict = {}
    if appearance == "ct":
        if rng.random() < 0.5:
            overrides["iv_contrast"] = True
        if rng.random() < 0.35:
            overrides["age_years"] = float(rng.uniform(70, 90))
        if spacing[0] > 1.5:
            overrides["slice_thickness_mm"] = spacing[0]
    name = f"case_{index:04d}"
    case = generate_case(case_seed(seed, index), shape_zyx=shape, spacing_zyx_mm=spacing, appearance=appearance,
                         appearance_overrides=overrides or None, field=field, window_tables=False)
    Path(out).mkdir(parents=True, exist_ok=True)
    paths = write_case(case, Path(out), name)
    return {"id": name, "image": str(paths["ct"]), "label": str(paths["labels"]), "source": "phantom",
            "extra": {"structures": paths["structures"].name, "truth": paths["truth"].name, "seed": case.seed,
                      "split": "val" if index % 12 == 5 or (n <= 5 and index == n - 1) else "train", "field": field, "spacing_zyx_mm": list(spacing),
                      "appearance": appearance, "overrides": overrides}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder (cases + manifest.json)")
    parser.add_argument("--n", type=int, default=46, help="number of cases (default 46)")
    parser.add_argument("--seed", type=int, default=9500)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: every core)")
    parser.add_argument("--fields", help="comma-separated fields to keep (lumbosacral, chest, thoracolumbar; default all)")
    args = parser.parse_args(argv)
    if args.n < 2 or args.workers < 1:
        parser.error("--n must be >= 2 (a training and a validation case) and --workers >= 1")
    from spinect.manifest import DatasetCase, write_manifest

    try:
        specs = case_specs(args.n, None if args.fields is None else tuple(args.fields.split(",")))
    except ValueError as exc:
        parser.error(str(exc))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    entries: dict[int, dict] = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(make_one, str(args.out), args.seed, i, args.n, *spec): i for i, spec in enumerate(specs)}
        for future in futures:
            i = futures[future]
            entries[i] = future.result()
            e = entries[i]["extra"]
            print(f"{entries[i]['id']} {e['field']} {e['spacing_zyx_mm']} {e['appearance']} {e['overrides']} "
                  f"{e['split']} t={time.perf_counter() - started:.0f}s", flush=True)
    cases = [DatasetCase(e["id"], Path(e["image"]), Path(e["label"]), source=e["source"], extra=e["extra"])
             for e in (entries[i] for i in sorted(entries))]
    write_manifest(args.out, cases)
    print(f"{len(cases)} cases in {time.perf_counter() - started:.0f} s with {args.workers} workers -> "
          f"{args.out / 'manifest.json'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
