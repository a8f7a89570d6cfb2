"""Automatic Kambin triangle vertices from a level map (one code per vertebra and root segment).

Mode (3) of triangles-research.md §3.3, following the phantom's construction (docs/phantom.md).
The voxels locate the structures; the vertices are placed on sub-voxel surfaces
(:mod:`spinect.geometry.distance`), since a voxel centre lies up to half a voxel inside its
structure and those offsets lengthen the triangle's edges. At level U/L (e.g. L5/S1), one side:

* the endplate frame: the cranially facing surface of L (:mod:`spinect.geometry.endplate`);
* the superior articular process (SAP): L's voxels more than ``SAP_MIN_HEIGHT_MM`` above the
  endplate plane on that side; its foraminal face = the flat patch of L's sub-voxel surface by its
  voxels farthest antero-laterally (45°) whose normals face the foramen; the face line runs
  through the patch's centre along the cranial axis (the endplate normal turned into the face);
* B: the face line meets the endplate plane;
* A: the exiting root's (U's) point nearest the face line, above the endplate: the point of
  closest approach of its fitted centreline plus its radius towards the line;
* C: where the exiting root's lower border (fitted centreline − radius × endplate normal) reaches
  the endplate plane, or its lowest voxel dropped onto the plane.

The safe triangle is not automated: its "lateral border of the vertebral body" is a fluoroscopic
outline that depends on the view; place its three vertices instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from spinect.errors import InputError
from spinect.geometry.endplate import endplate_frame_from_structures
from spinect.geometry.frame import EndplateFrame, side_sign

if TYPE_CHECKING:
    import SimpleITK as sitk

__all__ = ["auto_landmarks", "kambin_landmarks", "SAP_MIN_HEIGHT_MM", "FACE_TURN_DEG"]

#: SAP voxels are at least this far above the lower vertebra's superior endplate plane.
SAP_MIN_HEIGHT_MM = 3.0
_FACE_FRACTION = 0.2  # the fifth of each SAP height band nearest the foramen is its face
#: The foramen lies antero-laterally of the SAP: its face is sought along anterior turned this far.
FACE_TURN_DEG = 45.0
_FACE_CONE_DEG = 40.0  # face surface: outward normal within this of the antero-lateral direction
_FLAT_DEG = 15.0  # ... and within this of the face's mean normal (its flat part, not the rounded rim)
_CENTRELINE_REACH_MM = 6.0  # root voxels this close to its point nearest the face line give the local centreline
_CENTRELINE_WIDTH_MM = 6.0  # ... and within this of its axis (a root is 4-6 mm wide)
_RING_MM = 4.0  # surface vertices this close to the centreline point give the root's local radius


def auto_landmarks(structures: sitk.Image, *, level: str, side: str, triangle: str = "kambin") -> np.ndarray:
    """Vertices A, B, C (3, 3) LPS mm of a triangle found from a level map (codes of docs/phantom.md).

    Raises:
        InputError: safe triangle requested, or a needed structure is missing.
    """
    import SimpleITK as sitk

    from spinect.geometry.triangles import LEVELS
    from spinect.phantom.structures import STRUCTURE_CODES, root_code

    if triangle != "kambin":
        raise InputError("automatic vertices exist for the Kambin triangle only; place the safe triangle's three points")
    upper, lower, exiting, _ = LEVELS[level]
    array = sitk.GetArrayViewFromImage(structures)
    affine = _index_to_lps(structures)
    frame = endplate_frame_from_structures(array, affine, STRUCTURE_CODES[lower])
    root = np.asarray(array) == root_code(exiting, side, "exiting")
    vertebra = np.asarray(array) == STRUCTURE_CODES[lower]
    return kambin_landmarks(vertebra, root, affine, frame, side)


def kambin_landmarks(
    lower_vertebra_zyx: np.ndarray,
    exiting_root_zyx: np.ndarray,
    index_to_lps: np.ndarray,
    frame: EndplateFrame,
    side: str,
) -> np.ndarray:
    """Kambin vertices A, B, C (rows, LPS mm) from the lower vertebra and exiting root masks.

    The voxels locate the SAP's foraminal face and the root; the vertices are then placed on
    sub-voxel surfaces (:mod:`spinect.geometry.distance`), because a voxel centre lies up to half
    a voxel inside its structure and every such offset lengthens the triangle's edges:

    * B: the face line lies on the SAP's face (a plane fitted to its sub-voxel surface), and runs
      along the cranial axis (the endplate normal turned into the face plane);
    * A: the point of the root's sub-voxel surface nearest that line;
    * C: where the fitted centreline, lowered by the root's radius, reaches the endplate plane
      (:func:`lower_border_crossing`).

    Args:
        lower_vertebra_zyx: (Z, Y, X) bool mask of the lower vertebra (S1 at L5/S1).
        exiting_root_zyx: (Z, Y, X) bool mask of the exiting root (L5 at L5/S1), its exiting part.
        index_to_lps: (4, 4) voxel index (x, y, z) → LPS mm.
        frame: the lower vertebra's endplate frame.
        side: ``"left"`` or ``"right"``.
    """
    s = side_sign(side)
    vert = _points(lower_vertebra_zyx, index_to_lps)
    rel = vert - frame.centre_lps_mm
    sap = vert[(rel @ frame.normal > SAP_MIN_HEIGHT_MM) & (s * (rel @ frame.left) > 0)]
    if len(sap) < 10:
        raise InputError(f"no superior articular process found on the {side} (level map too small or cropped)")
    root = _points(exiting_root_zyx, index_to_lps)
    if len(root) < 10:
        raise InputError(f"the exiting root on the {side} is missing from the level map")
    face = _face_voxels(sap, frame, s)
    bone = LocalSurface.of(lower_vertebra_zyx, index_to_lps, face, margin_mm=6.0)
    f0, up = _face_line(bone, face, frame, s)
    b = f0 + up * float(frame.normal @ (frame.centre_lps_mm - f0)) / float(frame.normal @ up)
    nerve = LocalSurface.of(exiting_root_zyx, index_to_lps, root, margin_mm=4.0)
    a = _nearest_to_line(nerve, root, f0, up, frame)
    c = lower_border_crossing(nerve, root, a, frame)
    return np.array([a, b, c])


class LocalSurface:
    """Sub-voxel surface of one mask inside a box: vertices, outward normals and signed distance.

    Attributes:
        vertices_lps_mm: (N, 3) iso-surface vertices (:func:`subvoxel_surface_mm`), LPS mm.
        normals_lps: (N, 3) outward unit normals (LPS).
        sdf_mm: (z, y, x) float32 signed distance to that surface in the box (negative inside).
        index_to_lps: (4, 4) affine of the box (voxel index (x, y, z) → LPS mm).
    """

    def __init__(self, vertices, normals, sdf, index_to_lps) -> None:
        self.vertices_lps_mm, self.normals_lps, self.sdf_mm, self.index_to_lps = vertices, normals, sdf, index_to_lps
        self._to_index = np.linalg.inv(index_to_lps)

    @classmethod
    def of(cls, mask_zyx: np.ndarray, index_to_lps: np.ndarray, around_lps_mm: np.ndarray, *, margin_mm: float):
        """The surface of ``mask_zyx`` in the box around (K, 3) LPS points plus ``margin_mm``."""
        from spinect.geometry.distance import mask_box, subvoxel_signed_distance_mm, surface_lps_mm

        box, affine, spacing = mask_box(mask_zyx, index_to_lps, around_lps_mm, margin_mm)
        sdf, _ = subvoxel_signed_distance_mm(box, tuple(spacing))
        return cls(*surface_lps_mm(box, affine), sdf, affine)

    def sdf_at(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """(N,) trilinear signed distance (mm) at (N, 3) points; far (+1000) outside the box."""
        from scipy import ndimage

        pts = np.asarray(points_lps_mm, float).reshape(-1, 3)
        idx = (pts @ self._to_index[:3, :3].T + self._to_index[:3, 3])[:, ::-1].T
        shape = np.array(self.sdf_mm.shape)[:, None]
        inside = np.all((idx >= 0) & (idx <= shape - 1), axis=0)
        values = ndimage.map_coordinates(self.sdf_mm, idx, order=1, mode="nearest")
        return np.where(inside, values, 1.0e3)

    def project(self, points_lps_mm: np.ndarray, iterations: int = 4, step_mm: float = 0.25) -> np.ndarray:
        """(N, 3) points moved onto the 0-level along the distance gradient (Newton steps)."""
        p = np.asarray(points_lps_mm, float).reshape(-1, 3).copy()
        eye = np.eye(3) * step_mm
        for _ in range(iterations):
            grad = np.stack([self.sdf_at(p + e) - self.sdf_at(p - e) for e in eye], axis=1) / (2 * step_mm)
            grad /= np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-9)
            p -= self.sdf_at(p)[:, None] * grad
        return p


def _face_voxels(sap: np.ndarray, frame: EndplateFrame, side_s: int) -> np.ndarray:
    """Voxels of the SAP's foraminal face: in each 2 mm height band, its fifth farthest towards the
    foramen, i.e. along the anterior axis turned ``FACE_TURN_DEG`` laterally (the facet faces
    antero-laterally; straight anterior picks its medial edge)."""
    heights = (sap - frame.centre_lps_mm) @ frame.normal
    forward = (sap - frame.centre_lps_mm) @ _towards(frame, side_s)
    face = []
    for lo in np.arange(heights.min(), heights.max(), 2.0):
        band = (heights >= lo) & (heights < lo + 2.0)
        if band.sum() >= 3:
            cut = np.quantile(forward[band], 1.0 - _FACE_FRACTION)
            face.append(sap[band & (forward >= cut)])
    return np.concatenate(face) if face else sap


def _towards(frame: EndplateFrame, side_s: int) -> np.ndarray:
    turn = np.radians(FACE_TURN_DEG)
    return np.cos(turn) * frame.anterior + side_s * np.sin(turn) * frame.left


def _face_line(
    bone: LocalSurface, face_voxels: np.ndarray, frame: EndplateFrame, side_s: int
) -> tuple[np.ndarray, np.ndarray]:
    """Centre (3,) and cranial axis (3,) of the SAP's foraminal face, on its sub-voxel surface.

    The face is the flat part of the bone surface by the face voxels whose outward normal faces
    the foramen (within ``_FACE_CONE_DEG`` of antero-lateral, then within ``_FLAT_DEG`` of the
    patch's mean normal); its centre is the centroid of that patch on the fitted plane. The
    cranial axis is the endplate normal turned into the face plane (the face contains the SAP's
    cranial axis). Falls back to the voxel centroid and the endplate normal when no patch is found.
    """
    from scipy import spatial

    centre, up = face_voxels.mean(axis=0), frame.normal
    verts, normals = bone.vertices_lps_mm, bone.normals_lps
    if len(verts) == 0:
        return centre, up
    voxel = float(np.max(np.linalg.norm(bone.index_to_lps[:3, :3], axis=0)))
    near, _ = spatial.cKDTree(face_voxels).query(verts, distance_upper_bound=1.5 * voxel)
    height = (verts - frame.centre_lps_mm) @ frame.normal
    keep = np.isfinite(near) & (height > SAP_MIN_HEIGHT_MM)
    keep &= normals @ _towards(frame, side_s) >= np.cos(np.radians(_FACE_CONE_DEG))
    if keep.sum() < 10:
        return centre, up
    normal = normals[keep].mean(axis=0)
    for _ in range(2):
        normal /= np.linalg.norm(normal)
        flat = keep & (normals @ normal >= np.cos(np.radians(_FLAT_DEG)))
        if flat.sum() < 5:
            return centre, up
        normal = normals[flat].mean(axis=0)
    normal /= np.linalg.norm(normal)
    patch = verts[flat]
    centre = patch.mean(axis=0)
    centre = centre - normal * float(np.median((patch - centre) @ normal))
    up = frame.normal - (frame.normal @ normal) * normal
    return centre, up / np.linalg.norm(up)


def _nearest_to_line(
    nerve: LocalSurface, root: np.ndarray, origin: np.ndarray, direction: np.ndarray, frame: EndplateFrame
) -> np.ndarray:
    """A: the root's point nearest the face line, above the endplate (3,), as the definition
    builds it: the centreline point of closest approach plus the radius towards the line.

    Where the root runs nearly parallel to the line its distance to it changes by hundredths of a
    millimetre over millimetres, so the nearest surface vertex wanders along the root with the
    surface's noise. The centreline is therefore fitted (:func:`_local_centreline`) around the
    nearest voxel, the closest approach is found on that smooth curve, and the radius is the mean
    distance of the sub-voxel surface there. Falls back to the root voxel nearest the line.
    """
    heights = (root - frame.centre_lps_mm) @ frame.normal
    pool = root[heights > 0] if np.any(heights > 0) else root
    nearest = pool[np.argmin(_distance_to_line(pool, origin, direction))]
    fit = _local_centreline(root, nearest)
    if fit is None or len(nerve.vertices_lps_mm) == 0:
        return nearest
    curve, _ = fit
    above = curve[(curve - frame.centre_lps_mm) @ frame.normal > 0]
    if len(above) == 0:
        return nearest
    distance = _distance_to_line(above, origin, direction)
    k = int(np.argmin(distance))
    centre = above[k]
    radius = _root_radius(nerve.vertices_lps_mm, curve, centre)
    if radius is None:
        return nearest
    foot = origin + float((centre - origin) @ direction) * direction
    return centre + radius * (foot - centre) / max(distance[k], 1e-9)


def _local_centreline(root: np.ndarray, around: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Centreline (M, 3) of the root within ``_CENTRELINE_REACH_MM`` (along it) of a point, sampled
    every 0.05 mm, and its unit direction (3,).

    The principal axis of the root voxels within that distance gives the local direction s; the
    voxels in a slab |s| ≤ reach around the point (cut square to the axis, so both ends are
    balanced) and within ``_CENTRELINE_WIDTH_MM`` of it are then fitted: their mean position across
    the root is a quadratic in s (a tube's voxels fill its cross-section evenly, so the fit follows
    the axis and its bend to a fraction of a voxel). None for fewer than 20 voxels.
    """
    local = root[np.linalg.norm(root - around, axis=1) <= _CENTRELINE_REACH_MM]
    if len(local) < 20:
        return None
    for _ in range(2):
        mean = local.mean(axis=0)
        _, _, vt = np.linalg.svd(local - mean, full_matrices=False)
        axis = vt[0]
        centre = mean + float((around - mean) @ axis) * axis
        rel = root - centre
        s = rel @ axis
        width = np.linalg.norm(rel - s[:, None] * axis, axis=1)
        slab = root[(np.abs(s) <= _CENTRELINE_REACH_MM) & (width <= _CENTRELINE_WIDTH_MM)]
        if len(slab) < 20:
            return None
        local = slab
    mean = local.mean(axis=0)
    across = vt[1:]
    s = (local - mean) @ axis
    design = np.stack([np.ones_like(s), s, s**2], axis=1)
    coeffs, *_ = np.linalg.lstsq(design, (local - mean) @ across.T, rcond=None)  # (3, 2)
    grid = np.arange(s.min(), s.max(), 0.05)
    offsets = np.stack([np.ones_like(grid), grid, grid**2], axis=1) @ coeffs
    return mean + grid[:, None] * axis + offsets @ across, axis


def _root_radius(verts: np.ndarray, curve: np.ndarray, centre: np.ndarray) -> float | None:
    """Mean distance (mm) from the centreline of the surface vertices within ``_RING_MM`` of a
    centreline point, counting only those whose foot lies inside the fitted stretch (beyond its
    ends the distance to the last sample is not the radius). None for fewer than 10 vertices."""
    from scipy import spatial

    ring = verts[np.linalg.norm(verts - centre, axis=1) <= _RING_MM]
    if len(ring) == 0:
        return None
    distance, index = spatial.cKDTree(curve).query(ring)
    inner = (index > 0) & (index < len(curve) - 1)
    return float(np.mean(distance[inner])) if inner.sum() >= 10 else None


def lower_border_crossing(nerve: LocalSurface, root: np.ndarray, a: np.ndarray, frame: EndplateFrame) -> np.ndarray:
    """C: where the exiting root's lower border (centreline − radius × endplate normal) reaches the
    endplate plane, first along the root from A; LPS mm (3,).

    The centreline is fitted to the root voxels around its voxels at the plane nearest A
    (:func:`_local_centreline`, refitted once around the crossing), the radius is the mean distance
    of the sub-voxel surface from it, and the crossing is interpolated between curve samples. A
    root that does not reach the plane gives its lowest voxel dropped onto it; a fit that does not
    cross gives the plane's root voxel nearest A.
    """
    o, n = frame.centre_lps_mm, frame.normal
    heights = (root - o) @ n
    voxel = float(np.max(np.linalg.norm(nerve.index_to_lps[:3, :3], axis=0)))
    low = root[np.abs(heights) <= voxel]
    if len(low) == 0:
        c = root[np.argmin(heights)]
        return c - n * float((c - o) @ n)
    around = low[np.argmin(np.linalg.norm(low - a, axis=1))]
    fallback = around - n * float((around - o) @ n)
    crossing = None
    for _ in range(2):
        fit = _local_centreline(root, around)
        if fit is None or len(nerve.vertices_lps_mm) == 0:
            return fallback
        curve, _ = fit
        if (curve[0] - curve[-1]) @ n < 0:
            curve = curve[::-1]  # run down from A's side
        radius = _root_radius(nerve.vertices_lps_mm, curve, around)
        if radius is None:
            return fallback
        border = (curve - o) @ n - radius
        k = np.flatnonzero((border[:-1] > 0) & (border[1:] <= 0))
        if k.size == 0:
            return fallback
        k = int(k[0])
        w = border[k] / (border[k] - border[k + 1])
        point = (1 - w) * curve[k] + w * curve[k + 1]
        crossing = point - radius * n
        around = point
    return crossing - n * float((crossing - o) @ n)


def _distance_to_line(points: np.ndarray, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
    rel = points - origin
    return np.linalg.norm(rel - (rel @ direction)[:, None] * direction, axis=1)


def _points(mask_zyx: np.ndarray, index_to_lps: np.ndarray) -> np.ndarray:
    idx = np.argwhere(np.asarray(mask_zyx, bool))
    return idx[:, ::-1] @ index_to_lps[:3, :3].T + index_to_lps[:3, 3]


def _index_to_lps(image: sitk.Image) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return affine
