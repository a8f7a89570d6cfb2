"""Reference: spinect's island removal before the linear-time rewrite (commit 8800a9d), kept verbatim.

Used by ``Testing/test_islands_linear.py`` (identical labels and removal lists on random many-island
maps) and ``benchmarks/bench_islands.py`` (old vs new in the same process). Each qualified nerve piece
re-grows its chain round by round with a fresh KD-tree over all remaining voxels, rejected chains are
rebuilt once per piece: about N^2.4-3.3 in the number of islands. Do not use it in the pipeline.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from spinect.postprocess.boxes import bounding_box

__all__ = ["RemovedIsland", "suppress_islands"]

_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class RemovedIsland:
    """One removed connected component.

    Attributes:
        label_value: class label (1 bone, 2 nerve).
        voxels: number of voxels; volume_mm3: their volume.
        centroid_zyx: centroid in voxel indices (z, y, x) of the label map.
        distance_mm: distance from the island to the kept anatomy of its class (inf if none kept).
        reason: why it was removed.
    """

    label_value: int
    voxels: int
    volume_mm3: float
    centroid_zyx: tuple[float, float, float]
    distance_mm: float
    reason: str


def suppress_islands(
    labels_zyx: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    *,
    bone_label: int = 1,
    nerve_label: int = 2,
    min_bone_volume_mm3: float = 200.0,
    nerve_max_distance_mm: float = 10.0,
    min_nerve_volume_mm3: float = 300.0,
    min_root_piece_volume_mm3: float = 100.0,
    min_root_piece_elongation: float = 3.0,
    fov_edge_voxels: int = 2,
    max_bone_distance_mm: float = 30.0,
) -> tuple[np.ndarray, list[RemovedIsland]]:
    """Remove bone and nerve islands per the module's rules.

    Args:
        labels_zyx: (z, y, x) integer label map.
        spacing_zyx_mm: voxel size (z, y, x), mm.
        min_bone_volume_mm3, nerve_max_distance_mm, min_nerve_volume_mm3, min_root_piece_volume_mm3,
            min_root_piece_elongation, fov_edge_voxels, max_bone_distance_mm: the rules' thresholds
            (module docstring).

    Returns:
        (cleaned uint8 label map, removed islands sorted by decreasing volume).
    """
    labels = np.asarray(labels_zyx).astype(np.uint8, copy=True)
    voxel_mm3 = float(np.prod(spacing_zyx_mm))
    removed: list[RemovedIsland] = []
    detached = _DetachedRootTest(labels, bone_label, spacing_zyx_mm, fov_edge_voxels, max_bone_distance_mm)
    for value, rule in ((bone_label, lambda v, o: _filter_bone(v, bone_label, voxel_mm3, spacing_zyx_mm, min_bone_volume_mm3)),
                        (nerve_label, lambda v, o: _filter_nerve(v, nerve_label, voxel_mm3, spacing_zyx_mm, nerve_max_distance_mm,
                                                                     min_nerve_volume_mm3, min_root_piece_volume_mm3,
                                                                     min_root_piece_elongation, detached, o))):
        # Work inside the class's bounding box (plus one voxel for the 26-neighbourhood): the same
        # components, surfaces and distances as on the whole volume, on a fraction of the voxels.
        box = bounding_box(labels == value, margin=(1,) * labels.ndim)
        if box is None:
            continue
        offset = np.array([sl.start for sl in box], dtype=float)
        removed += [dataclasses.replace(r, centroid_zyx=tuple(float(c) for c in np.asarray(r.centroid_zyx) + offset))
                    for r in rule(labels[box], tuple(sl.start for sl in box))]  # a view: removals land in ``labels``
    removed.sort(key=lambda r: -r.volume_mm3)
    return labels, removed


def _components(mask: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    components, count = ndimage.label(mask, structure=_STRUCTURE_26)
    sizes = np.bincount(components[mask], minlength=count + 1)  # the mask's voxels only: much fewer
    sizes[0] = mask.size - int(sizes[1:].sum())
    return components, count, sizes


def _filter_bone(labels, value, voxel_mm3, spacing, min_volume_mm3) -> list[RemovedIsland]:
    components, count, sizes = _components(labels == value)
    if count <= 1:
        return []
    keep = sizes * voxel_mm3 >= min_volume_mm3
    keep[0] = False
    keep[int(np.argmax(sizes[1:]) + 1)] = True
    return _remove(labels, components, keep, value, voxel_mm3, spacing, f"bone island < {min_volume_mm3:g} mm³")


def _filter_nerve(labels, value, voxel_mm3, spacing, max_distance_mm, min_volume_mm3, tube_volume_mm3,
                  tube_elongation, detached, offset) -> list[RemovedIsland]:
    components, count, sizes = _components(labels == value)
    if count <= 1:
        return []
    main = int(np.argmax(sizes[1:]) + 1)
    boxes = ndimage.find_objects(components)
    qualified = sizes * voxel_mm3 >= min_volume_mm3
    # Root-shaped pieces qualify too: U-Net hot spots are compact blobs (elongation 1.1-1.7 in validation).
    qualified |= _tubular(components, boxes, sizes * voxel_mm3, spacing, min_volume_mm3=tube_volume_mm3,
                          min_elongation=tube_elongation)
    qualified[0] = qualified[main] = False
    spacing_mm = np.asarray(spacing, dtype=float)
    keep = np.zeros(count + 1, dtype=bool)
    keep[main] = True  # the main component anchors even when small
    others = (components > 0) & (components != main)
    owner = components[others]
    points = np.argwhere(others) * spacing_mm
    # A qualified piece anchors, with the fragments chained to it, when that chain is a root the field
    # of view cut off from the sac: some piece of it reaches the image edge and some lies near bone
    # (a root predicted as a dotted line may reach the edge with a small fragment only).
    for index in np.flatnonzero(qualified):
        if keep[index]:
            continue
        own = owner == index
        members = np.append(_reach(points[own], points[~own], owner[~own], max_distance_mm), index)
        pieces = [(components[boxes[m - 1]] == m, boxes[m - 1]) for m in members]
        if detached.cut_by_edge(pieces, offset):
            keep[members] = True
    small = ~keep[owner]
    if small.any():
        # Kept pieces grow outwards: a small piece within ``max_distance_mm`` of a kept one is kept,
        # then pieces near it, and so on -- a root predicted as a dotted line of fragments stays
        # whole, while islands far from all of them go.
        frontier = np.concatenate([_nearest_candidates(components == main) * spacing_mm, points[~small]])
        keep[_reach(frontier, points[small], owner[small], max_distance_mm)] = True
    keep[0] = False
    return _remove(labels, components, keep, value, voxel_mm3, spacing,
                   f"nerve piece > {max_distance_mm:g} mm from every kept nerve piece (the dural sac/main nerve, "
                   "root pieces cut off by the edge of the image near bone, and the fragments chained to them)")


def _reach(frontier: np.ndarray, points: np.ndarray, owner: np.ndarray, max_distance_mm: float) -> np.ndarray:
    """Ids of the pieces reached from ``frontier`` (mm), chaining piece to piece within ``max_distance_mm``.

    ``points`` (mm) are the voxels of the candidate pieces and ``owner`` their piece ids. Distances
    by KD-trees over each round's newly reached pieces, queried with the unreached voxels only.
    """
    reached_all: list[np.ndarray] = []
    while len(frontier) and len(points):
        distance = cKDTree(frontier).query(points, distance_upper_bound=max_distance_mm * 1.001, workers=-1)[0]
        reached = np.unique(owner[distance <= max_distance_mm])
        if len(reached) == 0:
            break
        reached_all.append(reached)
        joined = np.isin(owner, reached)
        frontier, points, owner = points[joined], points[~joined], owner[~joined]
    return np.concatenate(reached_all) if reached_all else np.zeros(0, dtype=np.int64)


class _DetachedRootTest:
    """Could a chain of nerve pieces be a root that the field of view cut off from the sac?

    Yes when one of its pieces reaches the volume's edge (within ``edge_voxels``) and some bone
    voxel lies within ``max_bone_mm`` of one of them (KD-tree over the bone voxels in the piece's
    box grown by that distance).
    """

    def __init__(self, labels, bone_label, spacing, edge_voxels, max_bone_mm) -> None:
        self.labels, self.bone_label = labels, bone_label
        self.spacing = np.asarray(spacing, dtype=float)
        self.edge_voxels, self.max_bone_mm = int(edge_voxels), float(max_bone_mm)
        self.grow = np.ceil(self.max_bone_mm / self.spacing).astype(int)

    def cut_by_edge(self, pieces, offset: Sequence[int]) -> bool:
        """True when some of ``pieces`` reaches the edge and some lies near bone.

        ``pieces``: (mask, box) pairs, boxes in a region of the volume whose first voxel is ``offset``.
        """
        boxes = [tuple(slice(sl.start + o, sl.stop + o) for sl, o in zip(box, offset)) for _, box in pieces]
        shape = self.labels.shape
        if not any(any(sl.start <= self.edge_voxels or sl.stop >= n - self.edge_voxels for sl, n in zip(box, shape))
                   for box in boxes):
            return False
        return any(self._near_bone(mask, box) for (mask, _), box in zip(pieces, boxes))

    def _near_bone(self, mask: np.ndarray, box: tuple[slice, ...]) -> bool:
        shape = self.labels.shape
        grown = tuple(slice(max(sl.start - g, 0), min(sl.stop + g, n)) for sl, g, n in zip(box, self.grow, shape))
        bone = np.argwhere(self.labels[grown] == self.bone_label)
        if len(bone) == 0:
            return False
        shift = np.array([sl.start - g.start for sl, g in zip(box, grown)])
        points = (np.argwhere(mask) + shift) * self.spacing
        distance = cKDTree(bone * self.spacing).query(points, distance_upper_bound=self.max_bone_mm * 1.001)[0]
        return bool((distance <= self.max_bone_mm).any())


def _tubular(components, boxes, volumes_mm3, spacing, *, min_volume_mm3, min_elongation) -> np.ndarray:
    """Which components (by id) are root-like tubes: at least ``min_volume_mm3`` and elongated.

    Elongation = sqrt(largest / second eigenvalue) of the voxel positions' covariance (mm): for a
    cylinder of length L and radius r it is L / (r sqrt 3), so 3 means about 13 mm of a 5 mm root;
    a compact blob is near 1.
    """
    tubular = np.zeros(len(volumes_mm3), dtype=bool)
    candidates = [int(i) for i in np.flatnonzero(volumes_mm3 >= min_volume_mm3) if i > 0]
    for index in candidates:
        box = boxes[index - 1]
        offset = np.array([sl.start for sl in box])
        points = (np.argwhere(components[box] == index) + offset) * np.asarray(spacing, dtype=float)
        if len(points) < 4:
            continue
        eigenvalues = np.linalg.eigvalsh(np.cov(points.T))
        tubular[index] = eigenvalues[-1] >= min_elongation**2 * max(eigenvalues[-2], 1e-9)
    return tubular


#: Up to this many voxels a KD-tree over all of a mask's voxels is cheaper than finding its surface.
_ALL_VOXELS_UP_TO = 300_000


def _nearest_candidates(mask: np.ndarray) -> np.ndarray:
    """(N, 3) voxel indices that contain the nearest ``mask`` voxel of any point outside ``mask``.

    The nearest voxel of a set seen from outside always lies on its surface, so for large masks
    (bone) only surface voxels are returned (one erosion); a small mask (nerve) is returned whole,
    which gives the same nearest distances without the erosion's pass over the box.
    """
    if np.count_nonzero(mask) <= _ALL_VOXELS_UP_TO:
        return np.argwhere(mask)
    return np.argwhere(mask & ~ndimage.binary_erosion(mask, structure=_STRUCTURE_26))


def _remove(labels, components, keep, value, voxel_mm3, spacing, reason) -> list[RemovedIsland]:
    """Zero the components whose ``keep`` entry (indexed by component id) is False; report them.

    Vectorised over islands (a poor model can leave thousands): lookup tables instead of
    per-island masks, one KD-tree query for all removed voxels.
    """
    drop_ids = np.flatnonzero(~keep[1:]) + 1
    if len(drop_ids) == 0:
        return []
    dropped = ~keep[components]  # background (id 0) is never kept: masked out below
    dropped &= components > 0
    coords = np.nonzero(dropped)  # the removed voxels only, C order
    owner = components[coords]
    labels[coords] = 0
    kept = labels == value  # the class's voxels left = the kept components
    spacing = np.asarray(spacing, dtype=float)
    points = np.stack(coords, axis=1)
    # Distance of each removed voxel to the kept anatomy (KD-tree in mm).
    targets = _nearest_candidates(kept)
    if len(targets):
        distance = cKDTree(targets * spacing).query(points * spacing, workers=-1)[0]
    else:
        distance = np.full(len(points), np.inf)
    counts = np.bincount(owner, minlength=len(keep))
    sums = np.stack([np.bincount(owner, weights=points[:, a], minlength=len(keep)) for a in range(3)], axis=1)
    nearest = np.full(len(keep), np.inf)
    np.minimum.at(nearest, owner, distance)
    return [RemovedIsland(value, int(counts[i]), float(counts[i] * voxel_mm3), tuple(float(v) for v in sums[i] / counts[i]),
                          float(nearest[i]), reason) for i in drop_ids]
