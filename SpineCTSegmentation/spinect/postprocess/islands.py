"""False-positive suppression: remove label islands that do not belong to the anatomy.

U-Nets leave scattered "hot spots" far from the anatomy (Ua-Net, seeds/003), which cost the
clinician time and inflate HD95. Rules (connected components, 26-connectivity, scipy):

- bone: keep every component of at least ``min_bone_volume_mm3`` (vertebrae, sacrum and ilium are
  tens of cm³; a disconnected process fragment is still hundreds of mm³); the largest bone
  component is always kept. Given the CT's bone-dense voxels (``dense_zyx``: at least
  :data:`spinect.pipeline.DENSE_BONE_HU`), a component with fewer than ``min_dense_share`` of its
  voxels dense is removed too: every bone has a cortex, but a contrast-filled kidney or vessel
  (150-400 HU) has none. On the real chest CT the default model labelled a 61 mL kidney as bone
  whose 99th HU percentile is 322; its true bone components read 544-800 HU at the 95th.
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
thousands), and no pass of a labelling algorithm over the whole grid: the components of both
classes come from the labelled voxels' runs along x (:mod:`spinect.postprocess.runs`), and so do
their boxes and surfaces. The "within ``nerve_max_distance_mm``" graph of nerve pieces is built
once (candidate pairs from a grid of cells over the pieces' bounding boxes, then an exact test on
the pieces' surfaces bounded by the distance), each chain (a connected component of that graph) is
tested once, and the distances in the report are found per island against the kept pieces'
surfaces in order of their boxes' distance. The result is the same, bit for bit, as the earlier
implementation that re-grew every chain (``benchmarks/islands_reference.py``;
``benchmarks/bench_islands.py`` compares the two).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree

from spinect.postprocess.runs import Runs, label_runs

__all__ = ["RemovedIsland", "suppress_islands"]


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
    min_dense_share: float = 0.01,
    dense_zyx: np.ndarray | None = None,
) -> tuple[np.ndarray, list[RemovedIsland]]:
    """Remove bone and nerve islands per the module's rules.

    Args:
        labels_zyx: (z, y, x) integer label map.
        spacing_zyx_mm: voxel size (z, y, x), mm.
        min_bone_volume_mm3, nerve_max_distance_mm, min_nerve_volume_mm3, min_root_piece_volume_mm3,
            min_root_piece_elongation, fov_edge_voxels, max_bone_distance_mm, min_dense_share: the
            rules' thresholds (module docstring).
        dense_zyx: optional (z, y, x) bool, the CT's bone-dense voxels on the label map's grid;
            None = no density rule.

    Returns:
        (cleaned uint8 label map, removed islands sorted by decreasing volume).
    """
    labels = np.asarray(labels_zyx).astype(np.uint8, copy=True)
    if labels.ndim != 3:
        raise ValueError(f"suppress_islands expects a (z, y, x) label map, got {labels.ndim} dimensions")
    voxel_mm3 = float(np.prod(spacing_zyx_mm))
    spacing = np.asarray(spacing_zyx_mm, dtype=float)
    # Components of both classes at once, from the labelled voxels' runs along x (no labelling pass
    # over the whole grid per class: a large field of view is mostly background).
    runs = label_runs(labels)
    removed: list[RemovedIsland] = []
    # Bone first: the nerve rules look for bone near a root piece among the bone that is kept.
    kept_bone = np.zeros((0, 3), dtype=np.int64)
    kept_boxes = (kept_bone, kept_bone)
    bone = _Components.of_class(runs, bone_label)
    if bone is not None:
        big = _bone_keep(bone, voxel_mm3, min_bone_volume_mm3)
        hollow = np.zeros_like(big)
        if dense_zyx is not None:
            if np.shape(dense_zyx) != labels.shape:
                raise ValueError(f"dense_zyx {np.shape(dense_zyx)} must have the label map's shape {labels.shape}")
            flat, owner = bone.voxels
            dense = np.bincount(owner, weights=np.asarray(dense_zyx)[bone.box].ravel()[flat], minlength=bone.count + 1)
            hollow = big & (dense < min_dense_share * bone.sizes)
            hollow[int(np.argmax(bone.sizes[1:]) + 1)] = False  # the largest bone is always kept
            hollow[0] = False
        keep = big & ~hollow
        removed += _remove(labels, bone, keep, bone_label, voxel_mm3, spacing,
                           f"bone island < {min_bone_volume_mm3:g} mm³", drop=~big)
        removed += _remove(labels, bone, keep, bone_label, voxel_mm3, spacing,
                           f"bone island with under {100 * min_dense_share:g} % bone-dense voxels (no cortex: "
                           "a contrast-filled organ or vessel)", drop=hollow)
        flat, owner = bone.surface()  # the nearest bone voxel of any other voxel lies on it
        kept_bone = bone.indices(flat[keep[owner]]) + bone.offset
        kept_boxes = (bone.box_start[keep[1:]] + bone.offset, bone.box_stop[keep[1:]] + bone.offset)
    nerve = _Components.of_class(runs, nerve_label)
    if nerve is not None:
        detached = _DetachedRootTest(labels.shape, kept_bone, kept_boxes, spacing, fov_edge_voxels, max_bone_distance_mm)
        keep = _nerve_keep(nerve, voxel_mm3, spacing, nerve_max_distance_mm, min_nerve_volume_mm3,
                           min_root_piece_volume_mm3, min_root_piece_elongation, detached)
        removed += _remove(labels, nerve, keep, nerve_label, voxel_mm3, spacing,
                           f"nerve piece > {nerve_max_distance_mm:g} mm from every kept nerve piece (the dural "
                           "sac/main nerve, root pieces cut off by the edge of the image near bone, and the fragments "
                           "chained to them)")
    removed.sort(key=lambda r: -r.volume_mm3)
    return labels, removed


#: Surface positions marked at a time in :meth:`_Components.surface` (bounds its temporaries to ~64 MiB).
_SURFACE_CHUNK = 1 << 22


class _Components:
    """One class's 26-connected components inside the class's box (its voxels' box grown by one voxel).

    Found from the map's runs (:mod:`spinect.postprocess.runs`), numbered as ``scipy.ndimage.label``
    numbers them (raster order of their first voxels). Coordinates are voxel indices (z, y, x) in
    the class's box, whose first voxel is ``offset`` in the label map.

    Attributes:
        box, offset, shape: the class's box in the label map, its first voxel and its shape.
        count: number of components; sizes: voxels per id (index 0: the box's other voxels).
        voxels: (flat indices in the box of the class's voxels, C order; their ids).
        box_start, box_stop: (count, 3) each component's box (row ``id - 1``), stop exclusive.
    """

    def __init__(self, runs: Runs, value: int, chosen: np.ndarray) -> None:
        nz, ny, nx = runs.shape
        row = runs.start[chosen] // nx
        z, y, x0 = row // ny, row % ny, runs.start[chosen] % nx
        x1 = x0 + runs.length[chosen]  # exclusive
        lo = np.maximum(np.array([z.min(), y.min(), x0.min()]) - 1, 0)
        hi = np.minimum(np.array([z.max(), y.max(), x1.max() - 1]) + 2, runs.shape)
        self.box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        self.offset = lo.astype(np.int64)
        self.shape = tuple(int(v) for v in hi - lo)
        self.count = int(runs.count[value])
        # The class's runs in box coordinates (still in raster order).
        self.z, self.y, self.x0, self.x1 = z - lo[0], y - lo[1], x0 - lo[2], x1 - lo[2]
        self.ids, self.length = runs.component[chosen], runs.length[chosen]
        self.run_first = np.cumsum(self.length) - self.length  # index of each run's first voxel in ``voxels``
        self.row_start = (self.z * self.shape[1] + self.y) * self.shape[2]
        # Flat index of voxel i (of run r): row_start + x0 + (i - run_first), summed in place (two voxel-sized
        # int64 arrays at once rather than four).
        flat = np.repeat(self.row_start + self.x0 - self.run_first, self.length)
        flat += np.arange(len(flat), dtype=np.int64)
        self.voxels = (flat, np.repeat(self.ids, self.length))
        self.sizes = np.bincount(self.voxels[1], minlength=self.count + 1)
        self.sizes[0] = int(np.prod(self.shape)) - int(self.sizes[1:].sum())
        self.box_start = np.full((self.count + 1, 3), np.iinfo(np.int64).max, dtype=np.int64)
        self.box_stop = np.full((self.count + 1, 3), -1, dtype=np.int64)
        for axis, (first, last) in enumerate(((self.z, self.z + 1), (self.y, self.y + 1), (self.x0, self.x1))):
            np.minimum.at(self.box_start[:, axis], self.ids, first)
            np.maximum.at(self.box_stop[:, axis], self.ids, last)
        self.box_start, self.box_stop = self.box_start[1:], self.box_stop[1:]
        self._surface: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def of_class(cls, runs: Runs, value: int) -> "_Components | None":
        """The components of label ``value``, or None when the map has none of it."""
        chosen = np.flatnonzero(runs.value == value)
        return cls(runs, value, chosen) if len(chosen) else None

    def indices(self, flat: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices (z, y, x) in the box of flat indices in the box."""
        return np.stack(np.unravel_index(flat, self.shape), axis=1)

    def surface(self) -> tuple[np.ndarray, np.ndarray]:
        """(flat indices in the box, ids) of the voxels with a face neighbour outside their component.

        In raster order. The closest voxel of a component to any point outside it is one of them
        (from a voxel whose 6 face neighbours are all in the component, a step along an axis towards
        the point is closer). A run's two ends are on it (its x neighbours are not of its class);
        along y and z, the parts of a run that the runs of the neighbouring row do not cover (runs
        of one class that touch by a face are of one component).
        """
        if self._surface is not None:
            return self._surface
        nzb, nyb, nxb = self.shape
        index = np.arange(len(self.ids))
        start, end = self.row_start + self.x0, self.row_start + self.x1  # flat, increasing
        on_surface = np.zeros(len(self.voxels[0]), dtype=bool)

        def mark(run: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
            """Mark voxels x in [a, b) of runs ``run``. Pieces are marked as they are found, a bounded
            number of positions at a time (issue 17: collected first, they took 370 MiB at once on a
            512×512×600 CT's bone)."""
            ok = b > a
            run, a, n = run[ok], a[ok], (b - a)[ok]
            first = self.run_first[run] + a - self.x0[run]  # each piece's first position in ``voxels``
            ends = np.cumsum(n)
            cuts = np.searchsorted(ends, np.arange(_SURFACE_CHUNK, int(ends[-1]) if len(ends) else 0, _SURFACE_CHUNK))
            for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(n)]])):
                m = n[lo:hi]
                position = np.repeat(first[lo:hi] - (np.cumsum(m) - m), m)
                position += np.arange(len(position))
                on_surface[position] = True

        mark(index, self.x0, self.x0 + 1)
        mark(index, self.x1 - 1, self.x1)
        for dz, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            valid = (self.z + dz >= 0) & (self.z + dz < nzb) & (self.y + dy >= 0) & (self.y + dy < nyb)
            target = self.row_start + (dz * nyb + dy) * nxb  # the neighbouring row's first flat index
            # Runs of that row that overlap [x0, x1): end > row + x0 and start < row + x1.
            lo = np.searchsorted(end, target + self.x0, "right")
            hi = np.searchsorted(start, target + self.x1, "left")
            n = np.where(valid, np.maximum(hi - lo, 0), 0)
            alone = n == 0
            mark(index[alone], self.x0[alone], self.x1[alone])
            some = np.flatnonzero(~alone)
            first, last = lo[some], hi[some] - 1
            # before the first covering run, after the last one
            mark(some, self.x0[some], np.minimum(self.x1[some], self.x0[first]))
            mark(some, np.maximum(self.x0[some], self.x1[last]), self.x1[some])
            gaps = n[some] - 1  # between consecutive covering runs
            k = np.repeat(first, gaps) + (np.arange(int(gaps.sum())) - np.repeat(np.cumsum(gaps) - gaps, gaps))
            mark(np.repeat(some, gaps), self.x1[k], self.x0[k + 1])
        self._surface = (self.voxels[0][on_surface], self.voxels[1][on_surface])
        return self._surface


