"""Parts: named structures made of primitives (smooth union, minus subtractions, carved).

A part is what gets one structure code: a vertebra (body, pedicles, laminae, processes joined
with small fillets), a disc, a nerve root segment, a muscle. ``cutters`` carve a part away
from another part with a margin (bone from nerve roots: a fat gap is guaranteed by construction;
ilium from sacrum: the sacroiliac joint space).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spinect.phantom.primitives import BIG_MM, GridBox, Primitive, smooth_min

__all__ = ["Part", "ClippedPart"]

#: Extra padding of primitive boxes so partial-volume coverage sees the full boundary band (mm).
_PAD_MM = 2.5


@dataclass
class Part:
    """One structure.

    Attributes:
        name: structure name (a key of :data:`STRUCTURE_CODES`).
        code: structure code painted where the signed distance is negative.
        primitives: shapes united (smooth union with ``smooth_mm``).
        subtract: shapes removed.
        cutters: (part, margin_mm): this part is kept ``margin_mm`` away from ``part``.
        smooth_mm: fillet size of the union.
        cortex_mm: cortical shell thickness (bones only).
        partial_volume: blend HU by boundary coverage (else only the sign is used).
    """

    name: str
    code: int
    primitives: list[Primitive]
    subtract: list[Primitive] = field(default_factory=list)
    cutters: list[tuple["Part", float]] = field(default_factory=list)
    smooth_mm: float = 0.0
    cortex_mm: float = 0.0
    partial_volume: bool = True

    def _prim_bounds(self, prims: list[Primitive], pad: float) -> tuple[np.ndarray, np.ndarray]:
        key = (id(prims), len(prims), pad)
        cache = self.__dict__.setdefault("_bounds_cache", {})
        if key not in cache:
            b = [p.body_bounds(pad) for p in prims]
            cache[key] = (np.array([x[0] for x in b]).reshape(-1, 3), np.array([x[1] for x in b]).reshape(-1, 3))
        return cache[key]

    def body_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) body-coordinate box containing the part plus its boundary band."""
        lo, hi = self._prim_bounds(self.primitives, _PAD_MM + 2 * self.smooth_mm)
        return lo.min(axis=0), hi.max(axis=0)

    def cache_on(self, root: GridBox) -> None:
        """Evaluate once on ``root`` (within the part's bounds) and serve later boxes from it
        (a cutter used by many parts); :meth:`clear_cache` frees it."""
        sub = root.sub(*self.body_bounds())
        self.__dict__["_grid_cache"] = None
        if sub is not None:
            self.__dict__["_grid_cache"] = (sub, self.sdf_box(sub))

    def clear_cache(self) -> None:
        self.__dict__.pop("_grid_cache", None)

    def paint_inside(self, root: GridBox, structures: np.ndarray) -> None:
        """Write this part's code where a primitive contains the voxel centre (sign only; no
        smoothing, subtraction or cutters: for soft tissues)."""
        for prim, sub in zip(self.primitives, root.sub_many(*self._prim_bounds(self.primitives, 0.5))):
            if sub is not None:
                np.putmask(structures[sub.slices], prim.local_inside(*sub.local(prim)), self.code)

    def sdf_box(self, box: GridBox) -> np.ndarray:
        """Signed distance (mm, float32) on the voxel centres of ``box`` (shape ``box.shape``)."""
        cached = self.__dict__.get("_grid_cache")
        if cached is not None:
            cbox, values = cached
            if np.all(box.lo >= cbox.lo) and np.all(box.hi <= cbox.hi):
                return values[box.slices_in(cbox)].copy()
        d = np.full(box.shape, BIG_MM, np.float32)
        for prim, sub in zip(self.primitives, box.sub_many(*self._prim_bounds(self.primitives, _PAD_MM + 2 * self.smooth_mm))):
            if sub is not None:
                view = d[sub.slices_in(box)]
                view[...] = smooth_min(view, prim.local_sdf(*sub.local(prim)), self.smooth_mm)
        if self.subtract:
            for prim, sub in zip(self.subtract, box.sub_many(*self._prim_bounds(self.subtract, _PAD_MM))):
                if sub is not None:
                    view = d[sub.slices_in(box)]
                    np.maximum(view, -prim.local_sdf(*sub.local(prim)), out=view)
        return self._carve(d, box)

    def _carve(self, d: np.ndarray, box: GridBox) -> np.ndarray:
        """Keep the part ``margin`` mm away from each cutter: ``d`` (on ``box``) raised in place."""
        for cutter, margin in self.cutters:
            sub = box.sub(*cutter.body_bounds())
            if sub is not None:
                view = d[sub.slices_in(box)]
                np.maximum(view, margin - cutter.sdf_box(sub), out=view)
        return d

    def sdf_points(self, points: np.ndarray, *, cut: bool = True) -> np.ndarray:
        """Signed distance (mm, float64) at (N, 3) body-coordinate points (``cut=False``:
        before carving by the cutters)."""
        points = np.asarray(points, float)
        d = np.full(len(points), BIG_MM)
        if not len(points):
            return d
        for prim, idx in _hits(self.primitives, self._prim_bounds(self.primitives, _PAD_MM + 2 * self.smooth_mm), points):
            d[idx] = smooth_min(d[idx], prim.sdf_points(points[idx]), self.smooth_mm)
        if self.subtract:
            for prim, idx in _hits(self.subtract, self._prim_bounds(self.subtract, _PAD_MM), points):
                d[idx] = np.maximum(d[idx], -prim.sdf_points(points[idx]))
        for cutter, margin in self.cutters if cut else ():
            lo, hi = cutter.body_bounds()
            idx = np.flatnonzero(np.all((points >= lo) & (points <= hi), axis=1))
            if idx.size:
                d[idx] = np.maximum(d[idx], margin - cutter.sdf_points(points[idx]))
        return d


def _hits(prims: list[Primitive], bounds: tuple[np.ndarray, np.ndarray], points: np.ndarray):
    """(primitive, indices of points inside its box) for primitives whose box holds any point."""
    lo, hi = bounds
    # coarse test on the points' own bounding box first, then exact per primitive
    plo, phi = points.min(axis=0), points.max(axis=0)
    cand = np.flatnonzero(np.all((hi >= plo) & (lo <= phi), axis=1))
    for i in cand:
        inside = np.all((points >= lo[i]) & (points <= hi[i]), axis=1)
        idx = np.flatnonzero(inside)
        if idx.size:
            yield prims[i], idx


@dataclass
class ClippedPart(Part):
    """A sign-only part that replaces only some codes already painted (``allowed``): organs that
    stay inside the abdominal cavity whatever the body size and never cover vessels or muscle; the
    crura and the retroperitoneal fat that only the liver, fat or bowel may give way to."""

    allowed: tuple[int, ...] = ()

    def paint_inside(self, root: GridBox, structures: np.ndarray) -> None:
        for prim, sub in zip(self.primitives, root.sub_many(*self._prim_bounds(self.primitives, 0.5))):
            if sub is not None:
                view = structures[sub.slices]
                np.putmask(view, prim.local_inside(*sub.local(prim)) & np.isin(view, self.allowed), self.code)
