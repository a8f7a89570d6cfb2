"""Smooth per-case deformation of a vertebra's arch (phantom v2 on real bone shapes).

Phantom v2 has few source bones (the Visible Human Male's L1-L5 and the mean L2-L5 of 87
patients); scaled per axis, every case's spinous and transverse processes were the same straight,
symmetric shapes, which is what blinded readers named first when they told phantom tiles from
real ones (docs/phantom.md, "Blinded reading"). An :class:`ArchWarp` bends them per case: the bone
grid is read at ``index + W(index)``, where ``W`` is a smooth random displacement (Gaussian-
correlated, about 9 mm) weighted to 0 over the vertebral body, the pedicles and the superior
articular processes, so the landmarks the triangles' truth is measured from (endplates, pedicles,
SAP faces, the body's lateral border) do not move, and 1 over the laminae, the spinous process and
the transverse processes.

Since phantom version 10 the front of the vertebral body moves too (:func:`body_front_weight`):
horizontally only, at mid-height, in front of the body's centre, so the body's outline in axial
slices is no longer the source shape scaled (readers: "symmetric template vertebrae"), while the
endplates, the posterior wall and every triangle landmark stay.

The warped shape is the sign of the warped distance everywhere (labels, level map and the truth's
reference distances read the same function), so labels stay exact. Away from the surface the
distance is left unwarped (the sign cannot change there); near it, the warp changes distances by
at most its gradient (below 0.25), which only the cortex and partial-volume rendering read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from spinect.phantom.primitives import smoothstep

__all__ = ["ArchWarp", "sample_arch_warps", "make_arch_warp", "arch_weight", "body_front_weight", "body_half_height", "LATTICE_MM",
           "CORRELATION_MM", "BODY_AMPLITUDE_SHARE"]

#: Node spacing (source mm) of the displacement lattice; W is trilinear between nodes.
LATTICE_MM = 3.0
#: Gaussian correlation length (sigma, source mm) of the displacement.
CORRELATION_MM = 9.0
#: Amplitude range (SD of each displacement component, mm) drawn per vertebra.
AMPLITUDE_MM = (0.8, 2.0)


#: The body's front moves by this share of the arch's amplitude (version 10).
BODY_AMPLITUDE_SHARE = 0.8

#: Version 12: a fine component of the same warp, on a lattice of this spacing (source mm) ...
FINE_LATTICE_MM = 1.5
#: ... correlated over this sigma (source mm) ...
FINE_CORRELATION_MM = 2.5
#: ... with an SD per component drawn in this range (mm) from the lattice's own stream: real bone
#: surfaces are uneven on the millimetre scale (ligament and muscle attachments, vascular foramina,
#: remodelling), where the source meshes (one of them a mean of 87 shapes) are smooth, and blinded
#: readers named "smooth masks" and "idealised" outlines first.
FINE_AMPLITUDE_MM = (0.2, 0.45)
#: The fine components are clipped at this many SDs.
FINE_CLIP_SD = 2.5


def arch_weight(local_mm: np.ndarray, measured: dict) -> np.ndarray:
    """Deformation weight (0-1) at points given in a bone's measured local frame.

    Args:
        local_mm: (..., 3) (lateral, posterior, cranial) mm in the source bone's measured frame.
        measured: the bone's ``measured`` dict (``a``, ``b``, ``sides`` with ``pedicle.mid``,
            ``sap_face``, ``sap_centroid``).

    Returns:
        (...) weights: 0 over the body (posterior < b + 14 mm and lateral < max(a + 3, pedicle
        + 8) mm), within 10 mm of a pedicle's centre and within 8 mm of an SAP's face or
        centroid; rising over 10 mm to 1 behind the pedicles and beyond them laterally.
    """
    lat, post = np.abs(local_mm[..., 0]), local_mm[..., 1]
    a, b = float(measured["a"]), float(measured["b"])
    sides = measured["sides"].values()
    ped_lat = max(abs(float(s["pedicle"]["mid"][0])) for s in sides)
    w = np.maximum(smoothstep((post - (b + 14.0)) / 10.0),
                   smoothstep((lat - max(a + 3.0, ped_lat + 8.0)) / 10.0))
    for s in sides:
        for point, r0, r1 in ((s["pedicle"]["mid"], 10.0, 16.0), (s["sap_face"], 8.0, 14.0), (s["sap_centroid"], 8.0, 14.0)):
            dist = np.linalg.norm(local_mm - np.asarray(point, float), axis=-1)
            w = w * smoothstep((dist - r0) / (r1 - r0))
    return w


def body_half_height(post_mm, measured: dict):
    """Half the body's height (mm) at the posterior coordinate ``post_mm`` of its measured frame:
    linear from ``h_ant / 2`` at its front (-b) to ``h_post / 2`` at its back (+b)."""
    b = float(measured["b"])
    t = np.clip((np.asarray(post_mm, float) + b) / (2.0 * b), 0.0, 1.0)
    return 0.5 * ((1.0 - t) * float(measured["h_ant"]) + t * float(measured["h_post"]))


def body_front_weight(local_mm: np.ndarray, measured: dict) -> np.ndarray:
    """Weight (0-1) of the horizontal warp of the vertebral body's front (version 10), at points in
    a bone's measured local frame (as :func:`arch_weight`): 0 behind 7.5 mm in front of the body's
    centre and within 8 mm of the endplates' heights (:func:`body_half_height`), rising over 8 mm
    forwards and 5 mm towards mid-height to 1 (the anterior and anterolateral walls' waist). The
    lattice is trilinear between nodes 3 mm apart along the source grid's axes, which the frame may
    turn (a node is at most 5.2 mm from a point it weighs), so the displacement is exactly 0 behind
    2 mm in front of the centre (the posterior half, the lateral borders at the centre, the
    pedicles, the foramen) and within 2.5 mm of the endplates' heights (endplates, their concavity
    and rims, where osteophytes sit)."""
    post, cran = local_mm[..., 1], np.abs(local_mm[..., 2])
    return smoothstep((-post - 7.5) / 8.0) * smoothstep((body_half_height(post, measured) - 8.0 - cran) / 5.0)


@dataclass
class ArchWarp:
    """A displacement field in a bone grid's index space.

    Attributes:
        lattice: (3, Nz, Ny, Nx) float32 displacement (grid index units, components z, y, x) at
            lattice nodes; node k sits at grid index ``k * step``.
        step: lattice node spacing in grid index units.
        bound_mm: (Nz, Ny, Nx) float32: the largest displacement (source mm) of any point whose
            nearest lattice node this is (the largest node norm within one node).
        max_mm: a bound on the displacement anywhere (source mm; the two lattices' largest norms
            added).
        active_index: (2, 3) lo and hi grid indices (z, y, x) outside which the displacement is
            exactly 0 (the box of the nodes with a non-zero bound, one node wider).
        fine_lattice: (3, Nz', Ny', Nx') float32 fine component (version 12) at nodes ``fine_step``
            apart, added to the coarse one; None: none.
        fine_step: its node spacing in grid index units.
    """

    lattice: np.ndarray
    step: float
    bound_mm: np.ndarray
    max_mm: float
    active_index: np.ndarray
    fine_lattice: np.ndarray | None = None
    fine_step: float = 0.0

    def displacement(self, coords: np.ndarray) -> np.ndarray:
        """W (grid index units) at grid indices ``coords`` (3, ...), trilinear between nodes (the
        coarse lattice plus, since version 12, the fine one)."""
        if self.fine_lattice is None:
            lattice, step = self.lattice, self.step
        else:
            lattice, step = self._combined(), self.fine_step
        c = np.asarray(coords, np.float32) / np.float32(step)
        return np.stack([ndimage.map_coordinates(lattice[k], c, order=1, mode="nearest", output=np.float32)
                         for k in range(3)])

    def _combined(self) -> np.ndarray:
        """The fine lattice plus the coarse displacement at its nodes (cached). The fine nodes split
        each coarse cell in two along every axis, and a trilinear function is trilinear on each
        sub-cell, so one trilinear read of this lattice is the sum of the two (to float32 rounding,
        within the grid) at half the cost."""
        cached = self.__dict__.get("_combined_lattice")
        if cached is None:
            ratio = float(self.step / self.fine_step)
            nodes = np.indices(self.fine_lattice.shape[1:], dtype=np.float32) / np.float32(ratio)
            cached = self.fine_lattice.copy()
            for k in range(3):
                cached[k] += ndimage.map_coordinates(self.lattice[k], nodes, order=1, mode="nearest", output=np.float32)
            self.__dict__["_combined_lattice"] = cached
        return cached

    def bound_at(self, coords: np.ndarray) -> np.ndarray:
        """The displacement bound (source mm) at grid indices ``coords`` (3, N), by nearest node."""
        c = np.asarray(coords, np.float32) * np.float32(1.0 / self.step)
        c += np.float32(0.5)
        k = np.floor(c, out=c).astype(np.intp)  # the nearest node; out-of-grid points take the edge's
        return self.bound_mm.ravel()[np.ravel_multi_index(tuple(k), self.bound_mm.shape, mode="clip")]


def _weighted_lattice(grid, rng: np.random.Generator, step_mm: float, correlation_mm: float,
                      amplitude_mm: float) -> np.ndarray:
    """(3, Nz, Ny, Nx) float32 displacement (grid index units) at lattice nodes ``step_mm`` apart:
    Gaussian-correlated unit noise times ``amplitude_mm``, weighted by :func:`arch_weight`, plus its
    horizontal part weighted by :func:`body_front_weight` times :data:`BODY_AMPLITUDE_SHARE`."""
    extent = (np.asarray(grid.values.shape) - 1) * grid.spacing_mm  # (z, y, x) source mm
    nodes = np.ceil(extent / step_mm).astype(int) + 2
    noise = rng.standard_normal((3, *nodes)).astype(np.float32)
    for k in range(3):
        ndimage.gaussian_filter(noise[k], correlation_mm / step_mm, output=noise[k], mode="reflect", truncate=3.0)
        noise[k] /= max(float(noise[k].std()), 1e-6)
    # node positions in source LPS (x, y, z) -> measured local frame (lateral, posterior, cranial)
    m = grid.measured
    iz, iy, ix = (np.arange(n) * step_mm for n in nodes)
    zz, yy, xx = np.meshgrid(iz, iy, ix, indexing="ij")
    src = np.stack([xx, yy, zz], axis=-1) + np.asarray(grid.origin_xyz_mm, float)
    local = (src - np.asarray(m["origin_xyz_mm"], float)) @ np.asarray(m["axes"], float).T
    weight = arch_weight(local, m).astype(np.float32)
    lattice = noise * weight[None] * np.float32(amplitude_mm / grid.spacing_mm)
    # version 10: the body's front at mid-height moves too, horizontally only (no cranial
    # component: the endplates' heights, and with them the endplate frames, stay)
    front = body_front_weight(local, m).astype(np.float32)
    up = np.asarray(m["axes"], float)[2][::-1].astype(np.float32)  # the cranial axis in index order (z, y, x)
    horizontal = noise - np.tensordot(up, noise, axes=(0, 0))[None] * up[:, None, None, None]
    lattice += horizontal * front[None] * np.float32(BODY_AMPLITUDE_SHARE * amplitude_mm / grid.spacing_mm)
    return lattice


def make_arch_warp(grid, amplitude_mm: float, seed: int, *, fine: bool = True) -> ArchWarp:
    """The warp of one placed bone grid (``grid``: a :class:`meshes.BoneGrid` with ``measured``).

    Args:
        amplitude_mm: SD (source mm) of each displacement component before weighting.
        seed: seed of its random lattice (recorded in the case's parameters).
        fine: add the fine component (version 12; :data:`FINE_LATTICE_MM`): its amplitude and noise
            are drawn from the same stream after the coarse lattice's, which is as before.
    """
    rng = np.random.default_rng(int(seed))
    lattice = _weighted_lattice(grid, rng, LATTICE_MM, CORRELATION_MM, amplitude_mm)
    norm_mm = np.sqrt((lattice ** 2).sum(axis=0)) * np.float32(grid.spacing_mm)
    bound = ndimage.maximum_filter(norm_mm, size=3, mode="nearest")  # a point's cell corners lie within one node
    step = LATTICE_MM / grid.spacing_mm
    max_mm = float(norm_mm.max())
    fine_lattice = None
    if fine:
        fine_amplitude = float(rng.uniform(*FINE_AMPLITUDE_MM))
        fine_lattice = _weighted_lattice(grid, rng, FINE_LATTICE_MM, FINE_CORRELATION_MM, fine_amplitude)
        # each component within 2.5 SDs: the field's rare extremes over a short correlation length
        # would fold the surface (a gradient near 1)
        limit = np.float32(FINE_CLIP_SD * fine_amplitude / grid.spacing_mm)
        np.clip(fine_lattice, -limit, limit, out=fine_lattice)
        fine_mm = np.sqrt((fine_lattice ** 2).sum(axis=0)) * np.float32(grid.spacing_mm)
        # a point whose nearest coarse node is k lies within half a coarse step (one fine step) of
        # fine node 2k, and its fine cell's corners within one more: the fine norm's maximum over
        # +-2 fine nodes, read at the coarse nodes, bounds its fine displacement
        ratio = int(round(LATTICE_MM / FINE_LATTICE_MM))
        fine_bound = ndimage.maximum_filter(fine_mm, size=2 * ratio + 1, mode="nearest")[::ratio, ::ratio, ::ratio]
        pad = [(0, max(b - f, 0)) for b, f in zip(bound.shape, fine_bound.shape)]
        fine_bound = np.pad(fine_bound, pad, mode="edge")[: bound.shape[0], : bound.shape[1], : bound.shape[2]]
        bound = bound + fine_bound
        max_mm += float(fine_mm.max())
    nodes_on = np.argwhere(bound > 0)
    if len(nodes_on):
        active = np.stack([(nodes_on.min(axis=0) - 1) * step, (nodes_on.max(axis=0) + 1) * step]).astype(float)
    else:
        active = np.zeros((2, 3))
    return ArchWarp(lattice, step, bound.astype(np.float32), max_mm, active, fine_lattice,
                    FINE_LATTICE_MM / grid.spacing_mm if fine else 0.0)


def sample_arch_warps(rng: np.random.Generator, names) -> dict[str, dict[str, Any]]:
    """Per vertebra in ``names``: ``amplitude_mm`` and the lattice ``seed`` (recorded in the
    case's parameters, ``extras['arch_warp']``)."""
    return {name: {"amplitude_mm": round(float(rng.uniform(*AMPLITUDE_MM)), 3), "seed": int(rng.integers(0, 2**31))}
            for name in names}
