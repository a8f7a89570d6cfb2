#!/usr/bin/env python
"""Does phantom v2 help on real CT? Fine-tune one model on v1 and on v2 phantoms, same budget.

Both runs start from the same model (by default the shipped one, trained on v1 phantoms), use the
same seeds, the same number of cases and the same iterations; only the phantom generator's
settings differ. The resulting ``last.pt`` models are then compared on real CT with
``benchmarks/validate_real_ct.py`` (the lead's command is printed at the end).

Phases: ``data`` (phantoms for each arm), ``train`` (one fine-tune per arm), or ``all``.

Example::

    python scripts/compare_phantom_versions.py --work runs/phantom_compare --n 16 --iterations 600
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: generate_case keywords of each arm; keywords generate_case does not know are reported and dropped.
ARMS: dict[str, dict] = {
    "v1": dict(anatomy="primitive", appearance="v1", surroundings=False),
    "v2_appearance": dict(anatomy="primitive", appearance="ct", surroundings=True),
    "v2": dict(anatomy="mesh", appearance="ct", surroundings=True),
    # both skeletons of v2 (real shapes and primitives) alternating case by case
    "v2_mix": dict(anatomy=("mesh", "primitive"), appearance="ct", surroundings=True),
}
#: Share of cases of an arm rendered with its randomised appearance (SynthSeg-style), as the
#: shipped model's recipe (25 %).
RANDOM_SHARE = 0.25


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=REPO / "runs" / "phantom_compare")
    p.add_argument("--phase", choices=("all", "data", "train"), default="all")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--n", type=int, default=16, help="training phantoms per arm (+ 2 validation)")
    p.add_argument("--shape", type=int, nargs=3, default=(112, 160, 160), metavar=("Z", "Y", "X"))
    p.add_argument("--thick-share", type=float, default=0.25, help="share of cases with 3 mm slices")
    p.add_argument("--seed", type=int, default=7100)
    p.add_argument("--init", default="default", help="model to start from ('default': the shipped model)")
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def _supported(kwargs: dict) -> dict:
    from spinect.phantom import generate_case

    known = set(inspect.signature(generate_case).parameters)
    dropped = sorted(set(kwargs) - known)
    if dropped:
        print(f"  note: generate_case has no {dropped}; those settings are not applied", flush=True)
    return {k: v for k, v in kwargs.items() if k in known}


def make_data(folder: Path, arm: str, args) -> None:
    """Training + validation phantoms of one arm with a manifest (split given per case)."""
    import numpy as np
    import SimpleITK as sitk

    from spinect.manifest import DatasetCase, write_manifest
    from spinect.phantom import case_seed, generate_case

    folder.mkdir(parents=True, exist_ok=True)
    base = _supported(ARMS[arm])
    rng = np.random.default_rng(args.seed)
    cases = []
    n_total = args.n + 2
    for i in range(n_total):
        seed = case_seed(args.seed, i)
        randomised = rng.random() < RANDOM_SHARE
        thick = rng.random() < args.thick_share
        kwargs = dict(base)
        if isinstance(kwargs.get("anatomy"), tuple):  # alternate the listed anatomies
            kwargs["anatomy"] = kwargs["anatomy"][i % len(kwargs["anatomy"])]
        if randomised:
            kwargs.update(_supported({"appearance": "random"}) if "appearance" in kwargs else {"randomise_appearance": True})
        spacing = (3.0, 1.0, 1.0) if thick else (1.0, 1.0, 1.0)
        shape = (max(16, args.shape[0] // 3), *args.shape[1:]) if thick else tuple(args.shape)
        t0 = time.perf_counter()
        case = generate_case(seed, shape_zyx=shape, spacing_zyx_mm=spacing, window_tables=False, **kwargs)
        cid = f"{arm}_{i:03d}"
        image, label = folder / f"{cid}_ct.nii.gz", folder / f"{cid}_labels.nii.gz"
        structures = folder / f"{cid}_structures.nii.gz"
        sitk.WriteImage(case.ct, str(image), True)
        sitk.WriteImage(case.labels, str(label), True)
        sitk.WriteImage(case.structures, str(structures), True)  # levels for `spinect train --classes levels`
        split = "val" if i >= args.n else "train"
        cases.append(DatasetCase(cid, image, label, "phantom", {"split": split, "seed": seed, "generator": kwargs,
                                                                 "spacing_zyx_mm": list(spacing),
                                                                 "structures": structures.name}))
        print(f"  {arm} case {i + 1}/{n_total}: {time.perf_counter() - t0:.1f} s {kwargs} {spacing}", flush=True)
    write_manifest(folder, cases)


def fine_tune(data: Path, out: Path, args) -> Path:
    from spinect.api import train
    from spinect.model_file import default_model_path

    init = default_model_path() if args.init == "default" else Path(args.init)
    result = train(data, out, iterations=args.iterations, val_every=max(1, args.iterations // 3), lr=args.lr,
                   batch_size=4, num_threads=args.threads, seed=args.seed, init=init, device="cpu",
                   resume=(out / "last_state.pt").is_file(),
                   command=" ".join(sys.argv))
    return result.last_model


def main(argv=None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    models = {}
    for arm in args.arms:
        data, run = args.work / f"data_{arm}", args.work / f"run_{arm}"
        if args.phase in ("all", "data"):
            print(f"[{arm}] phantoms -> {data}", flush=True)
            make_data(data, arm, args)
        if args.phase in ("all", "train"):
            t0 = time.perf_counter()
            print(f"[{arm}] fine-tune {args.iterations} iterations -> {run}", flush=True)
            models[arm] = str(fine_tune(data, run, args))
            print(f"[{arm}] done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    if models:
        (args.work / "models.json").write_text(json.dumps(models, indent=2) + "\n")
        flags = " ".join(f"--model ft_{arm}={path}" for arm, path in models.items())
        print(f"compare on real CT:\n  python benchmarks/validate_real_ct.py --model shipped=default {flags}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
