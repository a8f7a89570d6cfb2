"""Rasterise the anatomy on a voxel grid: structure codes at voxel centres, HU with partial volume.

The output grid is LPS with identity direction: array (z, y, x), x -> left, y -> posterior,
z -> superior. Anatomy lives in body coordinates; the pose maps body -> world
(``world = R @ body + t``). Each structure is evaluated only on its own bounding box.

Partial volume: the HU model is evaluated on a grid subdivided by odd factors (so the centre
sub-sample of each block is the output voxel centre, where labels are read), each structure is
blended in with its coverage ``clip(0.5 - sdf / h, 0, 1)`` (the exact area fraction for a locally
flat boundary crossing a sub-voxel of size h), and blocks are averaged. Thick slices get more
sub-slices (``z_factor``), like a CT slice-sensitivity profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from spinect.phantom.anatomy import Anatomy
from spinect.phantom.parts import Part
from spinect.phantom.primitives import GridBox

__all__ = ["Grid", "pose_matrix", "make_grid", "supersampling_factors", "rasterise", "TissueValues"]


@dataclass(frozen=True)
class Grid:
    """An output grid (identity direction, LPS).

    Attributes:
        shape_zyx: voxels (Z, Y, X).
        spacing_zyx_mm: voxel size (mm).
        origin_xyz_mm: world LPS position of voxel (0, 0, 0)'s centre, SimpleITK order.
        rotation: (3, 3) pose rotation body -> world; translation: (3,) mm.
    """

    shape_zyx: tuple[int, int, int]
    spacing_zyx_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]
    rotation: np.ndarray
    translation: np.ndarray

    def body_box(self, factors: tuple[int, int, int] = (1, 1, 1)) -> GridBox:
        """GridBox of the whole grid subdivided by ``factors`` (z, y, x), in body coordinates."""
        f = np.asarray(factors, float)
        spacing = np.asarray(self.spacing_zyx_mm, float) / f
        first = np.asarray(self.origin_xyz_mm, float) - (spacing * (f - 1) / 2.0)[::-1]
        origin = self.rotation.T @ (first - self.translation)
        axes = np.eye(3)[::-1]  # index z -> world z, y -> y, x -> x
        step = (axes * spacing[:, None]) @ self.rotation  # rows: R^T (spacing * e)
        shape = np.asarray(self.shape_zyx) * np.asarray(factors)
        return GridBox(origin, step, (0, 0, 0), shape)

    def world_to_index_zyx(self, points_xyz: np.ndarray) -> np.ndarray:
        """(N, 3) world LPS points -> (N, 3) continuous voxel indices (z, y, x)."""
        rel = (np.asarray(points_xyz, float) - np.asarray(self.origin_xyz_mm)) / np.asarray(self.spacing_zyx_mm)[::-1]
        return rel[:, ::-1]

    def index_to_world(self, index_zyx: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices (z, y, x) -> (N, 3) world LPS points (mm)."""
        idx = np.asarray(index_zyx, float)[:, ::-1]
        return np.asarray(self.origin_xyz_mm) + idx * np.asarray(self.spacing_zyx_mm)[::-1]

    def world_to_body(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world LPS points -> body coordinates (mm)."""
        return (np.asarray(points, float) - self.translation) @ self.rotation

    def body_to_world(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) or (3,) body points -> world LPS (mm)."""
        return np.asarray(points, float) @ self.rotation.T + self.translation


def pose_matrix(rotation_deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation about x, then y, then z (degrees, LPS axes)."""
    ax, ay, az = np.radians(rotation_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_grid(anatomy: Anatomy, shape_zyx, spacing_zyx_mm) -> Grid:
    """Grid whose centre is the anatomy's anchor (L4-S1 region) plus the case's FOV shift."""
    p = anatomy.params
    rotation = pose_matrix(p.rotation_deg)
    translation = np.asarray(p.translation_mm, float)
    centre_world = rotation @ anatomy.anchor() + translation + np.asarray(p.fov_shift_mm)
    extent = (np.asarray(shape_zyx, float) - 1.0) * np.asarray(spacing_zyx_mm, float)
    origin = centre_world - extent[::-1] / 2.0
    return Grid(tuple(int(v) for v in shape_zyx), tuple(float(v) for v in spacing_zyx_mm),
                tuple(float(v) for v in origin), rotation, translation)


def supersampling_factors(spacing_zyx_mm, supersample: int = 1) -> tuple[int, int, int]:
    """Odd sub-sampling factors: ``supersample`` in-plane; along z also enough sub-slices to
    reach the in-plane spacing (a 3 mm slice at 1 mm pixels gets 3)."""
    if supersample < 1 or supersample % 2 == 0:
        raise ValueError(f"supersample must be an odd integer >= 1, got {supersample}")
    sz, sy, sx = spacing_zyx_mm
    ratio = sz / min(sy, sx)
    fz = max(1, int(round(ratio)))
    fz += 1 - fz % 2
    return (fz * supersample, supersample, supersample)


@dataclass(frozen=True)
class TissueValues:
    """Intensity of each structure code plus the bone layers.

    Attributes:
        table: (256,) float32 value per structure code (bones: their cortical value).
        cancellous: value of cancellous bone per bone code.
        cancellous_texture: relative amplitude of trabecular texture (0 = none).
    """

    table: np.ndarray
    cancellous: dict[int, float]
    cancellous_texture: float = 0.08


def _paint_background(parts: list[Part], root: GridBox, structures: np.ndarray) -> None:
    for part in parts:
        part.paint_inside(root, structures)


def _blend(view: np.ndarray, d: np.ndarray, value, h: float) -> None:
    cov = np.clip(0.5 - d / h, 0.0, 1.0)
    view += cov * (value - view)


def _paint_foreground(parts: list[Part], root: GridBox, structures, hu, values: TissueValues, h: float,
                      rng: np.random.Generator, progress: Callable[[float], None] | None) -> None:
    for i, part in enumerate(parts):
        sub = root.sub(*part.body_bounds())
        if progress:
            progress((i + 1) / len(parts))
        if sub is None:
            continue
        d = part.sdf_box(sub)
        view = hu[sub.slices]
        _blend(view, d, values.table[part.code], h)
        if part.cortex_mm > 0:
            canc = np.float32(values.cancellous[part.code])
            if values.cancellous_texture > 0:
                tex = ndimage.gaussian_filter(rng.standard_normal(sub.shape, dtype=np.float32), 0.8)
                canc = canc * (1.0 + values.cancellous_texture * 2.5 * tex)
            d += part.cortex_mm
            _blend(view, d, canc, h)
            d -= part.cortex_mm
        np.putmask(structures[sub.slices], d < 0, part.code)


def rasterise(anatomy: Anatomy, grid: Grid, values: TissueValues, rng: np.random.Generator, *, supersample: int = 1,
              progress: Callable[[float], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Structure map (exact, at voxel centres) and partial-volume HU image on ``grid``.

    Returns:
        (structures (Z, Y, X) uint8, hu (Z, Y, X) float32) before scanner blur and noise.
    """
    factors = supersampling_factors(grid.spacing_zyx_mm, supersample)
    root = grid.body_box(factors)
    structures = np.zeros(root.shape, np.uint8)
    _paint_background(anatomy.background, root, structures)
    hu = values.table[structures]
    spacing = np.asarray(grid.spacing_zyx_mm) / np.asarray(factors)
    h = float(np.prod(spacing) ** (1.0 / 3.0))
    uses: dict[int, list] = {}
    for part in anatomy.foreground:
        for c, _ in part.cutters:
            uses.setdefault(id(c), []).append(c)
    cutters = [c[0] for c in uses.values() if len(c) >= 3]
    for cutter in cutters:  # the nerve union carves every bone: evaluate it once
        cutter.cache_on(root)
    try:
        _paint_foreground(anatomy.foreground, root, structures, hu, values, h, rng, progress)
    finally:
        for cutter in cutters:
            cutter.clear_cache()
    fz, fy, fx = factors
    if factors == (1, 1, 1):
        return structures, hu
    labels = np.ascontiguousarray(structures[fz // 2 :: fz, fy // 2 :: fy, fx // 2 :: fx])
    d, hh, w = grid.shape_zyx
    mean = hu.reshape(d, fz, hh, fy, w, fx).mean(axis=(1, 3, 5), dtype=np.float32)
    return labels, mean
