"""Phantom v2 anatomy: real bone shapes (signed-distance grids of meshes) on the fitted column.

The bones come from ``data/anatomy`` (built offline by ``scripts/build_anatomy_data.py`` from the
Visible Human Male L1-L5, sacrum and hip bones, the mean L2-L5 of Clouthier 2023 and the gias3
pelvis; see that folder's README). Each bone is an int8 signed-distance grid (Z, Y, X) in its
source's LPS frame (mm) plus, for vertebrae and sacra, a measured local frame (origin = body
centre; rows = lateral (left), posterior, cranial axes) and the dimensions the rest of the phantom
consumes (body half-width/depth and heights, pedicles, canal, SAP anterior faces).

Per case a source is drawn per level (VHM or the mean shape for L2-L5) and for the pelvis (VHM or
gias3); the column is built by :func:`skeleton.build_column` from the measured dimensions times the
case's per-level scales, and each bone's grid is placed by the affine map from its measured frame
to the case frame (anisotropic scale: distances are multiplied by the smallest scale, so the
zero set is exact and the magnitude a lower bound in mm). Nerve routing, landmarks and truth use
the fitted frames and pedicles, so the existing machinery works unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from spinect.errors import SpinectError
from spinect.phantom.params import PhantomParams, VertebraParams, sample_params
from spinect.phantom.parts import Part
from spinect.phantom.primitives import GridBox, Primitive, smooth_min
from spinect.phantom.skeleton import VertebraFrame
from spinect.phantom.structures import SIDES, VERTEBRA_NAMES
from spinect.phantom.warps import ArchWarp

__all__ = ["ANATOMY_KINDS", "DATA_DIR", "BoneGrid", "MeshPart", "MeshVertebraParams", "load_library", "check_anatomy",
           "sample_mesh_params", "mesh_placement", "rotate_axially", "clip_bounds"]

ANATOMY_KINDS = ("primitive", "mesh")
DATA_DIR = Path(__file__).resolve().parent / "data" / "anatomy"
#: Extra padding of a mesh part's box so partial-volume coverage sees the whole boundary band (mm).
_PAD_MM = 3.0
_LUMBAR = VERTEBRA_NAMES[:-1]
#: Steepness of splitting planes (distance x this): the cortex band along a cut is 1.2 / 40 mm.
_PLANE_STEEP = 40.0
#: Fillet (mm) where added bone (osteophytes) meets a bone grid's surface.
ADDED_FILLET_MM = 1.0


def check_anatomy(kind: str) -> str:
    """Validated anatomy kind (``primitive`` or ``mesh``).

    Raises:
        SpinectError: any other value.
    """
    if kind not in ANATOMY_KINDS:
        raise SpinectError(f"unknown phantom anatomy {kind!r}: use one of {', '.join(ANATOMY_KINDS)}")
    return kind


@dataclass(frozen=True)
class BoneGrid:
    """One bone's signed-distance grid.

    Attributes:
        name: ``<source>__<bone>``, e.g. ``vhm__L5``.
        values: (Z, Y, X) int8 signed distance in units of ``step_mm`` (negative inside).
        origin_xyz_mm: source-LPS position of node (0, 0, 0); spacing_mm: node spacing.
        bbox_xyz_mm: (2, 3) the mesh's bounding box in source LPS.
        measured: local frame and dimensions (vertebrae and sacra), else None.
    """

    name: str
    values: np.ndarray
    origin_xyz_mm: np.ndarray
    spacing_mm: float
    step_mm: float
    bbox_xyz_mm: np.ndarray
    measured: dict | None


@lru_cache(maxsize=2)
def load_library(folder: str | None = None) -> dict[str, BoneGrid]:
    """All bone grids of ``folder`` (default: the package's ``data/anatomy``), read once.

    Raises:
        SpinectError: missing or unreadable data files.
    """
    root = Path(folder) if folder else DATA_DIR
    try:
        meta = json.loads((root / "bones.json").read_text())
        with np.load(root / "bones.npz") as z:
            arrays = {k: z[k] for k in z.files}
        out = {}
        for name, e in meta["bones"].items():
            out[name] = BoneGrid(name, arrays[name], np.asarray(e["origin_xyz_mm"], float), float(e["spacing_mm"]),
                                 float(meta["sdf_step_mm"]), np.asarray(e["bbox_xyz_mm"], float), e.get("measured"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpinectError(f"cannot read the phantom's bone data in {root} ({exc}); reinstall spinect or rebuild it "
                           "with scripts/build_anatomy_data.py") from exc
    return out


#: The 12 edges of a box, as index pairs into the corner list of :func:`clip_bounds`.
_BOX_EDGES = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]


def clip_bounds(lo: np.ndarray, hi: np.ndarray, point: np.ndarray, normal: np.ndarray, pad_mm: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned box round the part of the box ``[lo, hi]`` (body mm) on the kept side of a
    plane, ``(p - point) . normal <= pad_mm`` (the box itself if the plane misses it or leaves
    nothing: never an empty box)."""
    corners = np.array([[(lo, hi)[(c >> k) & 1][k] for k in range(3)] for c in range(8)], float)
    side = (corners - np.asarray(point, float)) @ np.asarray(normal, float) - pad_mm
    kept = [corners[side <= 0]]
    for a, b in _BOX_EDGES:
        if side[a] * side[b] < 0:  # the plane crosses this edge
            kept.append((corners[a] + side[a] / (side[a] - side[b]) * (corners[b] - corners[a]))[None])
    kept = np.concatenate(kept)
    if len(kept) == 0:
        return lo, hi
    return np.maximum(kept.min(axis=0), lo), np.minimum(kept.max(axis=0), hi)


@dataclass
class MeshPart(Part):
    """A structure whose shape is a placed bone grid (same interface as :class:`Part`).

    ``source_from_body`` (3, 4) maps body mm to the grid's source LPS mm (``[M | c]``);
    ``dist_scale`` converts source distances to (a lower bound of) body mm; ``planes`` keep only
    the half-spaces ``(p - point) . normal <= 0`` (body mm), e.g. S1 above the S1/S2 plane. A plane
    splits one bone between two codes, so its distance is steepened (``_PLANE_STEEP``): the sign
    stays exact but no cortical shell or partial-volume band is drawn along the cut. ``added``:
    bone united with the grid's shape (osteophytes), with a fillet of ``ADDED_FILLET_MM``.
    """

    grid: BoneGrid | None = None
    source_from_body: np.ndarray | None = None
    dist_scale: float = 1.0
    planes: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    added: list[Primitive] = field(default_factory=list)
    warp: "ArchWarp | None" = None

    def raw(self, name: str) -> "MeshPart":
        """The same shape without cutters (a cutter for other parts)."""
        return MeshPart(name, 0, [], grid=self.grid, source_from_body=self.source_from_body,
                        dist_scale=self.dist_scale, planes=list(self.planes), added=list(self.added), warp=self.warp)

    #: Bound on how much the signed distance can change per mm of displacement: the trilinear
    #: interpolant of distance samples changes by at most 1 per axis (sqrt 3 along a diagonal),
    #: times the largest per-axis scale (1.15), plus the int8 step.
    _WARP_LIPSCHITZ = 1.15 * 1.8

    def _apply_warp(self, coords: np.ndarray, d: np.ndarray) -> np.ndarray:
        """``d`` (body mm at grid indices ``coords`` (3, ...)) re-read at the warped indices where
        the warp can change it: within the displacement bound (times the Lipschitz bound, plus
        0.2 mm) of the surface (in place; returns ``d``). Elsewhere the sign cannot change."""
        if self.warp is None:
            return d
        flat = d.reshape(-1)
        near = np.flatnonzero(np.abs(flat) < np.float32(self._WARP_LIPSCHITZ * self.warp.max_mm + 0.2))
        if near.size:
            c = coords.reshape(3, -1)[:, near]
            keep = np.abs(flat[near]) < self._WARP_LIPSCHITZ * self.warp.bound_at(c) + np.float32(0.2)
            near, c = near[keep], c[:, keep]
            if near.size:
                flat[near] = self._interp(c + self.warp.displacement(c).astype(c.dtype))
        return d

    def _warp_body_box(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) body-coordinate AABB outside which the warp's displacement is 0 (there the warped
        distance is the distance), padded by 1 mm against rounding."""
        cached = self.__dict__.get("_warp_box")
        if cached is None:
            lo, hi = self.warp.active_index  # grid index (z, y, x)
            corners = np.array([[z, y, x] for z in (lo[0], hi[0]) for y in (lo[1], hi[1]) for x in (lo[2], hi[2])])
            a, a0 = self._index_map()
            body = (corners - a0) @ np.linalg.inv(a).T
            pad = 1.0  # (version 10; the distance band's width was added here too before)
            cached = (body.min(axis=0) - pad, body.max(axis=0) + pad)
            self.__dict__["_warp_box"] = cached
        return cached

    def _index_map(self) -> tuple[np.ndarray, np.ndarray]:
        """(A (3, 3), a0 (3,)): grid index (z, y, x) = A @ body + a0."""
        g = self.grid
        m, c = self.source_from_body[:, :3], self.source_from_body[:, 3]
        return (m / g.spacing_mm)[::-1], ((c - g.origin_xyz_mm) / g.spacing_mm)[::-1]

    def body_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        cached = self.__dict__.get("_mesh_bounds")
        if cached is None:
            lo, hi = self.grid.bbox_xyz_mm
            corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
            m, c = self.source_from_body[:, :3], self.source_from_body[:, 3]
            body = (corners - c) @ np.linalg.inv(m).T
            # a warped point x is bone only if x + W(x) is: within the largest displacement (source mm,
            # in body mm at most the inverse map's norm times it) of the unwarped shape's box
            # (phantom version 10; the distance band's Lipschitz factor was applied here too before)
            pad = _PAD_MM + (np.linalg.norm(np.linalg.inv(m), 2) * self.warp.max_mm if self.warp is not None else 0.0)
            lo, hi = body.min(axis=0) - pad, body.max(axis=0) + pad
            for prim in self.added:
                plo, phi = prim.body_bounds(_PAD_MM + ADDED_FILLET_MM)
                lo, hi = np.minimum(lo, plo), np.maximum(hi, phi)
            for point, normal in self.planes:  # e.g. one hip bone of the two-hip grid: half its box
                lo, hi = clip_bounds(lo, hi, point, normal, _PAD_MM)
            cached = (lo, hi)
            self.__dict__["_mesh_bounds"] = cached
        return cached

    def _add_bone_box(self, d: np.ndarray, box: GridBox) -> None:
        """Unite ``added`` with the distances ``d`` on ``box`` (in place)."""
        for prim in self.added:
            sub = box.sub(*prim.body_bounds(_PAD_MM + ADDED_FILLET_MM))
            if sub is not None:
                view = d[sub.slices_in(box)]
                view[...] = smooth_min(view, prim.local_sdf(*sub.local(prim)), ADDED_FILLET_MM)

    def _interp(self, coords: np.ndarray) -> np.ndarray:
        """Trilinear signed distance (body mm) at grid indices ``coords`` (3, ...)."""
        d = ndimage.map_coordinates(self.grid.values, coords, order=1, mode="constant", cval=127.0, output=np.float32)
        d *= np.float32(self.grid.step_mm * self.dist_scale)
        return d

    def sdf_box(self, box: GridBox) -> np.ndarray:
        """Signed distance (mm, float32) on the voxel centres of ``box``."""
        cached = self.__dict__.get("_grid_cache")
        if cached is not None:
            cbox, values = cached
            if np.all(box.lo >= cbox.lo) and np.all(box.hi <= cbox.hi):
                return values[box.slices_in(cbox)].copy()
        a, a0 = self._index_map()
        idx = [np.arange(lo, hi, dtype=np.float64) for lo, hi in zip(box.lo, box.hi)]
        coords = np.empty((3,) + box.shape, np.float32)
        for r in range(3):
            coef = box.step @ a[r]  # d(grid index r) / d(box index z, y, x)
            off = float(a[r] @ box.origin + a0[r])
            coords[r] = ((coef[1] * idx[1])[:, None] + (coef[2] * idx[2])[None, :])[None].astype(np.float32)
            coords[r] += (coef[0] * idx[0] + off).astype(np.float32)[:, None, None]
        d = self._interp(coords)
        if self.warp is not None:  # only where the displacement is not 0
            sub = box.sub(*self._warp_body_box())
            if sub is not None:
                inner = sub.slices_in(box)
                d[inner] = self._apply_warp(np.ascontiguousarray(coords[(slice(None), *inner)]),
                                            np.ascontiguousarray(d[inner]))
        del coords
        self._add_bone_box(d, box)
        for point, normal in self.planes:
            coef = box.step @ normal * _PLANE_STEEP
            off = float(normal @ (box.origin - point)) * _PLANE_STEEP
            plane = ((coef[1] * idx[1])[:, None] + (coef[2] * idx[2])[None, :])[None].astype(np.float32)
            plane = plane + (coef[0] * idx[0] + off).astype(np.float32)[:, None, None]
            np.maximum(d, plane, out=d)
        return self._carve(d, box)

    def sdf_points(self, points: np.ndarray, *, cut: bool = True) -> np.ndarray:
        """Signed distance (mm, float64) at (N, 3) body points (``cut=False``: before carving)."""
        points = np.asarray(points, float).reshape(-1, 3)
        a, a0 = self._index_map()
        coords = (points @ a.T + a0).T
        d = self._interp(coords)
        if self.warp is not None:  # only where the displacement is not 0
            lo, hi = self._warp_body_box()
            inside = np.flatnonzero(np.all((points >= lo) & (points <= hi), axis=1))
            if inside.size:
                d[inside] = self._apply_warp(np.ascontiguousarray(coords[:, inside]), d[inside])
        d = d.astype(np.float64)
        for prim in self.added:
            d = smooth_min(d, prim.sdf_points(points), ADDED_FILLET_MM)
        for point, normal in self.planes:
            d = np.maximum(d, _PLANE_STEEP * ((points - point) @ normal))
        for cutter, margin in self.cutters if cut else ():
            lo, hi = cutter.body_bounds()
            idx = np.flatnonzero(np.all((points >= lo) & (points <= hi), axis=1))
            if idx.size:
                d[idx] = np.maximum(d[idx], margin - cutter.sdf_points(points[idx]))
        return d


@dataclass(frozen=True)
class MeshVertebraParams(VertebraParams):
    """Vertebra parameters fitted to a mesh, plus what the primitive formulas cannot give.

    Attributes:
        ped_mid: per side (lateral (unsigned), posterior, cranial) pedicle centre in the frame, mm.
        sap_face: per side (lateral (signed), posterior, cranial) centre of the SAP's anterior face.
        sap_normal: per side unit outward normal of that face (frame axes).
        sap_centroid: per side centroid of the SAP above the endplate (frame mm).
        source: the bone grid's name; scale: (lateral, posterior, cranial) scale from the source.
    """

    ped_mid: dict | None = None
    sap_face: dict | None = None
    sap_normal: dict | None = None
    sap_centroid: dict | None = None
    source: str = ""
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)


def _mesh_vertebra(measured: dict, scale: np.ndarray, base: VertebraParams, source: str) -> MeshVertebraParams:
    """Vertebra parameters from a measured source bone scaled by (lateral, posterior, cranial)."""
    sx, sy, sz = (float(v) for v in scale)
    sides = measured["sides"]

    def scaled(v):
        x, y, z = v
        return (float(x * sx), float(y * sy), float(z * sz))

    def normal(v):
        n = np.asarray(v, float) / np.asarray(scale, float)  # normals transform with the inverse
        return tuple(float(x) for x in n / np.linalg.norm(n))

    ped = {s: sides[s]["pedicle"] for s in SIDES}
    return MeshVertebraParams(
        a=float(measured["a"] * sx), b=float(measured["b"] * sy), h_post=float(measured["h_post"] * sz),
        h_ant=float(measured["h_ant"] * sz), ped_w={s: float(ped[s]["width"] * sx) for s in SIDES},
        ped_h=float(np.mean([ped[s]["height"] for s in SIDES]) * sz),
        ped_angle=float(np.mean([ped[s]["angle_deg"] for s in SIDES])), canal_half=float(measured["canal_half"] * sx),
        tp_len=base.tp_len, sp_len=base.sp_len, facet_angle=dict(base.facet_angle),
        ped_mid={s: scaled(ped[s]["mid"]) for s in SIDES}, sap_face={s: scaled(sides[s]["sap_face"]) for s in SIDES},
        sap_normal={s: normal(sides[s]["sap_normal"]) for s in SIDES},
        sap_centroid={s: scaled(sides[s]["sap_centroid"]) for s in SIDES}, source=source,
        scale=(sx, sy, sz),
    )


def _dura_axes(measured: dict, scale: np.ndarray, default: tuple[float, float]) -> tuple[float, float]:
    """Dural sac semi-axes (lateral, AP) that fit the measured canal: 1.5 mm from the pedicles'
    medial walls, 1.5 mm anterior epidural space and 1 mm behind."""
    lat = min(default[0], measured["canal_half"] * scale[0] - 1.5)
    depth = measured["canal_depth"] * scale[1]
    ap = min(default[1], 0.5 * (depth - 2.5)) if depth >= 8.0 else default[1]  # < 8 mm: not a measured canal (S1)
    return float(max(lat, 3.0)), float(max(ap, 2.5))


def sample_mesh_params(rng: np.random.Generator, *, degeneration: bool | None = None,
                       library: dict[str, BoneGrid] | None = None) -> PhantomParams:
    """Draw one mesh phantom: the primitive parameters (roots, discs, pose, body...), then a source
    and scale per level and for the pelvis, with the vertebrae fitted to the chosen meshes.

    Degeneration keeps disc height loss, bulge and the posterolateral osteophyte (added to the
    placed bone by :mod:`spinect.phantom.osteophytes`); SAP hypertrophy is not modelled on meshes
    (set to 0): it would move the SAP face the Kambin triangle is measured from.
    """
    from spinect.phantom.nerves import DURA_SEMI_AXES

    lib = load_library() if library is None else library
    base = sample_params(rng, degeneration=degeneration)
    degen = base.degeneration
    if degen is not None:
        degen = replace(degen, sap_hypertrophy_mm=0.0)
    case_scale = float(rng.uniform(0.92, 1.08))
    sources, scales = {}, {}
    for name in _LUMBAR:
        options = [k for k in (f"vhm__{name}", f"mean__{name}") if k in lib]
        sources[name] = options[int(rng.integers(len(options)))]
        scales[name] = case_scale * (1.0 + rng.uniform(-0.04, 0.04, 3))
    pelvises = sorted(k.split("__")[0] for k in lib if k.endswith("__sacrum"))
    pelvis = pelvises[int(rng.integers(len(pelvises)))]
    sources["S1"] = f"{pelvis}__sacrum"
    scales["S1"] = np.full(3, case_scale * (1.0 + rng.uniform(-0.03, 0.03)))
    vertebrae, dura = {}, {}
    for name in VERTEBRA_NAMES:
        grid = lib.get(sources[name])
        if grid is None or grid.measured is None:
            raise SpinectError(f"the phantom's bone data lacks {sources[name]}; rebuild it with scripts/build_anatomy_data.py")
        vertebrae[name] = _mesh_vertebra(grid.measured, scales[name], base.vertebrae[name], sources[name])
        dura[name] = _dura_axes(grid.measured, scales[name], tuple(v * base.dura_scale for v in DURA_SEMI_AXES[name]))
    extras = dict(base.extras)
    axial = {name: float(rng.uniform(-3.0, 3.0)) for name in _LUMBAR}  # axial rotation per level
    extras.update(anatomy="mesh", pelvis=pelvis, mesh_sources=sources, axial_rotation_deg=axial,
                  mesh_scales={k: [round(float(x), 6) for x in v] for k, v in scales.items()},
                  dura_semi_axes={k: list(v) for k, v in dura.items()})
    return replace(base, vertebrae=vertebrae, degeneration=degen, extras=extras)


def rotate_axially(frame: VertebraFrame, angle_deg: float) -> VertebraFrame:
    """``frame`` turned by ``angle_deg`` about its cranial axis through its centre (axial rotation
    of a level; endplates turn with it)."""
    t = np.radians(angle_deg)
    k = frame.axes[2]
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    rot = np.eye(3) + np.sin(t) * kx + (1.0 - np.cos(t)) * kx @ kx  # Rodrigues

    def plate(p):
        return replace(p, centre=frame.centre + rot @ (p.centre - frame.centre), normal=rot @ p.normal)

    return replace(frame, axes=frame.axes @ rot.T, inferior=plate(frame.inferior), superior=plate(frame.superior))


def mesh_placement(frame: VertebraFrame, measured: dict, scale) -> tuple[np.ndarray, float]:
    """([M | c] (3, 4) body -> source LPS, distance scale) of a bone measured in its local frame and
    placed on ``frame`` with (lateral, posterior, cranial) ``scale``."""
    s = np.asarray(scale, float)
    axes_src = np.asarray(measured["axes"], float)
    origin_src = np.asarray(measured["origin_xyz_mm"], float)
    m = axes_src.T @ np.diag(1.0 / s) @ frame.axes
    c = origin_src - m @ frame.centre
    return np.concatenate([m, c[:, None]], axis=1), float(s.min())
