"""Few labelled cases: does fine-tuning the default model beat training from scratch? (real L3 crop)

A real user has a handful of labelled scans, not 50. This benchmark takes the one real lumbar CT with
bone labels here (``../shared/data/lumbar_ct_crop/``, L2-L4 at 1.5 mm), splits it along the
cranio-caudal axis into a cranial part (training) and a caudal part (test) with a gap between them,
and trains the same network for the same number of steps twice: from the shipped default model
(``spinect train --init default``) and from scratch. Both are then scored on the caudal part (bone
Dice, HD95) next to the untouched default model and the HU threshold baseline.

The crop has no nerve labels: its label map holds bone (any vertebra label) and background only, so
both runs also learn "no nerve here"; only bone is scored. It is a benchmark (prints a table, writes
``OUT/finetune_real_crop.json``), not a timed test.

Usage::

    python benchmarks/finetune_real_crop.py [--iterations 300] [--out runs/finetune_crop] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SpineCTSegmentation"))
CROP = ROOT.parent / "shared" / "data" / "lumbar_ct_crop"
GAP_MM = 6.0


def load_crop() -> tuple[sitk.Image, sitk.Image]:
    """(CT, bone label 0/1) of the real crop, reoriented to LPS so that array axis 0 is axial (z)."""
    if not CROP.is_dir():
        raise SystemExit(f"error: {CROP} is missing (the shared real data folder)")
    ct = sitk.DICOMOrient(sitk.ReadImage(str(CROP / "sub-ct_label-22_ct.nii.gz")), "LPS")
    vert = sitk.DICOMOrient(sitk.ReadImage(str(CROP / "sub-ct_seg-vert_label-22_msk.nii.gz")), "LPS")
    bone = sitk.Cast(vert > 0, sitk.sitkUInt8)
    bone.CopyInformation(ct)
    return ct, bone


def split_z(image: sitk.Image, gap_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """(cranial, caudal) parts of ``image`` along its z axis (LPS: +z is superior), ``gap_mm`` apart."""
    nz = image.GetSize()[2]
    gap = int(round(gap_mm / image.GetSpacing()[2]))
    half = (nz - gap) // 2
    caudal = sitk.RegionOfInterest(image, [image.GetSize()[0], image.GetSize()[1], half], [0, 0, 0])
    cranial = sitk.RegionOfInterest(image, [image.GetSize()[0], image.GetSize()[1], nz - half - gap], [0, 0, half + gap])
    return cranial, caudal


def bone_scores(pred: np.ndarray, truth: np.ndarray, spacing_zyx_mm) -> dict[str, float]:
    from spinect.metrics import overlap_scores, surface_distances_mm

    return {"dice": float(overlap_scores(pred, truth).dice),
            "hd95_mm": float(surface_distances_mm(pred, truth, spacing_zyx_mm=spacing_zyx_mm).hd95_mm)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "finetune_crop")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--lr", type=float, default=3e-4)
    args = p.parse_args(argv)

    import torch

    from spinect.api import segment, train
    from spinect.manifest import DatasetCase, write_manifest
    from spinect.metrics.real_ct import threshold_bone
    from spinect.model_file import default_model_path, load_plan

    torch.set_num_threads(args.threads)
    ct, bone = load_crop()
    (ct_train, ct_test), (lab_train, lab_test) = split_z(ct, GAP_MM), split_z(bone, GAP_MM)
    data = args.out / "data"
    data.mkdir(parents=True, exist_ok=True)
    cases = []
    for cid, split in (("crop_cranial", "train"), ("crop_cranial_val", "val")):
        image, label = data / f"{cid}_ct.nii.gz", data / f"{cid}_labels.nii.gz"
        sitk.WriteImage(ct_train, str(image), True)
        sitk.WriteImage(lab_train, str(label), True)
        cases.append(DatasetCase(cid, image, label, "real crop, cranial part", {"split": split}))
    write_manifest(data, cases)
    print(f"train: cranial {ct_train.GetSize()[2]} slices; test: caudal {ct_test.GetSize()[2]} slices "
          f"({GAP_MM:g} mm apart) of the real crop at {ct.GetSpacing()[2]:.1f} mm")

    models: dict[str, Path] = {"default (no training)": default_model_path()}
    seconds: dict[str, float] = {}
    # Same network for both arms (the default model's width): only the starting weights differ.
    base_width = int(load_plan(default_model_path()).architecture["base_width"])
    for name, init in (("fine-tuned from default", default_model_path()), ("from scratch", None)):
        run = args.out / ("run_init" if init else "run_scratch")
        t0 = time.perf_counter()
        result = train(data, run, iterations=args.iterations, val_every=args.iterations, lr=args.lr, batch_size=4,
                       num_threads=args.threads, seed=args.seed, init=init, device="cpu", show_progress=False,
                       base_width=base_width,
                       resume=(run / "last_state.pt").is_file())
        seconds[name] = time.perf_counter() - t0
        models[name] = result.last_model
        print(f"{name}: {args.iterations} iterations in {seconds[name]:.0f} s")

    truth = sitk.GetArrayFromImage(lab_test) > 0
    spacing = tuple(reversed(ct_test.GetSpacing()))
    hu = sitk.GetArrayFromImage(ct_test).astype(np.float32)
    rows = {"threshold (HU > 150, holes filled)": bone_scores(threshold_bone(hu), truth, spacing)}
    for name, path in models.items():
        labels = segment(ct_test, model=path, device="cpu").labels
        rows[name] = bone_scores(sitk.GetArrayFromImage(labels) == 1, truth, spacing)
    print(f"\nbone on the caudal part (test), {args.iterations} iterations per run:")
    print("| method | bone Dice | bone HD95 mm |\n|---|---|---|")
    for name, s in rows.items():
        print(f"| {name} | {s['dice']:.3f} | {s['hd95_mm']:.1f} |")
    out = args.out / "finetune_real_crop.json"
    out.write_text(json.dumps({"iterations": args.iterations, "seed": args.seed, "lr": args.lr, "gap_mm": GAP_MM,
                               "seconds": seconds, "base_width": base_width, "bone": rows, "default_model": str(default_model_path())}, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
