"""Rasterise the anatomy on a voxel grid: structure codes at voxel centres, HU with partial volume.

The output grid is LPS with identity direction: array (z, y, x), x -> left, y -> posterior,
z -> superior. Anatomy lives in body coordinates; the pose maps body -> world
(``world = R @ body + t``). Each structure is evaluated only on its own bounding box.

Partial volume: the HU model is evaluated on a grid subdivided by odd factors (so the centre
sub-sample of each block is the output voxel centre, where labels are read), each structure is
blended in with its coverage ``clip(0.5 - sdf / h, 0, 1)`` (the exact area fraction for a locally
flat boundary crossing a sub-voxel of size h), and blocks are averaged. Thick slices get more
sub-slices (``z_factor``), like a CT slice-sensitivity profile.

Bones have two models. ``v1``: a cortical shell of ``part.cortex_mm`` at the cortical value
around cancellous bone with a little texture. CT-realistic (:class:`BoneModel`): a thin cortex
(0.3-0.8 mm, blended exactly by the difference of two coverages, so at 1 mm voxels it reads as
a dim rim), and a cancellous value that rises from the marrow towards the surface with the
depth model ``marrow + (dense - marrow) * exp(-depth / lambda)`` (thin processes are mostly
dense bone), plus trabecular texture, marrow islands and sclerotic endplate bands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage
from scipy.special import expit

from spinect.phantom.anatomy import Anatomy
from spinect.phantom.parts import Part
from spinect.phantom.primitives import GridBox, smoothstep
from spinect.phantom.soft_detail import SoftLook, _bbox, apply_soft_texture, deform_background
from spinect.phantom.structures import STRUCTURE_CODES
from spinect.profiling import maybe_stage

__all__ = ["Grid", "pose_matrix", "make_grid", "supersampling_factors", "rasterise", "TissueValues", "BoneModel",
           "smooth_noise", "FAT_HU", "soften_edges"]

#: Marrow fat HU used as the zero of the relative texture amplitude.
FAT_HU = -100.0


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


def make_grid(anatomy: Anatomy, shape_zyx, spacing_zyx_mm, anchor_body_mm=None) -> Grid:
    """Grid whose centre is ``anchor_body_mm`` (body mm; default the anatomy's anchor, the L4-S1
    region) plus the case's FOV shift."""
    p = anatomy.params
    rotation = pose_matrix(p.rotation_deg)
    translation = np.asarray(p.translation_mm, float)
    anchor = anatomy.anchor() if anchor_body_mm is None else np.asarray(anchor_body_mm, float)
    centre_world = rotation @ anchor + translation + np.asarray(p.fov_shift_mm)
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
class BoneModel:
    """CT-realistic bone appearance of one case (all HU before scanner blur, noise and offset).

    Attributes:
        cortex_mm: cortical shell thickness (mm) of a vertebra (ilia scale with ``part.cortex_mm``).
        cortex_hu: HU of the (thin, dense) cortex itself; partial volume makes it a dim rim.
        marrow_hu: deep cancellous (marrow) HU per bone code.
        dense_hu: cancellous HU at the inner cortex surface (depth 0).
        depth_mm: e-folding depth lambda (mm) of the dense subcortical layer.
        texture_rel: trabecular texture SD relative to ``marrow - FAT_HU``.
        texture_mm: correlation length (Gaussian sigma, mm) of the texture.
        island_fraction: share of marrow in islands/patches (0 = none).
        island_hu: HU added inside islands (negative: fatty patches; positive: red/sclerotic).
        island_mm: correlation length (Gaussian sigma, mm) of the island pattern.
        endplate_hu: extra HU at the vertebral endplates (subchondral sclerosis).
        endplate_mm: e-folding depth (mm) of the endplate band.
        posterior_hu: cancellous HU of the vertebral arch (pedicles, laminae, processes: mostly
            dense bone), reached over 4 mm behind the posterior wall of the body.
        arch_cortex_mm: cortex thickness (mm) of the arch (None: ``cortex_mm`` everywhere).
        texture_z_ratio: the texture's correlation length along z over in-plane (vertical
            trabeculae of vertebral bodies: > 1).
        cortex_variation: relative SD of the cortex thickness along the surface (smooth over
            about 4 mm; thin spots fade the rim, real cortex is porous and uneven).
        cortex_hu_variation: relative SD of the cortex HU along the surface (smooth over about
            6 mm, clipped to 0.3-1.6): parts of the body outline read faint, others bright.
        cortex_gap_fraction: share (0-1) of the cortex surface interrupted by soft-edged gaps
            (about 2.5 mm across) where the cancellous HU reaches the surface (0 = closed shell).
        arch_cortex_gain: relative extra cortex HU of the arch (laminae, pedicles, processes; may be
            negative: a dimmer cortex).
        marrow_variation_hu: SD (HU) of a smooth marrow field (sigma 8 mm): denser and sparser
            regions of cancellous bone within one vertebra (0 = none; version 9).
        basivertebral: the basivertebral vein of L1-L5 (version 10), ``(half_width_mm,
            length_mm, branched, hu)``; None: not drawn (:func:`basivertebral_weight`).
        facet_sclerosis: strength (0-1) of the subchondral sclerosis of the facet joints (version
            10): near each joint the cortex is up to ``0.8 x`` this mm thicker and ``60 x`` this %
            denser, and never interrupted (:func:`facet_weight`).
        texture_coarse_share: share (0-1) of the texture's variance drawn at 2.5x its correlation
            length (version 11; 0: one scale).
        texture_patchiness: SD of a smooth (sigma 6 mm) gain on the texture's amplitude (version
            11; 0: the same amplitude everywhere).
        arch_dense_hu, arch_depth_mm: the dense layer under the arch's cortex (version 11): the
            arch's ``dense_hu`` and ``depth_mm`` (None: the body's).
        arch_cortex_variation: ``cortex_variation`` of the arch (version 11; None: the body's).
    """

    cortex_mm: float
    cortex_hu: float
    marrow_hu: dict[int, float]
    dense_hu: float
    depth_mm: float
    texture_rel: float = 0.2
    texture_mm: float = 1.5
    island_fraction: float = 0.0
    island_hu: float = -100.0
    island_mm: float = 4.0
    endplate_hu: float = 0.0
    endplate_mm: float = 2.0
    posterior_hu: float | None = None
    arch_cortex_mm: float | None = None
    texture_z_ratio: float = 1.0
    cortex_variation: float = 0.0
    cortex_hu_variation: float = 0.0
    arch_cortex_gain: float = 0.0
    cortex_gap_fraction: float = 0.0
    marrow_variation_hu: float = 0.0
    basivertebral: tuple[float, float, bool, float] | None = None
    facet_sclerosis: float = 0.0
    texture_coarse_share: float = 0.0
    texture_patchiness: float = 0.0
    arch_dense_hu: float | None = None
    arch_depth_mm: float | None = None
    arch_cortex_variation: float | None = None