def _bone_keep(found: _Components, voxel_mm3, min_volume_mm3) -> np.ndarray:
    """Per bone component id: kept (the largest one, and every one of at least ``min_volume_mm3``)."""
    keep = np.ones(found.count + 1, dtype=bool)
    if found.count > 1:
        keep = found.sizes * voxel_mm3 >= min_volume_mm3
        keep[int(np.argmax(found.sizes[1:]) + 1)] = True
    keep[0] = False
    return keep


def _nerve_keep(found: _Components, voxel_mm3, spacing, max_distance_mm, min_volume_mm3, tube_volume_mm3,
                tube_elongation, detached: "_DetachedRootTest") -> np.ndarray:
    """Per nerve component id: kept or not, by the module's rules."""
    count, sizes = found.count, found.sizes
    keep = np.ones(count + 1, dtype=bool)
    keep[0] = False
    if count <= 1:
        return keep
    main = int(np.argmax(sizes[1:]) + 1)
    pieces = _NervePieces(found, main, spacing, max_distance_mm)
    qualified = sizes * voxel_mm3 >= min_volume_mm3
    # Root-shaped pieces qualify too: U-Net hot spots are compact blobs (elongation 1.1-1.7 in validation).
    qualified |= _tubular(pieces, sizes * voxel_mm3, min_volume_mm3=tube_volume_mm3, min_elongation=tube_elongation)
    qualified[0] = qualified[main] = False
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
        if detached.cut_by_edge(found.box_start[members - 1] + found.offset,
                                found.box_stop[members - 1] + found.offset,
                                lambda i, members=members: pieces.indices(members[i]) + found.offset):
            keep[members] = True
    # Kept pieces grow outwards: a piece within ``max_distance_mm`` of a kept one is kept, then pieces
    # near it, and so on -- a root predicted as a dotted line of fragments stays whole, while islands
    # far from all of them go. A chain is kept or not as a whole, so what is left to grow from is the
    # main component: the chains that come within ``max_distance_mm`` of it are kept.
    keep[np.isin(chain, chain[pieces.near_main()])] = True
    keep[0] = False
    return keep


