"""Automatic Kambin triangle vertices from a level map (one code per vertebra and root segment).

Mode (3) of triangles-research.md §3.3, following the phantom's construction (docs/phantom.md)
on voxels instead of implicit surfaces. At level U/L (e.g. L5/S1), on one side:

* the endplate frame: the cranially facing surface of L (:mod:`spinect.geometry.endplate`);
* the superior articular process (SAP): L's voxels more than ``SAP_MIN_HEIGHT_MM`` above the
  endplate plane on that side; its foraminal face = its voxels farthest antero-laterally (45°),
  whose centroid and cranial principal axis give the face line;
* B: the face line meets the endplate plane;
* A: the exiting root's (U's) surface voxel nearest the face line, above the endplate;
* C: where the exiting root's lower border reaches the endplate plane (the root voxel within half
  a voxel of the plane nearest to A along the root), or its lowest point dropped onto the plane.

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

    Args:
        lower_vertebra_zyx: (Z, Y, X) bool mask of the lower vertebra (S1 at L5/S1).
        exiting_root_zyx: (Z, Y, X) bool mask of the exiting root (L5 at L5/S1), its exiting part.
        index_to_lps: (4, 4) voxel index (x, y, z) → LPS mm.
        frame: the lower vertebra's endplate frame.
        side: ``"left"`` or ``"right"``.
    """
    s = side_sign(side)
    voxel = float(np.max(np.linalg.norm(index_to_lps[:3, :3], axis=0)))
    vert = _points(lower_vertebra_zyx, index_to_lps)
    rel = vert - frame.centre_lps_mm
    sap = vert[(rel @ frame.normal > SAP_MIN_HEIGHT_MM) & (s * (rel @ frame.left) > 0)]
    if len(sap) < 10:
        raise InputError(f"no superior articular process found on the {side} (level map too small or cropped)")
    f0, up = _face_line(sap, frame, s)
    b = f0 + up * float(frame.normal @ (frame.centre_lps_mm - f0)) / float(frame.normal @ up)
    root = _points(exiting_root_zyx, index_to_lps)
    if len(root) < 10:
        raise InputError(f"the exiting root on the {side} is missing from the level map")
    height = (root - frame.centre_lps_mm) @ frame.normal
    above = root[height > 0]
    near = above[np.argmin(_distance_to_line(above, f0, up))]
    low = root[np.abs(height) <= 0.5 * voxel]
    if len(low):
        c = low[np.argmin(np.linalg.norm(low - near, axis=1))]
    else:
        c = root[np.argmin(height)]
    c = c - frame.normal * float((c - frame.centre_lps_mm) @ frame.normal)
    return np.array([near, b, c])


def _face_line(sap: np.ndarray, frame: EndplateFrame, side_s: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroid and cranial axis of the SAP's foraminal face: its voxels farthest towards the
    foramen, i.e. along the anterior axis turned ``FACE_TURN_DEG`` laterally (the facet faces
    antero-laterally; straight anterior picks its medial edge)."""
    heights = (sap - frame.centre_lps_mm) @ frame.normal
    turn = np.radians(FACE_TURN_DEG)
    towards = np.cos(turn) * frame.anterior + side_s * np.sin(turn) * frame.left
    forward = (sap - frame.centre_lps_mm) @ towards
    face = []
    for lo in np.arange(heights.min(), heights.max(), 2.0):
        band = (heights >= lo) & (heights < lo + 2.0)
        if band.sum() >= 3:
            cut = np.quantile(forward[band], 1.0 - _FACE_FRACTION)
            face.append(sap[band & (forward >= cut)])
    face = np.concatenate(face) if face else sap
    centre = face.mean(axis=0)
    _, _, vt = np.linalg.svd(face - centre, full_matrices=False)
    up = vt[0] if vt[0] @ frame.normal >= 0 else -vt[0]
    if up @ frame.normal < 0.5:  # a squat face: fall back to the endplate normal
        up = frame.normal
    return centre, up / np.linalg.norm(up)


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