#: Width (mm, logistic scale) of the fall at the inner edge of the arch's dense layer (version 11).
ARCH_LAYER_EDGE_MM = 0.4
#: Correlation length of the coarse trabecular texture over the fine one (version 11).
TEXTURE_COARSE_SCALE = 2.5
#: Correlation length (mm) of the texture's amplitude gain (version 11).
TEXTURE_PATCH_MM = 6.0


@dataclass(frozen=True)
class TissueValues:
    """Intensity of each structure code plus the bone layers.

    Attributes:
        table: (256,) float32 value per structure code (bones: their cortical value).
        cancellous: value of cancellous bone per bone code (v1 bone model).
        cancellous_texture: relative amplitude of trabecular texture (0 = none; v1 bone model).
        bone: CT-realistic bone model; None keeps the v1 model (thick cortex, bright cancellous).
        soft: soft-tissue texture (``ct`` mode, :mod:`spinect.phantom.soft_detail`); None: flat HU.
        edge_sigma_vox: (z, y, x) Gaussian sigma, in output voxels, of the partial volume given to
            the painted (sign-only) soft-tissue boundaries; None keeps them as painted (``v1``,
            ``random``: old cases bit for bit).
    """

    table: np.ndarray
    cancellous: dict[int, float]
    cancellous_texture: float = 0.08
    bone: BoneModel | None = None
    soft: "SoftLook | None" = None
    edge_sigma_vox: tuple[float, float, float] | None = None


#: Smallest Gaussian sigma, in coarse voxels, of the fields :func:`smooth_noise` filters on a coarse grid
#: (version 9: 1.0, was 0.75, whose trilinear upsampling left a lattice that blinded readers saw as
#: regular rows of dots in the marrow islands).
COARSE_SIGMA_VOX = 1.0


