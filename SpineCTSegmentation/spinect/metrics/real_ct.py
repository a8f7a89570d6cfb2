"""Metric helpers for validating bone and nerve segmentations on real CT (no Slicer, no Qt).

Real CTs come without nerve truth and, often, with bone truth for only part of the skeleton,
so the validation scores bone against whatever bone is labelled and judges nerve labels by
plausibility: nerves must lie in or near the spinal canal, and the canal should be labelled nerve.

Every array is a NumPy array in (z, y, x) order with z the axial (superior-inferior) axis, as
``sitk.GetArrayFromImage`` returns it for an image in LPS/RAS-like orientation; spacings are
``spacing_zyx_mm`` in mm, CT values in HU, volumes in mL (1 mL = 1000 mm³).

* :func:`threshold_bone`: the simple baseline, HU > 150 with holes filled (2D axial, then 3D).
* :func:`spinal_canal_mask`: the canal as the per-slice hole of the vertebra mask.
* :func:`recall_by_hu_bin`: bone recall split by the truth voxel's HU (< 100, 100-200, > 200).
* :func:`false_positive_volume_ml`: predicted volume farther than a margin from the truth.
* :func:`nerve_plausibility`: share of nerve near the canal, share of canal labelled nerve.
* :func:`surface_dice`: MONAI's normalised surface Dice at a tolerance in mm.
* :func:`bone_scores`: all bone numbers of one prediction at once.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from spinect.metrics.distance import surface_distances_mm
from spinect.metrics.overlap import overlap_scores

__all__ = [
    "BONE_THRESHOLD_HU",
    "HU_BIN_EDGES",
    "HU_BIN_NAMES",
    "NervePlausibility",
    "threshold_bone",
    "spinal_canal_mask",
    "distance_to_mask_mm",
    "dilate_mm",
    "box_region",
    "volume_ml",
    "recall_by_hu_bin",
    "false_positive_volume_ml",
    "nerve_plausibility",
    "surface_dice",
    "bone_scores",
]

#: HU above which the threshold baseline calls a voxel bone.
BONE_THRESHOLD_HU = 150.0
#: Edges of the HU bins of :func:`recall_by_hu_bin`: < 100, 100-200 (both included), > 200.
HU_BIN_EDGES = (100.0, 200.0)
HU_BIN_NAMES = ("<100", "100-200", ">200")


def _check_same_shape(*arrays: np.ndarray) -> None:
    shapes = {np.shape(a) for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"arrays differ in shape: {sorted(shapes)}")


def _spacing(spacing_zyx_mm: Sequence[float]) -> tuple[float, float, float]:
    spacing = tuple(float(s) for s in spacing_zyx_mm)
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise ValueError(f"spacing_zyx_mm must be 3 positive numbers, got {tuple(spacing_zyx_mm)}")
    return spacing  # type: ignore[return-value]


def volume_ml(mask: np.ndarray, spacing_zyx_mm: Sequence[float]) -> float:
    """Volume of a binary mask in mL (voxel count x voxel volume in mm³ / 1000)."""
    sz, sy, sx = _spacing(spacing_zyx_mm)
    return int(np.count_nonzero(mask)) * sz * sy * sx / 1000.0


def _fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """``binary_fill_holes`` of every axial slice (axis 0) of a (z, y, x) mask."""
    out = np.empty_like(mask, dtype=bool)
    for z in range(mask.shape[0]):
        out[z] = ndimage.binary_fill_holes(mask[z])
    return out


def threshold_bone(ct_hu: np.ndarray, *, threshold_hu: float = BONE_THRESHOLD_HU) -> np.ndarray:
    """The threshold baseline: voxels above ``threshold_hu``, holes filled per axial slice and in 3D.

    Filling closes the low-HU marrow inside a cortical shell, which a bare threshold misses.

    Args:
        ct_hu: CT in HU, shape (z, y, x).
        threshold_hu: bone threshold in HU (strictly greater than).

    Returns:
        Bool bone mask, shape (z, y, x).
    """
    mask = np.asarray(ct_hu) > threshold_hu
    mask = _fill_holes_2d(mask)
    return ndimage.binary_fill_holes(mask)


def _disk(radius_mm: float, spacing_yx_mm: tuple[float, float]) -> np.ndarray:
    """2D elliptical structuring element of physical radius ``radius_mm`` on a (y, x) grid."""
    ry = max(int(math.floor(radius_mm / spacing_yx_mm[0])), 0)
    rx = max(int(math.floor(radius_mm / spacing_yx_mm[1])), 0)
    yy, xx = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    dist2 = (yy * spacing_yx_mm[0]) ** 2 + (xx * spacing_yx_mm[1]) ** 2
    return dist2 <= radius_mm**2 + 1e-9


def _largest_component(mask_2d: np.ndarray, min_voxels: int) -> np.ndarray:
    labels, count = ndimage.label(mask_2d)
    if count == 0:
        return mask_2d
    sizes = np.bincount(labels.ravel())[1:]
    best = int(np.argmax(sizes))
    if sizes[best] < min_voxels:
        return np.zeros_like(mask_2d)
    return labels == best + 1


def spinal_canal_mask(
    vertebra: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    *,
    closing_mm: float = 3.0,
    min_area_mm2: float = 10.0,
    largest_only: bool = True,
) -> np.ndarray:
    """The spinal canal: per axial slice, the hole that filling the vertebra mask closes.

    Per axial slice (axis 0): ``canal = binary_fill_holes(v) & ~v``. Where a slice has vertebra
    voxels but no hole (the ring is open, e.g. a partly labelled arch on a cropped CT), the slice
    is first closed with a 2D disk of radius ``closing_mm`` and the hole of the closed mask is
    used: ``fill_holes(close(v)) & ~close(v)`` (voxels the closing added are never canal). With
    ``largest_only`` only the largest hole of a slice is kept (the canal; smaller holes such as
    cervical transverse foramina are dropped); holes under ``min_area_mm2`` are dropped.

    Args:
        vertebra: vertebra mask, shape (z, y, x), bool or 0/1.
        spacing_zyx_mm: voxel size (z, y, x) in mm.
        closing_mm: radius of the 2D closing for open slices, mm; 0 disables the closing.
        min_area_mm2: smallest hole kept per slice, mm².
        largest_only: keep only the largest hole per slice.

    Returns:
        Bool canal mask, shape (z, y, x); empty when no slice has a hole.
    """
    vert = np.asarray(vertebra, dtype=bool)
    if vert.ndim != 3:
        raise ValueError(f"vertebra mask must be 3D (z, y, x), got shape {vert.shape}")
    spacing = _spacing(spacing_zyx_mm)
    pixel_mm2 = spacing[1] * spacing[2]
    min_voxels = max(int(math.ceil(min_area_mm2 / pixel_mm2 - 1e-9)), 1)
    disk = _disk(closing_mm, (spacing[1], spacing[2])) if closing_mm > 0 else None
    canal = np.zeros_like(vert)
    for z in np.flatnonzero(vert.any(axis=(1, 2))):
        hole = _hole(vert[z], None)
        if not hole.any() and disk is not None and disk.size > 1:
            hole = _hole(vert[z], disk)
        if largest_only:
            hole = _largest_component(hole, min_voxels)
        else:
            hole = _drop_small(hole, min_voxels)
        canal[z] = hole
    return canal


def _hole(slice_mask: np.ndarray, disk: np.ndarray | None) -> np.ndarray:
    if disk is None:
        return ndimage.binary_fill_holes(slice_mask) & ~slice_mask
    pad = max(disk.shape) // 2 + 1  # pad so the closing does not stick to the array edge
    padded = np.pad(slice_mask, pad)
    closed = ndimage.binary_closing(padded, structure=disk)
    hole = ndimage.binary_fill_holes(closed) & ~closed
    return hole[pad:-pad, pad:-pad]


def _drop_small(mask_2d: np.ndarray, min_voxels: int) -> np.ndarray:
    labels, count = ndimage.label(mask_2d)
    if count == 0:
        return mask_2d
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def distance_to_mask_mm(mask: np.ndarray, spacing_zyx_mm: Sequence[float]) -> np.ndarray:
    """Euclidean distance (mm) of every voxel to the nearest voxel of ``mask`` (0 inside).

    Returns an all-inf array when ``mask`` is empty. Shape (z, y, x), float64.
    """
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return np.full(m.shape, np.inf)
    return ndimage.distance_transform_edt(~m, sampling=_spacing(spacing_zyx_mm))


def dilate_mm(mask: np.ndarray, spacing_zyx_mm: Sequence[float], margin_mm: float) -> np.ndarray:
    """``mask`` grown by ``margin_mm`` (every voxel whose centre is within ``margin_mm`` of it)."""
    if margin_mm <= 0:
        return np.asarray(mask, dtype=bool).copy()
    return distance_to_mask_mm(mask, spacing_zyx_mm) <= margin_mm + 1e-6


def box_region(
    mask: np.ndarray, spacing_zyx_mm: Sequence[float], margin_zyx_mm: Sequence[float]
) -> np.ndarray:
    """Bool region: the bounding box of ``mask`` grown by ``margin_zyx_mm`` per axis (mm), clipped.

    Used to score only near a labelled structure (e.g. the vertebra of a CT whose ribs are not
    labelled). Empty ``mask`` -> empty region.
    """
    m = np.asarray(mask, dtype=bool)
    region = np.zeros_like(m)
    if not m.any():
        return region
    spacing = _spacing(spacing_zyx_mm)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(m.any(axis=other))
        grow = int(math.floor(float(margin_zyx_mm[axis]) / spacing[axis] + 1e-9))
        box.append(slice(max(hits[0] - grow, 0), min(hits[-1] + grow + 1, m.shape[axis])))
    region[tuple(box)] = True
    return region


def recall_by_hu_bin(
    pred: np.ndarray, truth: np.ndarray, ct_hu: np.ndarray, *, edges_hu: Sequence[float] = HU_BIN_EDGES
) -> dict[str, dict[str, float]]:
    """Bone recall |P ∩ T| / |T| over the truth voxels of each HU bin.

    Bins: HU < edges[0], edges[0] <= HU <= edges[1], HU > edges[1] (default < 100, 100-200, > 200).

    Args:
        pred, truth: predicted and true bone masks, shape (z, y, x).
        ct_hu: CT in HU, same shape.

    Returns:
        ``{bin name: {"recall": r, "n_truth_voxels": n}}``; recall is NaN for a bin without truth voxels.
    """
    _check_same_shape(pred, truth, ct_hu)
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    hu = np.asarray(ct_hu)[t]
    hit = p[t]
    lo, hi = float(edges_hu[0]), float(edges_hu[1])
    selections = (hu < lo, (hu >= lo) & (hu <= hi), hu > hi)
    names = (f"<{lo:g}", f"{lo:g}-{hi:g}", f">{hi:g}")
    out = {}
    for name, sel in zip(names, selections):
        n = int(np.count_nonzero(sel))
        out[name] = {"recall": float(np.count_nonzero(hit[sel]) / n) if n else float("nan"), "n_truth_voxels": n}
    return out


def false_positive_volume_ml(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    *,
    margin_mm: float = 3.0,
    region: np.ndarray | None = None,
) -> float:
    """Predicted volume (mL) farther than ``margin_mm`` from the truth, inside ``region``.

    ``pred & ~dilate(truth, margin_mm) & region``: a boundary disagreement within the margin is not
    counted, a predicted piece of bone where there is none is. Empty truth -> all of ``pred``.

    Args:
        pred, truth: masks, shape (z, y, x).
        spacing_zyx_mm: voxel size (z, y, x), mm.
        margin_mm: tolerance around the truth, mm.
        region: optional scored region (bool, same shape); None = everywhere.
    """
    _check_same_shape(pred, truth)
    fp = np.asarray(pred, dtype=bool) & ~dilate_mm(truth, spacing_zyx_mm, margin_mm)
    if region is not None:
        _check_same_shape(pred, region)
        fp &= np.asarray(region, dtype=bool)
    return volume_ml(fp, spacing_zyx_mm)


@dataclass(frozen=True)
class NervePlausibility:
    """Whether predicted nerve lies where nerves can be, on a CT without nerve truth.

    Attributes:
        share_nerve_near_canal: share of predicted nerve voxels within ``near_mm`` of the canal
            (NaN when no nerve was predicted or there is no canal).
        share_canal_labelled_nerve: share of canal voxels predicted as nerve (NaN without canal).
        nerve_volume_ml: predicted nerve volume, mL.
        canal_volume_ml: canal volume, mL.
        near_mm: the distance used, mm.
    """

    share_nerve_near_canal: float
    share_canal_labelled_nerve: float
    nerve_volume_ml: float
    canal_volume_ml: float
    near_mm: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def nerve_plausibility(
    nerve: np.ndarray,
    canal: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    *,
    near_mm: float = 20.0,
    region: np.ndarray | None = None,
) -> NervePlausibility:
    """Share of predicted nerve within ``near_mm`` of the canal and share of the canal labelled nerve.

    Args:
        nerve: predicted nerve mask, shape (z, y, x).
        canal: spinal canal mask (see :func:`spinal_canal_mask`), same shape.
        spacing_zyx_mm: voxel size (z, y, x), mm.
        near_mm: how close to the canal a nerve voxel must be, mm (distance <= near_mm).
        region: optional scored region; nerve voxels outside it are ignored.
    """
    _check_same_shape(nerve, canal)
    n = np.asarray(nerve, dtype=bool)
    if region is not None:
        n = n & np.asarray(region, dtype=bool)
    c = np.asarray(canal, dtype=bool)
    n_nerve, n_canal = int(np.count_nonzero(n)), int(np.count_nonzero(c))
    near = float("nan")
    covered = float("nan")
    if n_canal:
        covered = int(np.count_nonzero(n & c)) / n_canal
        if n_nerve:
            near = int(np.count_nonzero(distance_to_mask_mm(c, spacing_zyx_mm)[n] <= near_mm + 1e-6)) / n_nerve
    return NervePlausibility(near, covered, volume_ml(n, spacing_zyx_mm), volume_ml(c, spacing_zyx_mm), float(near_mm))


def surface_dice(
    pred: np.ndarray, truth: np.ndarray, spacing_zyx_mm: Sequence[float], *, tolerance_mm: float = 1.0
) -> float:
    """Normalised surface Dice at ``tolerance_mm`` (MONAI ``compute_surface_dice``), in [0, 1].

    The share of both surfaces (voxel-centre surfaces, as MONAI defines them) lying within
    ``tolerance_mm`` of the other surface. Both masks empty -> 1; exactly one empty -> 0 (the
    convention of :mod:`spinect.metrics.overlap`). The masks are cropped to their joint box plus a
    one-voxel border first, which changes no distance.
    """
    import torch
    from monai.metrics import compute_surface_dice

    _check_same_shape(pred, truth)
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    spacing = _spacing(spacing_zyx_mm)
    if not p.any() and not t.any():
        return 1.0
    if not (p.any() and t.any()):
        return 0.0
    box = _joint_box(p | t)
    y_pred = torch.from_numpy(p[box][None, None].astype(np.float32))
    y = torch.from_numpy(t[box][None, None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = compute_surface_dice(y_pred, y, class_thresholds=[float(tolerance_mm)], include_background=True,
                                     spacing=spacing)
    return float(value[0, 0])


def _joint_box(union: np.ndarray) -> tuple[slice, ...]:
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(hits[0] - 1, 0), min(hits[-1] + 2, union.shape[axis])))
    return tuple(box)


def bone_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    ct_hu: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    *,
    region: np.ndarray | None = None,
    ignore: np.ndarray | None = None,
    fp_margin_mm: float = 3.0,
    surface_tolerance_mm: float = 1.0,
) -> dict[str, object]:
    """All bone numbers of one prediction: Dice, HD95, surface Dice, recall per HU bin, FP volume.

    Args:
        pred, truth: predicted and true bone masks, shape (z, y, x).
        ct_hu: CT in HU, same shape.
        spacing_zyx_mm: voxel size (z, y, x), mm.
        region: scored region (bool); prediction and truth outside it are ignored. None = all.
        ignore: voxels left out of the score (e.g. other, unlabelled-as-truth bones); None = none.
        fp_margin_mm: margin of :func:`false_positive_volume_ml`, mm.
        surface_tolerance_mm: tolerance of :func:`surface_dice`, mm.

    Returns:
        ``dice``, ``hd95_mm``, ``surface_dice``, ``recall_by_hu`` (see :func:`recall_by_hu_bin`),
        ``fp_volume_ml``, ``pred_volume_ml``, ``truth_volume_ml``.
    """
    _check_same_shape(pred, truth, ct_hu)
    scored = np.ones(np.shape(pred), dtype=bool) if region is None else np.asarray(region, dtype=bool).copy()
    if ignore is not None:
        scored &= ~np.asarray(ignore, dtype=bool)
    p = np.asarray(pred, dtype=bool) & scored
    t = np.asarray(truth, dtype=bool) & scored
    overlap = overlap_scores(p, t)
    distances = surface_distances_mm(p, t, spacing_zyx_mm=spacing_zyx_mm)
    return {
        "dice": overlap.dice,
        "hd95_mm": distances.hd95_mm,
        "surface_dice": surface_dice(p, t, spacing_zyx_mm, tolerance_mm=surface_tolerance_mm),
        "recall_by_hu": recall_by_hu_bin(p, t, ct_hu),
        "fp_volume_ml": false_positive_volume_ml(p, t, spacing_zyx_mm, margin_mm=fp_margin_mm, region=scored),
        "pred_volume_ml": volume_ml(p, spacing_zyx_mm),
        "truth_volume_ml": volume_ml(t, spacing_zyx_mm),
    }