class _NervePieces:
    """The nerve pieces other than the main one, their voxels (mm) and their "within d" graph.

    Linear in the number of pieces: candidate pairs come from a grid of cells about ``d`` wide over
    the pieces' bounding boxes (two pieces closer than ``d`` have boxes in the same or neighbouring
    cells), are filtered by the distance between their boxes, and only then tested exactly with a
    KD-tree query bounded by ``d``; a pair already joined through other pieces is not tested.
    """

    def __init__(self, found: _Components, main: int, spacing_mm: np.ndarray, max_distance_mm: float) -> None:
        self.found, self.main, self.spacing, self.d = found, main, spacing_mm, float(max_distance_mm)
        self.count = found.count
        self.box_start, self.box_stop = found.box_start, found.box_stop
        # Voxels of every piece but the main one, grouped by piece id (raster order within a piece).
        flat, owner = found.voxels
        other = owner != main
        flat, owner = flat[other], owner[other]
        order = np.argsort(owner, kind="stable")
        self.owner = owner[order]
        self.index = found.indices(flat[order])
        self.points = self.index * spacing_mm
        self.first = np.searchsorted(self.owner, np.arange(self.count + 2))
        # Their surface voxels, likewise: two pieces' closest voxels lie on their surfaces.
        flat, owner = found.surface()
        other = owner != main
        flat, owner = flat[other], owner[other]
        order = np.argsort(owner, kind="stable")
        self.surface_owner = owner[order]
        self.surface_points = found.indices(flat[order]) * spacing_mm
        self.surface_first = np.searchsorted(self.surface_owner, np.arange(self.count + 2))
        self._trees: dict[int, cKDTree] = {}

    def voxels(self, piece: int) -> np.ndarray:
        """Piece ``piece``'s voxel centres, mm, in the class's box."""
        return self.points[self.first[piece]:self.first[piece + 1]]

    def indices(self, piece: int) -> np.ndarray:
        """Piece ``piece``'s voxel indices (z, y, x) in the class's box."""
        return self.index[self.first[piece]:self.first[piece + 1]]

    def surface(self, piece: int) -> np.ndarray:
        """Piece ``piece``'s surface voxel centres, mm, in the class's box."""
        return self.surface_points[self.surface_first[piece]:self.surface_first[piece + 1]]

    def _tree(self, piece: int) -> cKDTree:
        tree = self._trees.get(piece)
        if tree is None:
            tree = self._trees[piece] = cKDTree(self.surface(piece))
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
        if self.surface_first[a + 1] - self.surface_first[a] > self.surface_first[b + 1] - self.surface_first[b]:
            a, b = b, a  # query the smaller piece's surface against the larger one's tree
        distance = self._tree(b).query(self.surface(a), distance_upper_bound=self.d * 1.001)[0]
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

        pairs = self._candidate_pairs()
        close = self._close_small(pairs)  # True / False for pairs of small pieces, None (-1) for the others
        for (a, b), known in zip(pairs.tolist(), close.tolist()):
            ra, rb = root(a), root(b)
            if ra != rb and (known == 1 or (known == -1 and self._close(a, b))):
                parent[max(ra, rb)] = min(ra, rb)
        return np.array([root(i) for i in range(self.count + 1)])

    def _close_small(self, pairs: np.ndarray, most: int = 1024) -> np.ndarray:
        """Per pair: 1 or 0 (closest voxels within ``d`` or not) where both surfaces have at most
        ``most`` voxel pairs, all compared at once; -1 for the others (a KD-tree per pair is cheaper)."""
        result = np.full(len(pairs), -1, dtype=np.int8)
        if len(pairs) == 0:
            return result
        first, n = self.surface_first[pairs], np.diff(self.surface_first)[pairs]
        small = np.flatnonzero(n[:, 0] * n[:, 1] <= most)
        if len(small) == 0:
            return result
        fa, fb, na, nb = first[small, 0], first[small, 1], n[small, 0], n[small, 1]
        combos = na * nb
        local = np.arange(int(combos.sum())) - np.repeat(np.cumsum(combos) - combos, combos)
        step = np.repeat(nb, combos)
        a = np.repeat(fa, combos) + local // step
        b = np.repeat(fb, combos) + local % step
        distance = np.sqrt(((self.surface_points[a] - self.surface_points[b]) ** 2).sum(axis=1))
        result[small] = np.minimum.reduceat(distance, np.cumsum(combos) - combos) <= self.d
        return result

    def near_main(self) -> np.ndarray:
        """Ids of the pieces with a voxel within ``d`` of the main component (bounded KD-tree query)."""
        ids = np.array([i for i in range(1, self.count + 1) if i != self.main], dtype=np.int64)
        if len(ids) == 0:
            return ids
        ids = ids[self._box_gap_mm(ids, np.full_like(ids, self.main)) <= self.d * 1.001]
        if len(ids) == 0:
            return ids
        flat, owner = self.found.surface()  # the main component's closest voxel to a point outside it is there
        targets = self.found.indices(flat[owner == self.main]) * self.spacing
        near = np.isin(self.surface_owner, ids)
        distance = cKDTree(targets).query(self.surface_points[near], distance_upper_bound=self.d * 1.001, workers=-1)[0]
        return np.unique(self.surface_owner[near][distance <= self.d])


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
    voxel lies within ``max_bone_mm`` of one of them. The bone is the kept bone's surface voxels
    (the closest bone voxel of a nerve voxel is one of them), in one KD-tree built when first
    needed, asked with queries bounded by that distance.
    """

    def __init__(self, shape, bone_surface_zyx: np.ndarray, bone_boxes: tuple[np.ndarray, np.ndarray], spacing,
                 edge_voxels, max_bone_mm) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.bone, (self.bone_start, self.bone_stop) = bone_surface_zyx, bone_boxes
        self.spacing = np.asarray(spacing, dtype=float)
        self.edge_voxels, self.max_bone_mm = int(edge_voxels), float(max_bone_mm)
        self._tree: cKDTree | None = None

    def cut_by_edge(self, box_start: np.ndarray, box_stop: np.ndarray, indices_of) -> bool:
        """True when some of a chain's pieces reaches the edge and some lies near bone.

        ``box_start``, ``box_stop``: (pieces, 3) the pieces' boxes in the label map (stop exclusive);
        ``indices_of(i)``: piece ``i``'s voxel indices in the label map, asked for only when the
        edge test passes and the piece's box lies within ``max_bone_mm`` of a kept bone box.
        """
        shape = np.array(self.shape)
        if not ((box_start <= self.edge_voxels) | (box_stop >= shape - self.edge_voxels)).any():
            return False
        if len(self.bone) == 0:
            return False
        # Pieces whose box is farther than the distance from every kept bone component's box: no bone near.
        gap = np.maximum(0, np.maximum(box_start[:, None] - (self.bone_stop[None] - 1),
                                       self.bone_start[None] - (box_stop[:, None] - 1)))
        near = np.flatnonzero((np.sqrt(((gap * self.spacing) ** 2).sum(axis=2)) <= self.max_bone_mm * 1.001).any(axis=1))
        if len(near) == 0:
            return False
        if self._tree is None:
            self._tree = cKDTree(self.bone * self.spacing)
        points = np.concatenate([indices_of(int(i)) for i in near]) * self.spacing
        distance = self._tree.query(points, distance_upper_bound=self.max_bone_mm * 1.001)[0]
        return bool((distance <= self.max_bone_mm).any())


def _tubular(pieces: _NervePieces, volumes_mm3, *, min_volume_mm3, min_elongation) -> np.ndarray:
    """Which components (by id) other than the main one are root-like tubes: at least ``min_volume_mm3`` and elongated.

    Elongation = sqrt(largest / second eigenvalue) of the voxel positions' covariance (mm): for a
    cylinder of length L and radius r it is L / (r sqrt 3), so 3 means about 13 mm of a 5 mm root;
    a compact blob is near 1.
    """
    tubular = np.zeros(len(volumes_mm3), dtype=bool)
    candidates = [int(i) for i in np.flatnonzero(volumes_mm3 >= min_volume_mm3) if i > 0 and i != pieces.main]
    for index in candidates:
        points = pieces.voxels(index)
        if len(points) < 4:
            continue
        eigenvalues = np.linalg.eigvalsh(np.cov(points.T))
        tubular[index] = eigenvalues[-1] >= min_elongation**2 * max(eigenvalues[-2], 1e-9)
    return tubular


def _remove(labels, found: _Components, keep, value, voxel_mm3, spacing, reason, drop=None) -> list[RemovedIsland]:
    """Zero the components whose ``drop`` entry (indexed by component id; default: ``~keep``) is True;
    report them with their distance to the components ``keep`` keeps.

    Vectorised over islands (a poor model can leave thousands): lookup tables instead of per-island
    masks; distances by :func:`_distances_to_kept`. Centroids are in the label map's voxel indices.
    """
    drop = ~keep if drop is None else np.asarray(drop, bool)
    drop_ids = np.flatnonzero(drop[1:]) + 1
    if len(drop_ids) == 0:
        return []
    flat, owner = found.voxels
    dropped = drop[owner]
    flat, owner = flat[dropped], owner[dropped]
    coords = np.unravel_index(flat, found.shape)
    labels[found.box][coords] = 0  # a view of the label map
    points = np.stack(coords, axis=1)
    nearest = _distances_to_kept(found, keep, spacing)
    counts = np.bincount(owner, minlength=len(keep))
    sums = np.stack([np.bincount(owner, weights=points[:, a], minlength=len(keep)) for a in range(3)], axis=1)
    centroids = (sums[drop_ids] / counts[drop_ids, None] + found.offset.astype(float)).tolist()
    volumes = (counts[drop_ids] * voxel_mm3).tolist()
    return [RemovedIsland(value, int(n), v, tuple(c), d, reason)
            for n, v, c, d in zip(counts[drop_ids].tolist(), volumes, centroids, nearest[drop_ids].tolist())]


def _distances_to_kept(found: _Components, keep, spacing) -> np.ndarray:
    """Distance (mm) from each removed island to the nearest kept component, indexed by component id.

    Exact (the closest pair of voxel centres). A closest pair joins a surface voxel of the island to
    a surface voxel of a kept component (:meth:`_Components.surface`), so only those are used, in
    one KD-tree per kept component (one tree over scattered components is slow to ask from afar).
    Each island asks the kept components in order of the distance between their bounding boxes (a
    lower bound) and stops when the next box is farther than the closest voxel found.
    """
    nearest = np.full(len(keep), np.inf)
    kept_ids = np.flatnonzero(keep[1:]) + 1
    if len(kept_ids) == 0:
        return nearest
    flat, owner = found.surface()
    order = np.argsort(owner, kind="stable")  # grouped by component, raster order within one
    flat, owner = flat[order], owner[order]
    group = np.searchsorted(owner, np.arange(len(keep) + 1))  # component k's surface: group[k]:group[k + 1]
    asking = ~keep[owner]
    points, owner = found.indices(flat[asking]) * spacing, owner[asking]
    island_ids = np.unique(owner)
    if len(island_ids) == 0:
        return nearest
    first = np.searchsorted(owner, island_ids)
    last = np.append(first[1:], len(owner))
    start, stop = found.box_start, found.box_stop

    def box_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # (len(a), len(b)) lower bounds, mm
        gap = np.maximum(0, np.maximum(start[a - 1][:, None] - (stop[b - 1][None] - 1),
                                       start[b - 1][None] - (stop[a - 1][:, None] - 1)))
        return np.sqrt(((gap * spacing) ** 2).sum(axis=2))

    trees: dict[int, cKDTree] = {}

    def tree(k: int) -> cKDTree:
        if k not in trees:
            trees[k] = cKDTree(found.indices(flat[group[k]:group[k + 1]]) * spacing)
        return trees[k]

    best = np.full(len(island_ids), np.inf)
    for chunk in range(0, len(island_ids), 2048):  # bounds the (islands x kept) matrix
        rows = np.arange(chunk, min(chunk + 2048, len(island_ids)))
        bound = box_distance(island_ids[rows], kept_ids)
        ranked = np.argsort(bound, axis=1, kind="stable")
        for step in range(len(kept_ids)):
            column = ranked[rows - chunk, step]
            lower = bound[rows - chunk, column]
            going = lower <= best[rows] * (1 + 1e-9) + 1e-9
            rows, column = rows[going], column[going]
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