def smooth_noise(shape_zyx, sigma_vox, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-correlated noise of mean 0 and SD 1 in expectation (float32, (Z, Y, X)).

    Large correlation lengths are drawn on a coarser grid and interpolated (linear), which
    costs a fraction of filtering the full grid. Since version 13 the box is a window of a
    stationary field: the white noise is drawn with a margin of the filter's radius on every side
    (the periodic filter then never folds onto the box) and the field is divided by its exact
    expected SD (:func:`_expected_sd`), not by the box's sample mean and SD. Before, a box not much
    larger than the correlation length (the small boxes of ``render._reached_box``) got a field
    that was periodic over the box and re-centred and re-scaled on it.

    Args:
        shape_zyx: output shape. sigma_vox: Gaussian sigma per axis (voxels).
    """
    shape = np.asarray(shape_zyx, int)
    sigma = np.broadcast_to(np.asarray(sigma_vox, float), (3,))
    # coarse voxels of up to 1 sigma: the field's spectrum (SD 1/(2 pi sigma)) stays well
    # below the coarse grid's Nyquist frequency, and linear upsampling is 4-8x cheaper than filtering
    step = np.clip(np.floor(sigma / COARSE_SIGMA_VOX), 1, 4).astype(int)
    sigma_coarse = sigma / step
    coarse = -(-shape // step) + 2
    margin = np.array([_filter_radius(s) for s in sigma_coarse])
    field = rng.standard_normal(tuple(coarse + 2 * margin), dtype=np.float32)
    ndimage.gaussian_filter(field, sigma_coarse, output=field, mode="wrap", truncate=3.0)
    field = field[tuple(slice(m, m + c) for m, c in zip(margin, coarse))]
    size = tuple(int(c * s) for c, s in zip(coarse, step))
    if np.any(step > 1):
        field = _upsample_linear(field, size, tuple(shape))
    field = np.ascontiguousarray(field[: shape[0], : shape[1], : shape[2]])
    field /= np.float32(_expected_sd(coarse, sigma_coarse, size, shape))
    return field


def _filter_radius(sigma: float) -> int:
    """Half-width (samples) of scipy's Gaussian kernel truncated at 3 sigma."""
    return int(3.0 * float(sigma) + 0.5)


def _expected_sd(coarse, sigma_coarse, size, keep) -> float:
    """SD of unit white noise on a ``coarse`` grid filtered as :func:`smooth_noise` filters it (Gaussian
    ``sigma_coarse``, truncated at 3 sigma, away from the grid's edges) and upsampled linearly to
    ``size``, averaged over the first ``keep`` voxels along each axis. Per axis: the kernel w gives
    the node variance sum w² and the neighbour covariance sum w_j w_(j+1); between nodes, at
    fraction t, the variance is
    ((1-t)² + t²) sum w² + 2 t (1-t) sum w_j w_(j+1). The axes multiply (a separable filter)."""
    variance = 1.0
    for n, s, m, k in zip(coarse, sigma_coarse, size, keep):
        radius = _filter_radius(s)
        x = np.arange(-radius, radius + 1)
        w = np.exp(-0.5 * (x / s) ** 2) if s > 0 else (x == 0).astype(float)
        w /= w.sum()
        node = float(w @ w)  # the noise is drawn with a margin of the radius: the kernel never folds
        lag1 = float(w[:-1] @ w[1:])
        if m == n:
            variance *= node
            continue
        t = np.arange(k) * ((n - 1) / (m - 1)) % 1.0
        variance *= float(np.mean(((1 - t) ** 2 + t**2) * node + 2 * t * (1 - t) * lag1))
    return float(np.sqrt(variance))


def _upsample_linear(field: np.ndarray, size_zyx: tuple[int, int, int],
                     keep_zyx: tuple[int, int, int] | None = None) -> np.ndarray:
    """Trilinear upsampling with the corner voxels kept (float32 (Z, Y, X)).

    The values of ``ndimage.zoom(field, order=1, grid_mode=False)`` to ``size_zyx`` (within float32
    rounding), of which only the first ``keep_zyx`` voxels along each axis are computed (default:
    all). Separable: one linear pass per axis, the axis with the smallest zoom first, so only the
    last pass runs on the full output (2-3x faster on one core than torch's trilinear kernel, which
    computed it before; the largest single cost of a phantom's bone texture).
    """
    size = np.asarray(size_zyx, int)
    keep = size if keep_zyx is None else np.minimum(np.asarray(keep_zyx, int), size)
    out = np.asarray(field, np.float32)
    for axis in np.argsort(size / np.asarray(field.shape), kind="stable"):
        n, m, k = out.shape[axis], int(size[axis]), int(keep[axis])
        if n == m:
            out = out[(slice(None),) * axis + (slice(0, k),)]
            continue
        if n == 1:
            out = np.repeat(out, k, axis=axis)
            continue
        pos = np.arange(k, dtype=np.float64) * ((n - 1) / (m - 1))
        lo_index = np.minimum(pos.astype(np.intp), n - 2)
        weight = (pos - lo_index).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        lo = np.take(out, lo_index, axis=axis)
        hi = np.take(out, lo_index + 1, axis=axis)
        hi -= lo
        hi *= weight
        lo += hi
        out = lo
    return out


def _plane_coordinate(box: GridBox, point: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """(p - point) . direction (mm, float32 (Z, Y, X)) at the voxel centres p of ``box`` (body coordinates)."""
    iz, iy, ix = (np.arange(a, b, dtype=np.float64) for a, b in zip(box.lo, box.hi))
    coef = box.step @ direction
    off = float(direction @ (box.origin - point))
    plane = ((coef[1] * iy)[:, None] + (coef[2] * ix)[None, :]).astype(np.float32)
    return plane[None, :, :] + (coef[0] * iz + off).astype(np.float32)[:, None, None]


#: Share of the endplate band's HU in the middle of the endplate (version 10): the ring apophysis
#: at the rim is denser than the thin central plate, so an axial slice through an endplate shows a
#: bright ring round a dimmer centre, not a uniform "stripe-like band" (blinded readers).
ENDPLATE_CENTRE_SHARE = 0.4


def _endplate_band(box: GridBox, frame, params, model: BoneModel, with_inferior: bool) -> np.ndarray | None:
    """Extra HU of the sclerotic endplate bands of one vertebral body (float32 (Z, Y, X)): full on
    the rim (normalised radius 0.87-0.89 in the endplate's ellipse of half axes a, b), falling to
    :data:`ENDPLATE_CENTRE_SHARE` inside radius 0.67 and to 0 at radius 1.05."""
    if model.endplate_hu <= 0 or frame is None or params is None:
        return None
    band = np.zeros(box.shape, np.float32)
    plates = [frame.superior, frame.inferior] if with_inferior else [frame.superior]
    for plate in plates:
        n = np.asarray(plate.normal, float)
        lat = frame.axes[0] - (frame.axes[0] @ n) * n
        post = np.cross(n, lat)
        post *= np.sign(post @ frame.axes[1]) / np.linalg.norm(post)
        s = _plane_coordinate(box, plate.centre, n)  # < 0 inside the body
        r2 = (_plane_coordinate(box, plate.centre, lat / np.linalg.norm(lat)) / np.float32(params.a)) ** 2
        r2 += (_plane_coordinate(box, plate.centre, post) / np.float32(params.b)) ** 2
        weight = np.clip((1.1 - r2) / 0.3, 0.0, 1.0)  # only under the endplate's own disc
        weight *= np.float32(ENDPLATE_CENTRE_SHARE) + np.float32(1.0 - ENDPLATE_CENTRE_SHARE) * smoothstep((r2 - 0.45) / 0.3)
        np.abs(s, out=s)
        band += np.exp(s / np.float32(-model.endplate_mm)) * weight
    band *= np.float32(model.endplate_hu)
    return band


def _arch_weight(box: GridBox, frame, params) -> np.ndarray | None:
    """0 in the vertebral body, rising to 1 within 4 mm behind its posterior wall (the arch:
    pedicles, laminae, processes); None for bones without a vertebra frame."""
    if frame is None or params is None:
        return None
    w = _plane_coordinate(box, frame.centre, frame.axes[1])
    w -= np.float32(params.b - 1.0)
    w *= np.float32(0.25)
    return np.clip(w, 0.0, 1.0, out=w)


#: Gaussian radius (SD, mm) of a facet joint's sclerosis round its centre.
FACET_SCLEROSIS_MM = 5.0


def facet_weight(box: GridBox, anatomy: Anatomy | None, name: str) -> np.ndarray | None:
    """Weight (0-1, float32 (Z, Y, X)) of the facet joints of vertebra ``name`` on ``box``: a
    Gaussian (SD :data:`FACET_SCLEROSIS_MM`) round the centre of each joint it takes part in (its
    superior articular processes' joints with the vertebra above, its inferior ones' with the
    vertebra below); None when it has none in the box."""
    if anatomy is None or not getattr(anatomy, "facets", None):
        return None
    out = None
    reach = 3.0 * FACET_SCLEROSIS_MM
    for (level, _side), joint in anatomy.facets.items():
        if not (level.startswith(name) or level.endswith(name)):
            continue
        centre = np.asarray(joint.centre, float)
        near = box.sub(centre - reach, centre + reach)
        if near is None:
            continue
        r2 = sum(_plane_coordinate(near, centre, axis) ** 2 for axis in np.eye(3))
        r2 *= np.float32(-0.5 / FACET_SCLEROSIS_MM**2)
        if out is None:
            out = np.zeros(box.shape, np.float32)
        view = out[near.slices_in(box)]
        np.maximum(view, np.exp(r2), out=view)
    return out


#: Vertebrae that get a basivertebral vein (the sacrum's and the thoracic bodies' are not drawn).
BASIVERTEBRAL_LEVELS = ("L1", "L2", "L3", "L4", "L5")


def _segment_distance(px: np.ndarray, py: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """Distance (mm, float32) of the points (px, py) from the segment a-b in their plane."""
    ax, ay = np.float32(a[0]), np.float32(a[1])
    dx, dy = np.float32(b[0] - a[0]), np.float32(b[1] - a[1])
    t = ((px - ax) * dx + (py - ay) * dy) / max(float(dx * dx + dy * dy), 1e-9)
    np.clip(t, 0.0, 1.0, out=t)
    ex, ey = px - (ax + t * dx), py - (ay + t * dy)
    return np.sqrt(ex * ex + ey * ey)


#: How far (in SDs of the channel's width and height) the basivertebral vein is drawn: beyond it
#: its weight is below exp(-8) = 3e-4.
_VEIN_REACH_SD = 4.0


def _basivertebral_near(box: GridBox, frame, half_depth_mm: float, half_width_mm: float, length_mm: float,
                        branched: bool) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """(slices of ``box``, weight there) of the basivertebral vein: only the part of ``box`` within
    :data:`_VEIN_REACH_SD` SDs of the channel is computed; None when that misses the box."""
    b, fork = float(half_depth_mm), float(half_depth_mm) - 0.6 * length_mm
    stem = ((0.0, b + 1.0), (0.0, fork))
    ends = [(side * 0.35 * length_mm, b - length_mm) for side in (-1.0, 1.0)] if branched else [(0.0, b - length_mm)]
    sd_height = 0.8 * half_width_mm + 0.6
    local = np.array([[x, y, 0.0] for x, y in (*stem, *ends)])
    points = np.asarray(frame.centre, float) + local @ np.asarray(frame.axes, float)
    reach = _VEIN_REACH_SD * max(half_width_mm, sd_height)
    near = box.sub(points.min(axis=0) - reach, points.max(axis=0) + reach)
    if near is None:
        return None
    lat = _plane_coordinate(near, frame.centre, frame.axes[0])
    post = _plane_coordinate(near, frame.centre, frame.axes[1])
    cran = _plane_coordinate(near, frame.centre, frame.axes[2])
    dist = _segment_distance(lat, post, *stem)
    for end in ends:
        np.minimum(dist, _segment_distance(lat, post, stem[1], end), out=dist)
    dist *= np.float32(1.0 / half_width_mm)
    dist *= dist
    cran *= np.float32(1.0 / sd_height)
    cran *= cran
    dist += cran
    dist *= np.float32(-0.5)
    return near.slices_in(box), np.exp(dist, out=dist)


def basivertebral_weight(box: GridBox, frame, half_depth_mm: float, half_width_mm: float, length_mm: float,
                         branched: bool) -> np.ndarray:
    """Weight (0-1, float32 (Z, Y, X)) of the basivertebral vein of one vertebral body on ``box``.

    Real axial CT shows it as a dark channel from the middle of the body's posterior wall
    (the basivertebral foramen) forwards, often forking (a "Y"), at mid-height; sagittal slices show
    a short horizontal channel. Here: a stem in the body's mid-sagittal plane from 1 mm behind the
    posterior wall (``half_depth_mm`` behind the centre) forwards over 60 % of ``length_mm``, then
    either on to ``length_mm`` or forking into two limbs ending 35 % of ``length_mm`` to each side;
    Gaussian across the channel (SD ``half_width_mm``) and in height (SD ``0.8 half_width_mm + 0.6``
    mm round the frame's mid-height plane), drawn out to :data:`_VEIN_REACH_SD` SDs.
    """
    out = np.zeros(box.shape, np.float32)
    near = _basivertebral_near(box, frame, half_depth_mm, half_width_mm, length_mm, branched)
    if near is not None:
        out[near[0]] = near[1]
    return out


def _cancellous_ct(box: GridBox, d: np.ndarray, part: Part, model: BoneModel, cortex_mm, rng: np.random.Generator,
                   frame=None, params=None, arch: np.ndarray | None = None) -> np.ndarray:
    """Cancellous HU (float32 (Z, Y, X)) of one bone on ``box``: marrow with texture and islands
    (the arch: ``posterior_hu``), rising to ``dense_hu`` towards the inner cortex surface, plus
    endplate bands. cortex_mm: scalar or per-voxel thickness (mm)."""
    spacing = np.linalg.norm(box.step, axis=1)
    marrow = np.float32(model.marrow_hu.get(part.code, np.mean(list(model.marrow_hu.values()))))
    field = np.full(box.shape, marrow, np.float32)
    if model.texture_rel > 0:
        sigma_mm = np.array([model.texture_mm * model.texture_z_ratio, model.texture_mm, model.texture_mm])
        tex = smooth_noise(box.shape, sigma_mm / spacing, rng)
        amplitude = model.texture_rel * max(float(marrow) - FAT_HU, 20.0)
        if model.texture_coarse_share > 0:  # two scales: one Gaussian scale reads as a regular "maze"
            coarse = smooth_noise(box.shape, TEXTURE_COARSE_SCALE * sigma_mm / spacing, rng)
            tex *= np.float32(np.sqrt(1.0 - model.texture_coarse_share))
            coarse *= np.float32(np.sqrt(model.texture_coarse_share))
            tex += coarse
            del coarse
        if model.texture_patchiness > 0:  # coarse and smooth regions within one vertebra
            gain = smooth_noise(box.shape, TEXTURE_PATCH_MM / spacing, rng)
            gain *= np.float32(model.texture_patchiness)
            gain += np.float32(1.0)
            np.clip(gain, 0.15, None, out=gain)
            tex *= gain
            del gain
            amplitude /= float(np.sqrt(1.0 + model.texture_patchiness**2))  # the same texture SD on average
        tex *= np.float32(amplitude)
        field += tex
    if model.marrow_variation_hu > 0:  # regional density (sigma 8 mm): no vertebra is uniform inside
        regional = smooth_noise(box.shape, 8.0 / spacing, rng)
        regional *= np.float32(model.marrow_variation_hu)
        field += regional
        del regional
    if model.island_fraction > 0:
        pattern = smooth_noise(box.shape, model.island_mm / spacing, rng)
        cut = np.float32(np.quantile(pattern[:: 4, :: 4, :: 4], 1.0 - model.island_fraction))
        pattern -= cut
        np.clip(pattern * np.float32(2.0), 0.0, 1.0, out=pattern)  # soft-edged islands
        field += pattern * np.float32(model.island_hu)
    if model.posterior_hu is not None and arch is not None:
        # the arch's mean moves to posterior_hu; its texture and islands stay (version 9: readers of
        # blinded pairs named the flat, texture-less arch inside a bright rim as the phantom's tell)
        field += arch * (np.float32(model.posterior_hu) - marrow)
    depth = np.maximum(-d - cortex_mm, 0.0)
    dense_hu = np.float32(model.dense_hu)
    plateau = None
    if arch is not None and model.arch_depth_mm is not None and model.arch_dense_hu is not None:
        # the arch: a dense layer ``arch_depth_mm`` deep that ends over about a millimetre (real arches:
        # 500-550 HU 1-3 mm inside, marrow + 65-90 HU beyond 4.5 mm), not the body's thin exponential one
        plateau = np.float32(model.arch_depth_mm) - depth
        plateau *= np.float32(1.0 / ARCH_LAYER_EDGE_MM)
        expit(plateau, out=plateau)
        dense_hu = dense_hu + arch * np.float32(model.arch_dense_hu - model.dense_hu)
    depth *= np.float32(-1.0 / model.depth_mm)
    np.exp(depth, out=depth)
    if plateau is not None:
        depth += arch * (plateau - depth)
        del plateau
    field += depth * (dense_hu - field)
    if model.basivertebral is not None and frame is not None and params is not None and part.name in BASIVERTEBRAL_LEVELS:
        half_width, length, branched, vein_hu = model.basivertebral
        near = _basivertebral_near(box, frame, params.b, half_width, length, branched)
        if near is not None:  # blended only where the vein is drawn
            view = field[near[0]]
            view += near[1] * (np.float32(vein_hu) - view)
    band = _endplate_band(box, frame, params, model, with_inferior=part.name != "S1")
    if band is not None:
        field += band
    return field


def soften_edges(hu: np.ndarray, flat: np.ndarray, sigma_vox) -> np.ndarray:
    """Partial volume of the painted soft-tissue boundaries (in place on (Z, Y, X) float32 HU).

    The background is painted by sign at voxel centres and displaced by whole voxels, so its
    boundaries are stair-stepped; a CT image is band-limited. ``hu += G * flat - flat``: the
    piecewise-constant tissue table image ``flat`` (same grid) is replaced by its Gaussian blur
    (sigma ``sigma_vox`` (z, y, x) voxels: tissue fractions of smoothed masks) while the textures
    added on top of it stay as sharp as drawn. ``flat`` is overwritten (no extra copy).
    """
    hu -= flat
    ndimage.gaussian_filter(flat, sigma_vox, output=flat, truncate=2.5)
    hu += flat
    return hu


def _paint_background(parts: list[Part], root: GridBox, structures: np.ndarray) -> None:
    for part in parts:
        part.paint_inside(root, structures)


def _blend(view: np.ndarray, d: np.ndarray, value, h: float) -> None:
    cov = np.clip(0.5 - d / h, 0.0, 1.0)
    view += cov * (value - view)


def _cortex_gaps(box: GridBox, fraction: float, rng: np.random.Generator, arch: np.ndarray | None,
                 scale_mm: float = 2.5) -> np.ndarray:
    """Where the cortex is interrupted (float32 (Z, Y, X), 0 intact to 1 gap): soft-edged patches
    of a smooth field (sigma ``scale_mm``) covering about ``fraction`` of the surface; the arch
    (``arch`` weight 1: laminae, pedicles, processes) keeps most of its denser, closed cortex."""
    from scipy.special import ndtri

    field = smooth_noise(box.shape, scale_mm / np.linalg.norm(box.step, axis=1), rng)
    field -= np.float32(ndtri(1.0 - fraction))
    field *= np.float32(2.5)
    np.clip(field, 0.0, 1.0, out=field)
    if arch is not None:
        field *= np.float32(1.0) - np.float32(0.7) * arch
    return field


def _blend_bone_ct(view: np.ndarray, d: np.ndarray, sub: GridBox, part: Part, model: BoneModel, h: float,
                   rng: np.random.Generator, anatomy: Anatomy | None) -> None:
    """Thin cortex plus cancellous, blended with the exact area fractions of the two surfaces:
    ``view (1 - c_out) + cortex (c_out - c_in) + cancellous c_in``."""
    cortex_mm = np.float32(model.cortex_mm * part.cortex_mm / 1.2)  # ilia (1.5 mm in v1): slightly thicker
    frame = anatomy.frames.get(part.name) if anatomy is not None else None
    params = anatomy.params.vertebrae.get(part.name) if anatomy is not None and frame is not None else None
    arch = _arch_weight(sub, frame, params)
    if arch is not None and model.arch_cortex_mm is not None:  # laminae and processes: thicker cortex
        cortex_mm = cortex_mm + arch * np.float32(model.arch_cortex_mm - model.cortex_mm)
    facets = facet_weight(sub, anatomy, part.name) if model.facet_sclerosis > 0 else None
    if facets is not None:  # subchondral sclerosis: a thicker plate under each articular surface
        cortex_mm = cortex_mm + facets * np.float32(0.8 * model.facet_sclerosis)
    if model.cortex_variation > 0:
        vary = smooth_noise(sub.shape, 4.0 / np.linalg.norm(sub.step, axis=1), rng)
        if arch is not None and model.arch_cortex_variation is not None:
            # the arch: thick, solid-looking cortex in places (laminae, articular processes) and thin in others
            vary *= np.float32(model.cortex_variation) + arch * np.float32(model.arch_cortex_variation - model.cortex_variation)
        else:
            vary *= np.float32(model.cortex_variation)
        vary += np.float32(1.0)
        np.clip(vary, 0.2, None, out=vary)
        cortex_mm = vary * cortex_mm
    canc = _cancellous_ct(sub, d, part, model, cortex_mm, rng, frame, params, arch)
    c_out = np.clip(0.5 - d / h, 0.0, 1.0)
    c_in = np.clip(0.5 - (d + cortex_mm) / h, 0.0, 1.0)
    cortex = np.float32(model.cortex_hu)
    if model.cortex_hu_variation > 0 or (model.arch_cortex_gain != 0 and arch is not None):
        gain = np.ones(sub.shape, np.float32)
        if model.cortex_hu_variation > 0:
            gain = smooth_noise(sub.shape, 6.0 / np.linalg.norm(sub.step, axis=1), rng)
            gain *= np.float32(model.cortex_hu_variation)
            gain += np.float32(1.0)
            np.clip(gain, 0.3, 1.6, out=gain)
        if model.arch_cortex_gain != 0 and arch is not None:
            gain *= np.float32(1.0) + np.float32(model.arch_cortex_gain) * arch
        cortex = gain * cortex
    if facets is not None:
        cortex = cortex * (np.float32(1.0) + np.float32(0.6 * model.facet_sclerosis) * facets)
    if model.arch_dense_hu is not None:
        # version 11: the cortex is never less dense than the bone under it (a faint stretch of cortex
        # over the arch's dense layer read as a dark line, and thickening it darkened the joints)
        cortex = np.maximum(cortex, canc)
    if model.cortex_gap_fraction > 0:  # interrupted cortex: the cancellous bone reaches the surface
        gap = _cortex_gaps(sub, model.cortex_gap_fraction, rng, arch)
        if facets is not None:  # articular surfaces stay closed
            gap *= np.float32(1.0) - facets
        cortex = cortex + gap * (canc - cortex)
    view += c_out * (cortex - view)
    canc -= cortex
    canc *= c_in
    view += canc


#: HU of the gas in a disc's vacuum clefts (before partial volume).
VACUUM_GAS_HU = -850.0


def _disc_vacuum(value: np.ndarray, d: np.ndarray, sub: GridBox, spacing: np.ndarray, strength: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Gas clefts of a degenerated disc's nucleus blended into its HU (float32 (Z, Y, X), returned).

    The clefts are the zero set of a field that varies fast along z (0.8 mm) and slowly in the
    plane (4 mm): thin, roughly horizontal sheets, kept where a second, coarse field is high (about
    ``strength`` x 40 % of the nucleus) and more than 2.5 mm inside the disc, with a soft edge
    (partial volume)."""
    sheet = smooth_noise(sub.shape, np.array([0.8, 4.0, 4.0]) / spacing, rng)
    np.abs(sheet, out=sheet)
    width = np.float32(0.3 + 0.3 * strength)  # in SDs of the field
    sheet *= np.float32(-2.0) / width
    sheet += np.float32(2.0)  # 1 within half the width, falling to 0 at the width
    np.clip(sheet, 0.0, 1.0, out=sheet)
    where = smooth_noise(sub.shape, np.array([3.0, 6.0, 6.0]) / spacing, rng)
    from scipy.special import ndtri

    where -= np.float32(ndtri(1.0 - 0.4 * strength))
    where *= np.float32(3.0)
    np.clip(where, 0.0, 1.0, out=where)
    sheet *= where
    sheet *= np.clip((-d - np.float32(2.5)) / np.float32(1.5), 0.0, 1.0)  # the nucleus only
    value += sheet * (np.float32(VACUUM_GAS_HU) - value)
    return value


def _soft_part_value(part: Part, sub: GridBox, d: np.ndarray, values: TissueValues, rng: np.random.Generator):
    """HU of a non-bone foreground part: the table value; in the ``ct`` mode (``values.soft``)
    discs get an annulus brighter than the nucleus (by ``disc_nucleus_hu``, reached 3-7 mm
    inside the disc) and a faint texture, the epidural and foraminal fat a faint texture."""
    base = values.table[part.code]
    soft = values.soft
    if soft is None or part.cortex_mm > 0:
        return base
    spacing = np.linalg.norm(sub.step, axis=1)
    if part.name.startswith("disc_") and soft.disc_nucleus_hu > 0:
        value = smooth_noise(sub.shape, 1.5 / spacing, rng)
        value *= np.float32(3.0)
        nucleus = np.clip((-d - np.float32(3.0)) / np.float32(4.0), 0.0, 1.0)
        nucleus *= np.float32(-soft.disc_nucleus_hu)
        value += nucleus
        value += np.float32(base + 0.3 * soft.disc_nucleus_hu)
        vacuum = (soft.disc_vacuum or {}).get(part.name, 0.0)
        if vacuum > 0:  # gas clefts: thin, roughly horizontal sheets in the nucleus (HU only)
            value = _disc_vacuum(value, d, sub, spacing, float(vacuum), rng)
        return value
    if part.name in ("epidural_fat", "foraminal_fat") and soft.canal_fat_texture_hu > 0:
        value = smooth_noise(sub.shape, np.array([4.0, 1.5, 1.5]) / spacing, rng)
        value *= np.float32(soft.canal_fat_texture_hu)
        value += np.float32(base)
        return value
    return base


def _paint_foreground(parts: list[Part], root: GridBox, structures, hu, values: TissueValues, h: float,
                      rng: np.random.Generator, progress: Callable[[float], None] | None,
                      anatomy: Anatomy | None = None) -> None:
    for i, part in enumerate(parts):
        sub = root.sub(*part.body_bounds())
        if progress:
            progress((i + 1) / len(parts))
        if sub is None:
            continue
        d = part.sdf_box(sub)
        if values.bone is not None or values.soft is not None:
            # ``ct`` mode (version 13): partial volume and textures only on the voxels the part's
            # surface reaches. A bone's box is padded by its warp's largest displacement and its
            # osteophytes' reach: the bone fills 1-6 % of it.
            reached = _reached_box(sub, d, h)
            if reached is None:
                continue
            d = np.ascontiguousarray(d[reached.slices_in(sub)])
            sub = reached
        view = hu[sub.slices]
        if part.cortex_mm > 0 and values.bone is not None:
            _blend_bone_ct(view, d, sub, part, values.bone, h, rng, anatomy)
            np.putmask(structures[sub.slices], d < 0, part.code)
            continue
        _blend(view, d, _soft_part_value(part, sub, d, values, rng), h)
        if part.cortex_mm > 0:
            canc = np.float32(values.cancellous[part.code])
            if values.cancellous_texture > 0:
                tex = ndimage.gaussian_filter(rng.standard_normal(sub.shape, dtype=np.float32), 0.8)
                canc = canc * (1.0 + values.cancellous_texture * 2.5 * tex)
            d += part.cortex_mm
            _blend(view, d, canc, h)
            d -= part.cortex_mm
        np.putmask(structures[sub.slices], d < 0, part.code)


def _reached_box(box: GridBox, d: np.ndarray, h: float) -> GridBox | None:
    """The part of ``box`` holding every voxel with ``d`` < h/2 (partial volume above 0), one voxel
    wider (clipped to ``box``); None if there is none."""
    near = d < np.float32(0.5 * h)
    if not near.any():
        return None
    lo, hi = [], []
    for axis in range(3):
        hit = np.flatnonzero(near.any(axis=tuple(a for a in range(3) if a != axis)))
        lo.append(max(int(hit[0]) - 1, 0))
        hi.append(min(int(hit[-1]) + 2, d.shape[axis]))
    return GridBox(box.origin, box.step, box.lo + np.array(lo), box.lo + np.array(hi), box._inverse)


#: Vertebral bone codes whose laminae carry a ligamentum flavum (L1-S1, sacrum).
_LF_BONE_CODES = tuple(STRUCTURE_CODES[n] for n in ("L1", "L2", "L3", "L4", "L5", "S1", "sacrum"))


def _frame_axis_mm(box: GridBox, anatomy: Anatomy, axis: int) -> np.ndarray:
    """Body coordinate (mm, float32 (Z, Y, X)) of the voxels of ``box`` along the mean of the vertebra
    frames' axis ``axis`` (0 lateral, 1 posterior: larger = further back)."""
    direction = np.mean([f.axes[axis] for f in anatomy.frames.values()], axis=0)
    direction /= np.linalg.norm(direction)
    return _plane_coordinate(box, np.zeros(3), direction)


def _epidural_box(structures: np.ndarray, root: GridBox, pad: int = 0):
    """(slices, structure codes there, :class:`GridBox`) of the epidural fat's bounding box grown by
    ``pad`` voxels, or None without epidural fat."""
    slices = _bbox(structures == STRUCTURE_CODES["epidural_fat"], pad=pad)
    if slices is None:
        return None
    lo, hi = np.array([sl.start for sl in slices]), np.array([sl.stop for sl in slices])
    return slices, structures[slices], GridBox(root.origin, root.step, root.lo + lo, root.lo + hi, root._inverse)


def _per_slice_sac_centre(post: np.ndarray, sac: np.ndarray, missing: float) -> np.ndarray:
    """(Z,) float32 mean ``post`` of the dural sac's voxels on each slice; ``missing`` where it has none."""
    count = sac.sum(axis=(1, 2))
    return np.where(count > 0, (post * sac).sum(axis=(1, 2)) / np.maximum(count, 1), missing).astype(np.float32)


def _blend_found(hu: np.ndarray, found: tuple[tuple[slice, ...], np.ndarray] | None, value: float) -> None:
    """``hu[slices] += weight (value - hu[slices])`` for ``found`` = (slices, weight) (in place; None: nothing)."""
    if found is None:
        return
    slices, weight = found
    view = hu[slices]
    view += weight * (np.float32(value) - view)


def ligamentum_flavum_weight(structures: np.ndarray, root: GridBox, anatomy: Anatomy,
                             thickness_mm: float = 3.0) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Where the ligamentum flavum lies (image only: the structure map keeps epidural fat).

    The ligament lines the inner (canal) face of the laminae: epidural-fat voxels within
    ``thickness_mm`` of vertebral bone and behind the dural sac's centre on their slice (the
    pedicles and the back of the bodies are lateral or in front of it).

    Returns:
        (slices of the box in ``structures``, weight float32 (Z, Y, X) in 0-1 on that box: its
        fraction per voxel, with a 1 mm partial-volume edge), or None without epidural fat.
    """
    pad = int(np.ceil(thickness_mm / float(np.min(np.linalg.norm(root.step, axis=1))))) + 1
    found = _epidural_box(structures, root, pad)
    if found is None:
        return None
    slices, st, box = found
    spacing = np.linalg.norm(root.step, axis=1)
    bone_mm = ndimage.distance_transform_edt(~np.isin(st, _LF_BONE_CODES), sampling=spacing).astype(np.float32)
    post = _frame_axis_mm(box, anatomy, 1)
    centre = _per_slice_sac_centre(post, st == STRUCTURE_CODES["dural_sac"], np.inf)
    behind = post > centre[:, None, None]  # slices without a sac (below it) get none
    weight = np.clip(np.float32(thickness_mm + 0.5) - bone_mm, 0.0, 1.0)
    weight *= (st == STRUCTURE_CODES["epidural_fat"]) & behind
    return slices, weight


def paint_ligamentum_flavum(hu: np.ndarray, structures: np.ndarray, root: GridBox, anatomy: Anatomy,
                            lf_hu: float, thickness_mm: float = 3.0) -> None:
    """Blend the ligamentum flavum (``lf_hu``, 60-100 HU) into ``hu`` (in place, (Z, Y, X)
    float32) where :func:`ligamentum_flavum_weight` puts it; labels and codes are untouched."""
    _blend_found(hu, ligamentum_flavum_weight(structures, root, anatomy, thickness_mm), lf_hu)


def anterior_epidural_weight(structures: np.ndarray, root: GridBox, anatomy: Anatomy,
                             edge_mm: float = 1.0) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Where the anterior epidural space lies (image only: the structure map keeps epidural fat).

    In front of the dural sac the lumbar canal holds the posterior longitudinal ligament and the
    anterior internal venous plexus, hardly any fat: the sac lies against them. The phantom's
    epidural fat fills the canal round the sac, which drew a dark ring round it (blinded readers:
    a round canal in a dark rim). These are the epidural-fat voxels in front of the sac's centre on
    their slice, within the sac's lateral extent there, with a ``edge_mm`` partial-volume edge
    laterally and at the centre plane (version 14).

    Returns:
        (slices of the box in ``structures``, weight float32 (Z, Y, X) in 0-1 on that box), or None
        without epidural fat or sac.
    """
    found = _epidural_box(structures, root)
    if found is None:
        return None
    slices, st, box = found
    sac = st == STRUCTURE_CODES["dural_sac"]
    if not sac.any():
        return None
    post, lat = _frame_axis_mm(box, anatomy, 1), _frame_axis_mm(box, anatomy, 0)
    big = np.float32(1e6)
    centre = _per_slice_sac_centre(post, sac, -big)  # slices without a sac get none
    left = np.where(sac, lat, big).min(axis=(1, 2))
    right = np.where(sac, lat, -big).max(axis=(1, 2))
    edge = np.float32(edge_mm)
    weight = np.clip((centre[:, None, None] - post) / edge, 0.0, 1.0)  # 1 from edge_mm in front of the centre
    weight *= np.clip((lat - left[:, None, None]) / edge + np.float32(0.5), 0.0, 1.0)
    weight *= np.clip((right[:, None, None] - lat) / edge + np.float32(0.5), 0.0, 1.0)
    weight *= st == STRUCTURE_CODES["epidural_fat"]
    return slices, weight


def paint_anterior_epidural(hu: np.ndarray, structures: np.ndarray, root: GridBox, anatomy: Anatomy,
                            hu_value: float) -> None:
    """Blend the anterior epidural space's soft tissue (``hu_value``) into ``hu`` (in place, (Z, Y, X)
    float32) where :func:`anterior_epidural_weight` puts it; labels and codes are untouched."""
    _blend_found(hu, anterior_epidural_weight(structures, root, anatomy), hu_value)


def rasterise(anatomy: Anatomy, grid: Grid, values: TissueValues, rng: np.random.Generator, *, supersample: int = 1,
              progress: Callable[[float], None] | None = None,
              texture_rng: np.random.Generator | None = None, timer=None) -> tuple[np.ndarray, np.ndarray]:
    """Structure map (exact, at voxel centres) and partial-volume HU image on ``grid``.

    Soft tissues are painted first (sign only), displaced by ``anatomy.soft`` when set (phantom
    v2) and textured by ``values.soft`` from ``texture_rng`` when both are set (``ct`` mode);
    fat parts, discs, bone and nerves are painted over them with partial volume. ``timer``: an
    optional :class:`spinect.profiling.StageTimer` that gets the seconds of each of these steps.

    Returns:
        (structures (Z, Y, X) uint8, hu (Z, Y, X) float32) before scanner blur and noise.
    """
    factors = supersampling_factors(grid.spacing_zyx_mm, supersample)
    root = grid.body_box(factors)
    structures = np.zeros(root.shape, np.uint8)
    with maybe_stage(timer, "soft tissue: structures and displacement"):
        _paint_background(anatomy.background, root, structures)
        if getattr(anatomy, "soft", None) is not None:
            deform_background(structures, root, anatomy.soft)
    hu = values.table[structures]
    spacing = np.asarray(grid.spacing_zyx_mm) / np.asarray(factors)
    flat = hu.copy() if values.edge_sigma_vox is not None else None
    with maybe_stage(timer, "soft tissue: texture and edges"):
        if values.soft is not None and texture_rng is not None:
            apply_soft_texture(hu, structures, spacing, values.soft, values.table, texture_rng, root)
        if flat is not None:
            soften_edges(hu, flat, np.asarray(values.edge_sigma_vox, float) * np.asarray(factors))
            del flat
    h = float(np.prod(spacing) ** (1.0 / 3.0))
    uses: dict[int, list] = {}
    for part in anatomy.foreground:
        for c, _ in part.cutters:
            uses.setdefault(id(c), []).append(c)
    cutters = [c[0] for c in uses.values() if len(c) >= 3]
    for cutter in cutters:  # the nerve union carves every bone: evaluate it once
        cutter.cache_on(root)
    try:
        with maybe_stage(timer, "bone, disc, canal and nerves (partial volume, bone texture)"):
            _paint_foreground(anatomy.foreground, root, structures, hu, values, h, rng, progress, anatomy)
    finally:
        for cutter in cutters:
            cutter.clear_cache()
    if values.soft is not None and getattr(anatomy, "frames", None):
        with maybe_stage(timer, "ligamentum flavum, anterior epidural space"):
            lf_hu = float(np.clip(values.table[STRUCTURE_CODES["ligamentum_flavum"]] + 10.0, 60.0, 100.0))
            paint_ligamentum_flavum(hu, structures, root, anatomy, lf_hu)
            # version 14: the ligament and the venous plexus in front of the sac (blood, enhanced with
            # IV contrast, mixed with 60 HU ligament), not fat
            plexus_hu = 0.5 * (float(values.table[STRUCTURE_CODES["blood_vessel"]]) + 60.0)
            paint_anterior_epidural(hu, structures, root, anatomy, plexus_hu)
    fz, fy, fx = factors
    if factors == (1, 1, 1):
        return structures, hu
    labels = np.ascontiguousarray(structures[fz // 2 :: fz, fy // 2 :: fy, fx // 2 :: fx])
    d, hh, w = grid.shape_zyx
    mean = hu.reshape(d, fz, hh, fy, w, fx).mean(axis=(1, 3, 5), dtype=np.float32)
    return labels, mean
