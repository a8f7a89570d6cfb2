"""Review list: the regions an annotator should look at first.

Connected components (26-connectivity) of voxels whose uncertainty is at least a threshold,
ranked by total uncertainty (volume x mean uncertainty), each with its centroid, volume, mean
uncertainty and the class the ensemble predicts there.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from spinect.io.atomic import atomic_output

__all__ = ["ReviewRegion", "uncertain_regions", "write_review"]


@dataclass(frozen=True)
class ReviewRegion:
    """One uncertain region; positions are LPS mm (world) and voxel (z, y, x) of the label grid."""

    rank: int
    class_name: str
    volume_mm3: float
    voxels: int
    mean_uncertainty: float
    max_uncertainty: float
    centroid_lps_mm: tuple[float, float, float]
    centroid_zyx: tuple[float, float, float]


def uncertain_regions(
    uncertainty: sitk.Image,
    labels: sitk.Image,
    *,
    class_names: Sequence[str],
    threshold: float = 0.3,
    top_k: int = 20,
    min_voxels: int = 3,
) -> list[ReviewRegion]:
    """Top-``top_k`` connected regions with uncertainty >= ``threshold`` (nats).

    Args:
        uncertainty: float image (e.g. vote entropy) on the same grid as ``labels``.
        labels: UInt8 prediction; a region's class is the most frequent label inside it, where
            background counts only if no foreground label is present.
    """
    u = sitk.GetArrayViewFromImage(uncertainty)
    lab = sitk.GetArrayViewFromImage(labels)
    components, count = ndimage.label(u >= threshold, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(np.ones_like(u, dtype=np.uint8), components, index)
    sums = ndimage.sum_labels(u, components, index)
    maxima = ndimage.maximum(u, components, index)
    order = [i for i in np.argsort(-sums, kind="stable") if sizes[i] >= min_voxels][:top_k]
    voxel_mm3 = float(np.prod(uncertainty.GetSpacing()))
    boxes = ndimage.find_objects(components)
    regions = []
    for rank, i in enumerate(order, start=1):
        box = boxes[i]
        inside = components[box] == i + 1
        points = np.argwhere(inside) + np.array([b.start for b in box])
        centroid_zyx = points.mean(axis=0)
        world = uncertainty.TransformContinuousIndexToPhysicalPoint(tuple(float(c) for c in centroid_zyx[::-1]))
        counts = np.bincount(lab[box][inside], minlength=len(class_names))
        cls = int(np.argmax(counts[1:]) + 1) if counts[1:].any() else 0
        regions.append(ReviewRegion(rank, class_names[cls], float(sizes[i] * voxel_mm3), int(sizes[i]),
                                    float(sums[i] / sizes[i]), float(maxima[i]), tuple(world),
                                    tuple(float(c) for c in centroid_zyx)))
    return regions


def write_review(regions: Sequence[ReviewRegion], path: str | Path) -> Path:
    """Write regions as CSV (``.csv``) or JSON (anything else), atomically."""
    path = Path(path)
    rows = [asdict(r) for r in regions]
    if path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        fields = list(ReviewRegion.__dataclass_fields__)
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (" ".join(f"{v:.2f}" for v in row[k]) if isinstance(row[k], tuple) else row[k]) for k in fields})
        text = buffer.getvalue()
    else:
        text = json.dumps({"regions": rows}, indent=2) + "\n"
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
