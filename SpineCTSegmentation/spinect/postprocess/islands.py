"""False-positive suppression: remove label islands that do not belong to the anatomy.

U-Nets leave scattered "hot spots" far from the anatomy (Ua-Net, seeds/003), which cost the
clinician time and inflate HD95. Rules (connected components, 26-connectivity, scipy):

- bone: keep every component of at least ``min_bone_volume_mm3`` (vertebrae, sacrum and ilium are
  tens of cm³; a disconnected process fragment is still hundreds of mm³); the largest bone
  component is always kept.
- nerve: anchors are the largest nerve component (dural sac with its roots) and the root pieces
  the field of view cut off from it: components of at least ``min_nerve_volume_mm3`` (a 5 mm root
  is 300 mm³ per 15 mm) or tube-shaped ones of at least ``min_root_piece_volume_mm3`` (elongation
  at least ``min_root_piece_elongation``; U-Net hot spots are compact blobs) that reach the edge of
  the volume (within ``fov_edge_voxels``) and lie within ``max_bone_distance_mm`` of bone. Nerves
  are continuous: a piece that is not joined to the sac inside the image must leave the image (every
  detached piece of the phantom's truth on its 96 x 128 x 128 mm crops does, 300-1,400 mm³, 2-26 mm
  from the sac), and spinal nerve roots run close to the spine (the same 30 mm the window region of
  interest assumes, :data:`spinect.pipeline.BONE_MARGIN_MM`). On large fields of view the model's
  false nerve pieces (130-850 mm³, up to 100 mm from any nerve) were kept by a rule without these
  two conditions.
  Every component whose closest voxel lies within ``nerve_max_distance_mm`` of a kept one is kept
  too, repeatedly (a chain): where a predicted root thins in the foramen or leaves the field of
  view it breaks into a dotted line of fragments a few mm apart, whereas Ua-Net's hot spots lie far
  from the anatomy. The numbers were set on development phantoms and checked on others
  (benchmarks/validate_uncertainty.py, docs/uncertainty_validation.md): there, true fragments of
  6-218 voxels lay 6-20 mm from the sac, and a 5 mm rule without chaining or tubes removed them
  and raised HD95; false islands were blobs (elongation 1.1-1.7) 10-60 mm from the sac.

Removed voxels become background, and each removed island is reported (class, voxels, volume,
centroid, distance to the kept anatomy) so that nothing disappears silently.

Cost: linear in the number of islands (a poor prediction on a large field of view leaves
thousands). The "within ``nerve_max_distance_mm``" graph of nerve pieces is built once (candidate
pairs from a grid of cells over the pieces' bounding boxes, then a KD-tree query bounded by the
distance), each chain (a connected component of that graph) is tested once, and the distances in
the report are found per island against the kept pieces in order of their boxes' distance. The
result is the same, bit for bit, as the earlier implementation that re-grew every chain
(``benchmarks/islands_reference.py``; ``benchmarks/bench_islands.py`` compares the two).
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
_STRUCTURE_6 = ndimage.generate_binary_structure(3, 1)


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


def _components(mask: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """(component ids, count, voxels per id, (flat indices of the mask's voxels, their ids))."""
    components, count = ndimage.label(mask, structure=_STRUCTURE_26)
    flat = np.flatnonzero(mask)  # the mask's voxels only (C order): much fewer than the box's
    owner = components.ravel()[flat]
    sizes = np.bincount(owner, minlength=count + 1)
    sizes[0] = mask.size - int(sizes[1:].sum())
    return components, count, sizes, (flat, owner)


def _filter_bone(labels, value, voxel_mm3, spacing, min_volume_mm3) -> list[RemovedIsland]:
    components, count, sizes, voxels = _components(labels == value)
    if count <= 1:
        return []
    keep = sizes * voxel_mm3 >= min_volume_mm3
    keep[0] = False
    keep[int(np.argmax(sizes[1:]) + 1)] = True
    return _remove(labels, components, keep, value, voxel_mm3, spacing, f"bone island < {min_volume_mm3:g} mm³",
                   voxels=voxels)


def _filter_nerve(labels, value, voxel_mm3, spacing, max_distance_mm, min_volume_mm3, tube_volume_mm3,
                  tube_elongation, detached, offset) -> list[RemovedIsland]:
    components, count, sizes, voxels = _components(labels == value)
    if count <= 1:
        return []
    main = int(np.argmax(sizes[1:]) + 1)
    boxes = ndimage.find_objects(components)
    qualified = sizes * voxel_mm3 >= min_volume_mm3
    # Root-shaped pieces qualify too: U-Net hot spots are compact blobs (elongation 1.1-1.7 in validation).
    qualified |= _tubular(components, boxes, sizes * voxel_mm3, spacing, min_volume_mm3=tube_volume_mm3,
                          min_elongation=tube_elongation)
    qualified[0] = qualified[main] = False
    pieces = _NervePieces(components, boxes, voxels, main, np.asarray(spacing, dtype=float), max_distance_mm)
    # Chains: the pieces other than the main one, joined when their closest voxels lie within
    # ``max_distance_mm`` (the graph is built once; a chain is one of its connected components).
    chain = pieces.chains()
    keep = np.zeros(count + 1, dtype=bool)
    keep[main] = True  # the main component anchors even when small
    # A qualified piece anchors, with the fragments chained to it, when that chain is a root the field
    # of view cut off from the sac: some piece of it reaches the image edge and some lies near bone
    # (a root predicted as a dotted line may reach the edge with a small fragment only). Each chain
    # with a qualified piece is tested once.
    order = np.argsort(chain, kind="stable")
    bounds = np.searchsorted(chain[order], np.arange(count + 2))
    for c in np.unique(chain[qualified]):
        members = order[bounds[c]:bounds[c + 1]]
        if detached.cut_by_edge([boxes[m - 1] for m in members],
                                lambda i, members=members: components[boxes[members[i] - 1]] == members[i], offset):
            keep[members] = True
    # Kept pieces grow outwards: a piece within ``max_distance_mm`` of a kept one is kept, then pieces
    # near it, and so on -- a root predicted as a dotted line of fragments stays whole, while islands
    # far from all of them go. A chain is kept or not as a whole, so what is left to grow from is the
    # main component: the chains that come within ``max_distance_mm`` of it are kept.
    keep[np.isin(chain, chain[pieces.near_main()])] = True
    keep[0] = False
    return _remove(labels, components, keep, value, voxel_mm3, spacing,
                   f"nerve piece > {max_distance_mm:g} mm from every kept nerve piece (the dural sac/main nerve, "
                   "root pieces cut off by the edge of the image near bone, and the fragments chained to them)",
                   boxes=boxes, voxels=voxels)


class _NervePieces:
    """The nerve pieces other than the main one, their voxels (mm) and their "within d" graph.

    Linear in the number of pieces: candidate pairs come from a grid of cells about ``d`` wide over
    the pieces' bounding boxes (two pieces closer than ``d`` have boxes in the same or neighbouring
    cells), are filtered by the distance between their boxes, and only then tested exactly with a
    KD-tree query bounded by ``d``; a pair already joined through other pieces is not tested.
    """

    def __init__(self, components, boxes, voxels, main, spacing_mm, max_distance_mm) -> None:
        self.components, self.main, self.spacing, self.d = components, main, spacing_mm, float(max_distance_mm)
        self.count = len(boxes)
        self.box_start = np.array([[sl.start for sl in b] for b in boxes], dtype=np.int64).reshape(-1, 3)
        self.box_stop = np.array([[sl.stop for sl in b] for b in boxes], dtype=np.int64).reshape(-1, 3)
        # Voxels of every piece but the main one, grouped by piece id.
        flat, owner = voxels
        other = owner != main
        flat, owner = flat[other], owner[other]
        order = np.argsort(owner, kind="stable")
        self.owner = owner[order]
        self.points = np.stack(np.unravel_index(flat[order], components.shape), axis=1) * spacing_mm
        self.first = np.searchsorted(self.owner, np.arange(self.count + 2))
        self._trees: dict[int, cKDTree] = {}

    def voxels(self, piece: int) -> np.ndarray:
        return self.points[self.first[piece]:self.first[piece + 1]]

    def _tree(self, piece: int) -> cKDTree:
        tree = self._trees.get(piece)
        if tree is None:
            tree = self._trees[piece] = cKDTree(self.voxels(piece))
        return tree

    def _box_gap_mm(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Distance (mm) between the voxel centres' boxes of pieces ``a`` and ``b`` (ids, arrays)."""
        gap = np.maximum(0, np.maximum(self.box_start[a - 1] - (self.box_stop[b - 1] - 1),
                                       self.box_start[b - 1] - (self.box_stop[a - 1] - 1)))
        return np.sqrt(((gap * self.spacing) ** 2).sum(axis=1))

    def _candidate_pairs(self) -> np.ndarray:
        """(K, 2) piece id pairs (i < j, main excluded) whose boxes lie within ``d``."""
        ids = np.array([i for i in range(1, self.count + 1) if i != self.main], dtype=np.int64)
        if len(ids) < 2:
            return np.zeros((0, 2), dtype=np.int64)
        cell = np.maximum(1, np.ceil(self.d / self.spacing)).astype(np.int64)  # voxels per cell and axis
        lo, hi = self.box_start[ids - 1] // cell, (self.box_stop[ids - 1] - 1) // cell
        # Each piece is registered in the cells its box covers and looks in those and their neighbours.
        span = int(hi.max()) + 3  # cells per axis, with -1 and hi + 1
        reg_piece, reg_cell = _cells(ids, lo, hi, span)
        look_piece, look_cell = _cells(ids, lo - 1, hi + 1, span)
        order = np.argsort(reg_cell, kind="stable")
        reg_cell, reg_piece = reg_cell[order], reg_piece[order]
        left, right = np.searchsorted(reg_cell, look_cell, "left"), np.searchsorted(reg_cell, look_cell, "right")
        n = right - left
        a = np.repeat(look_piece, n)
        b = reg_piece[np.repeat(right - n.cumsum(), n) + np.arange(int(n.sum()))] if n.sum() else a
        pairs = np.unique(np.stack([a, b], axis=1)[a < b], axis=0)
        if len(pairs) == 0:
            return pairs.reshape(0, 2)
        return pairs[self._box_gap_mm(pairs[:, 0], pairs[:, 1]) <= self.d * 1.001]

    def _close(self, a: int, b: int) -> bool:
        """True when some voxel of piece ``a`` lies within ``d`` of some voxel of piece ``b``."""
        if self.first[a + 1] - self.first[a] > self.first[b + 1] - self.first[b]:
            a, b = b, a  # query the smaller piece's voxels against the larger one's tree
        distance = self._tree(b).query(self.voxels(a), distance_upper_bound=self.d * 1.001)[0]
        return bool((distance <= self.d).any())

    def chains(self) -> np.ndarray:
        """Chain id per component id: connected components of the "within d" graph (union-find).

        Background and the main component get ids of their own, which no other piece shares.
        """
        parent = np.arange(self.count + 1)

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for a, b in self._candidate_pairs().tolist():
            ra, rb = root(a), root(b)
            if ra != rb and self._close(a, b):
                parent[max(ra, rb)] = min(ra, rb)
        return np.array([root(i) for i in range(self.count + 1)])

    def near_main(self) -> np.ndarray:
        """Ids of the pieces with a voxel within ``d`` of the main component (bounded KD-tree query)."""
        ids = np.array([i for i in range(1, self.count + 1) if i != self.main], dtype=np.int64)
        if len(ids) == 0:
            return ids
        ids = ids[self._box_gap_mm(ids, np.full_like(ids, self.main)) <= self.d * 1.001]
        if len(ids) == 0:
            return ids
        box = tuple(slice(int(s), int(e)) for s, e in zip(self.box_start[self.main - 1], self.box_stop[self.main - 1]))
        targets = (_nearest_candidates(self.components[box] == self.main) + self.box_start[self.main - 1]) * self.spacing
        near = np.isin(self.owner, ids)
        distance = cKDTree(targets).query(self.points[near], distance_upper_bound=self.d * 1.001, workers=-1)[0]
        return np.unique(self.owner[near][distance <= self.d])


def _cells(ids: np.ndarray, lo: np.ndarray, hi: np.ndarray, span: int) -> tuple[np.ndarray, np.ndarray]:
    """(piece id, cell key) for every cell of each piece's cell range [lo, hi] (inclusive, 3 axes)."""
    extent = hi - lo + 1
    n = extent.prod(axis=1)
    piece = np.repeat(ids, n)
    local = np.arange(int(n.sum())) - np.repeat(n.cumsum() - n, n)
    ext = np.repeat(extent, n, axis=0)
    z, rest = np.divmod(local, ext[:, 1] * ext[:, 2])
    y, x = np.divmod(rest, ext[:, 2])
    cz, cy, cx = (np.repeat(lo, n, axis=0) + np.stack([z, y, x], axis=1) + 1).T  # + 1: keys of cell -1 stay >= 0
    return piece, (cz * span + cy) * span + cx


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

    def cut_by_edge(self, boxes, mask_of, offset: Sequence[int]) -> bool:
        """True when some of a chain's pieces reaches the edge and some lies near bone.

        ``boxes``: the pieces' boxes in a region of the volume whose first voxel is ``offset``;
        ``mask_of(i)``: piece ``i``'s mask in its box, asked for only when the edge test passes.
        """
        boxes = [tuple(slice(sl.start + o, sl.stop + o) for sl, o in zip(box, offset)) for box in boxes]
        shape = self.labels.shape
        if not any(any(sl.start <= self.edge_voxels or sl.stop >= n - self.edge_voxels for sl, n in zip(box, shape))
                   for box in boxes):
            return False
        return any(self._near_bone(mask_of(i), box) for i, box in enumerate(boxes))

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


def _remove(labels, components, keep, value, voxel_mm3, spacing, reason, *, boxes=None,
            voxels=None) -> list[RemovedIsland]:
    """Zero the components whose ``keep`` entry (indexed by component id) is False; report them.

    Vectorised over islands (a poor model can leave thousands): lookup tables instead of per-island
    masks; distances by :func:`_distances_to_kept`.
    """
    drop_ids = np.flatnonzero(~keep[1:]) + 1
    if len(drop_ids) == 0:
        return []
    # The class's voxels (flat indices, C order) and their component ids, when the caller has them.
    flat, owner = voxels if voxels is not None else (np.flatnonzero(components), components[components > 0])
    dropped = ~keep[owner]
    flat, owner = flat[dropped], owner[dropped]
    coords = np.unravel_index(flat, components.shape)
    labels[coords] = 0
    points = np.stack(coords, axis=1)
    if boxes is None:  # the components' boxes (ndimage.find_objects), when the caller has them
        boxes = ndimage.find_objects(components)
    nearest = _distances_to_kept(components, boxes, keep, points, owner, np.asarray(spacing, dtype=float))
    counts = np.bincount(owner, minlength=len(keep))
    sums = np.stack([np.bincount(owner, weights=points[:, a], minlength=len(keep)) for a in range(3)], axis=1)
    return [RemovedIsland(value, int(counts[i]), float(counts[i] * voxel_mm3), tuple(float(v) for v in sums[i] / counts[i]),
                          float(nearest[i]), reason) for i in drop_ids]


def _distances_to_kept(components, boxes, keep, points, owner, spacing) -> np.ndarray:
    """Distance (mm) from each removed island to the nearest kept component, indexed by component id.

    Exact (the closest pair of voxel centres), without one query per voxel against one tree of all
    kept voxels (slow when the kept pieces are scattered: each query far from them visits much of
    the tree). Only what can hold a closest pair is used: the islands' surface voxels (a voxel whose
    6 face neighbours all belong to its island has one, a step along the axis towards any outside
    point, that is closer to it) and each kept component's surface alike, in one KD-tree per kept
    component. Each island asks the kept
    components in order of the distance between their bounding boxes (a lower bound) and stops when
    the next box is farther than the closest voxel found.

    Args:
        components, boxes: component ids and their ``ndimage.find_objects`` boxes.
        keep: per component id, kept or not; ``points`` (voxel indices) and ``owner`` (ids): the
            removed voxels.
    """
    nearest = np.full(len(keep), np.inf)
    kept_ids = np.flatnonzero(keep[1:]) + 1
    if len(kept_ids) == 0:
        return nearest
    surface = _island_surface(components, points, owner)
    points, owner = points[surface] * spacing, owner[surface]
    order = np.argsort(owner, kind="stable")
    points, owner = points[order], owner[order]
    island_ids = np.unique(owner)
    first = np.searchsorted(owner, island_ids)
    last = np.append(first[1:], len(owner))
    start = np.array([[sl.start for sl in b] for b in boxes], dtype=np.int64)
    stop = np.array([[sl.stop for sl in b] for b in boxes], dtype=np.int64)

    def box_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # (len(a), len(b)) lower bounds, mm
        gap = np.maximum(0, np.maximum(start[a - 1][:, None] - (stop[b - 1][None] - 1),
                                       start[b - 1][None] - (stop[a - 1][:, None] - 1)))
        return np.sqrt(((gap * spacing) ** 2).sum(axis=2))

    trees: dict[int, cKDTree] = {}

    def tree(k: int) -> cKDTree:
        if k not in trees:
            box = boxes[k - 1]
            corner = np.array([sl.start for sl in box])
            mask = components[box] == k
            if np.count_nonzero(mask) > 64:  # its surface holds the answer; far queries into a solid block are slow
                mask &= ~ndimage.binary_erosion(mask, structure=_STRUCTURE_6)
            trees[k] = cKDTree((np.argwhere(mask) + corner) * spacing)
        return trees[k]

    best = np.full(len(island_ids), np.inf)
    for chunk in range(0, len(island_ids), 2048):  # bounds the (islands x kept) matrix
        rows = np.arange(chunk, min(chunk + 2048, len(island_ids)))
        bound = box_distance(island_ids[rows], kept_ids)
        ranked = np.argsort(bound, axis=1, kind="stable")
        for step in range(len(kept_ids)):
            column = ranked[rows - chunk, step]
            lower = bound[rows - chunk, column]
            rows, column = rows[lower <= best[rows] * (1 + 1e-9) + 1e-9], column[lower <= best[rows] * (1 + 1e-9) + 1e-9]
            if len(rows) == 0:
                break
            for c in np.unique(column):
                asking = rows[column == c]
                lengths = last[asking] - first[asking]  # >= 1: every island has a surface voxel
                starts = np.cumsum(lengths) - lengths
                index = np.repeat(first[asking] - starts, lengths) + np.arange(int(lengths.sum()))
                distance = tree(int(kept_ids[c])).query(points[index])[0]
                best[asking] = np.minimum(best[asking], np.minimum.reduceat(distance, starts))
    nearest[island_ids] = best
    return nearest


def _island_surface(components: np.ndarray, points: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Which of ``points`` (voxel indices, component ids ``owner``) have a face neighbour outside their component."""
    surface = np.zeros(len(points), dtype=bool)
    shape = np.array(components.shape)
    for offset in np.concatenate([np.eye(3, dtype=np.int64), -np.eye(3, dtype=np.int64)]):
        neighbour = points + offset
        inside = ((neighbour >= 0) & (neighbour < shape)).all(axis=1)
        surface[~inside] = True
        ok = np.flatnonzero(inside & ~surface)
        n = neighbour[ok]
        surface[ok[components[n[:, 0], n[:, 1], n[:, 2]] != owner[ok]]] = True
    return surface
