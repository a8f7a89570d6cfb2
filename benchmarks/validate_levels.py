"""Vertebral levels by counting (spinect.postprocess.levels_counting): which level each truth vertebra gets.

Cases:
  phantom  v2 phantoms with a large field of view (L1 to the pelvis: 320 x 300 x 300 mm at 2 mm,
           seeds --seeds), truth levels from the structure map (codes 1-5 = L1-L5, 6-7 = sacrum);
           bone inputs: the phantom's truth bone labels, and the default model's segmentation.
  chest    real contrast chest CT C5-L3 (fetched/cached like validate_real_ct.py; TotalSegmentator
           labels 32 T12, 31 L1, 30 L2, 29 L3); reference: the last rib.
  crop     real lumbar crop L2-L4 (../shared/data/lumbar_ct_crop, labels 21-23): no reference in
           view, so counting must refuse.
Real cases use two bone inputs: the default model (spinect.api.segment) and a threshold mask
(HU > 150, 3D holes filled).

Per case and input: the level each truth vertebra gets (the level written on most of its voxels that
the bone input holds, "-" = no level code; share of those voxels in brackets) and whether it is right
(T12 has no level code: right = "-").

  OMP_NUM_THREADS=1 python benchmarks/validate_levels.py [--cases phantom,chest,crop] [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SpineCTSegmentation"))

from spinect.postprocess.levels_counting import LevelCountError, count_levels_image  # noqa: E402
from validate_real_ct import level_calls  # noqa: E402  (the same scoring as the real-CT benchmark)

DATA = ROOT.parent / "shared" / "data"
FETCH_CHEST = ROOT.parent / "shared" / "tools" / "fetch-real-chest-ct.sh"
DEFAULT_CACHE = Path.home() / ".cache" / "spinect" / "real_ct" / "chest"
PHANTOM_SHAPE, PHANTOM_SPACING = (160, 150, 150), (2.0, 2.0, 2.0)
PHANTOM_LEVELS = {"L1": (1,), "L2": (2,), "L3": (3,), "L4": (4,), "L5": (5,), "sacrum": (6, 7)}
CHEST_LEVELS = {"T12": (32,), "L1": (31,), "L2": (30,), "L3": (29,)}
CROP_LEVELS = {"L2": (21,), "L3": (22,), "L4": (23,)}


def threshold_bone(ct: sitk.Image) -> sitk.Image:
    mask = ndi.binary_fill_holes(sitk.GetArrayViewFromImage(ct) > 150).astype(np.uint8)
    out = sitk.GetImageFromArray(mask)
    out.CopyInformation(ct)
    return out


def model_bone(ct: sitk.Image) -> sitk.Image:
    from spinect.api import segment

    return segment(ct).labels


def score(case: str, method: str, bone: sitk.Image, truth: np.ndarray, levels: dict) -> dict:
    t0 = time.perf_counter()
    row = {"case": case, "bone": method}
    try:
        level_img, counted = count_levels_image(bone, bone_value=1)
    except LevelCountError as exc:
        row.update(refused=str(exc), seconds=round(time.perf_counter() - t0, 1))
        return row
    got = sitk.GetArrayFromImage(level_img)
    in_bone = sitk.GetArrayViewFromImage(bone) == 1
    # the level written on most of each vertebra's bone (of the bone input), "no code" included, as
    # validate_real_ct.py scores it; vertebrae the bone input misses entirely are left out
    masks = {name: np.isin(truth, codes) for name, codes in levels.items()}
    calls = level_calls({n: m for n, m in masks.items() if (m & in_bone).any()}, got, in_bone)
    for call in calls.values():
        call["share"] = round(call["share"], 2)
    row.update(reference=counted.reference, notes=counted.notes, calls=calls,
               vertebrae=[(v["name"], v["s_mm"], v["height_mm"]) for v in counted.vertebrae],
               seconds=round(time.perf_counter() - t0, 1))
    return row


def phantom_rows(seeds) -> list[dict]:
    from spinect.phantom import generate_case

    rows = []
    for seed in seeds:
        case = generate_case(seed, shape_zyx=PHANTOM_SHAPE, spacing_zyx_mm=PHANTOM_SPACING, window_tables=False)
        truth = sitk.GetArrayFromImage(case.structures)
        bone = sitk.Cast(case.labels == 1, sitk.sitkUInt8)
        rows.append(score(f"phantom {seed}", "truth", bone, truth, PHANTOM_LEVELS))
        rows.append(score(f"phantom {seed}", "model", model_bone(case.ct), truth, PHANTOM_LEVELS))
        print_row(rows[-2]), print_row(rows[-1])
    return rows


def real_rows(name: str, ct: sitk.Image, labels: sitk.Image, levels: dict) -> list[dict]:
    truth = sitk.GetArrayFromImage(labels)
    rows = [score(name, "model", model_bone(ct), truth, levels), score(name, "threshold", threshold_bone(ct), truth,
                                                                         levels)]
    for r in rows:
        print_row(r)
    return rows


def ensure_chest(cache: Path) -> Path:
    if not (cache / "cxr_ct.nii.gz").is_file():
        subprocess.run(["bash", str(FETCH_CHEST), str(cache)], check=True)
    return cache


def print_row(r: dict) -> None:
    if "refused" in r:
        print(f"| {r['case']} | {r['bone']} | refused | {r['refused'][:60]}... | {r['seconds']} |", flush=True)
        return
    calls = ", ".join(f"{n}->{c['called'] or '-'} ({c['share']:.0%}){'' if c['right'] else ' wrong'}"
                      for n, c in r["calls"].items())
    right = sum(c["right"] for c in r["calls"].values())
    print(f"| {r['case']} | {r['bone']} | {r['reference']} | {calls} | {right}/{len(r['calls'])} | "
          f"{'; '.join(r['notes']) or ''} | {r['seconds']} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="phantom,chest,crop")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    print(f"# validate_levels {datetime.date.today()} on {platform.node()} ({platform.processor() or platform.machine()})")
    print("| case | bone input | reference | truth vertebra -> level | right | notes | s |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    if "phantom" in cases:
        rows += phantom_rows(args.seeds)
    if "chest" in cases:
        folder = ensure_chest(args.cache)
        rows += real_rows("chest", sitk.ReadImage(str(folder / "cxr_ct.nii.gz")),
                          sitk.ReadImage(str(folder / "cxr_labels.nii.gz")), CHEST_LEVELS)
    if "crop" in cases:
        folder = DATA / "lumbar_ct_crop"
        rows += real_rows("crop", sitk.ReadImage(str(folder / "sub-ct_label-22_ct.nii.gz")),
                          sitk.ReadImage(str(folder / "sub-ct_seg-vert_label-22_msk.nii.gz")), CROP_LEVELS)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
