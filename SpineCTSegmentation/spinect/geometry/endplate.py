"""Find the lower vertebra's superior endplate from labels: the frame every view is built on.

Two sources:

* :func:`endplate_frame_near`: a bone/nerve label map only (0/1/2): the cranially facing bone
  surface within a radius of a hint point on the endplate (e.g. the midpoint of the triangle's
  base B–C, or a click), fitted by RANSAC.
* :func:`endplate_frame_from_structures`: a level map (one code per vertebra): the cranially facing
  surface of the lower vertebra, fitted by RANSAC (the endplate is its largest flat part).
"""

from __future__ import annotations

import numpy as np

from spinect.errors import InputError
from spinect.geometry.frame import EndplateFrame, fit_plane, frame_from_endplate_points, frame_from_plane
from spinect.geometry.projection import ObstacleFields

__all__ = [
    "cranial_surface_points", "endplate_frame_near", "endplate_frame_from_clicks",
    "endplate_frame_from_structures", "MAX_TILT_DEG",
]

#: Surfaces whose outward normal is within this angle of the superior axis count as "facing up".
MAX_TILT_DEG = 40.0
#: Cranially facing points farther than this from the vertebra's midline (LPS x) are not endplate.
BODY_HALF_WIDTH_MM = 22.0
#: Widest tilt of a lower vertebra's endplate normal from +S that the level-map fit accepts.
STEEP_TILT_DEG = 70.0
_SUPERIOR = np.array([0.0, 0.0, 1.0])
_FLAT_DEG = 12.0  # sub-voxel endplate: surface normals within this of the plane's (not the rim)


def cranial_surface_points(
    mask_zyx: np.ndarray,
    index_to_lps: np.ndarray,
    *,
    max_tilt_deg: float = MAX_TILT_DEG,
    return_normals: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """LPS centres of mask voxels on a cranially facing surface.

    A voxel counts when it is in the mask, a neighbour a little above it (in world +S) is not, and
    the local outward normal (minus the gradient of the smoothed mask) is within
    ``max_tilt_deg`` of +S.

    Args:
        mask_zyx: (Z, Y, X) bool mask.
        index_to_lps: (4, 4) voxel index (x, y, z) → LPS mm affine.
        max_tilt_deg: largest angle between the outward normal and +S.
        return_normals: also return the (N, 3) unit outward normals.

    Returns:
        (N, 3) LPS mm points (and their normals).
    """
    from scipy import ndimage

    mask = np.asarray(mask_zyx, bool)
    if not mask.any():
        return (np.zeros((0, 3)), np.zeros((0, 3))) if return_normals else np.zeros((0, 3))
    # work on the mask's box with a margin wider than the blur's reach (4 sigma) plus the gradient's
    # step, so every value used is the whole array's (one vertebra of a level map is a small part)
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    box = tuple(slice(max(b.start - 6, 0), min(b.stop + 6, n)) for b, n in zip(box, mask.shape))
    offset = np.array([b.start for b in box])
    mask = mask[box]
    smooth = ndimage.gaussian_filter(mask.astype(np.float32), 1.0)
    grad_zyx = np.stack(np.gradient(smooth), axis=-1)
    border = mask & ~ndimage.binary_erosion(mask)
    idx = np.argwhere(border)
    g = grad_zyx[tuple(idx.T)]  # d/d(index z, y, x)
    # world gradient: chain rule through the affine (x, y, z) order
    linear = index_to_lps[:3, :3]
    g_world = g[:, ::-1] @ np.linalg.inv(linear)
    outward = -g_world / np.maximum(np.linalg.norm(g_world, axis=1, keepdims=True), 1e-12)
    keep = outward @ _SUPERIOR >= np.cos(np.radians(max_tilt_deg))
    points = (idx[keep] + offset)[:, ::-1] @ linear.T + index_to_lps[:3, 3]
    return (points, outward[keep]) if return_normals else points


def endplate_frame_near(
    fields: ObstacleFields,
    labels_zyx: np.ndarray,
    hint_lps_mm: np.ndarray,
    *,
    radius_mm: float = 12.0,
    bone_label: int = 1,
) -> EndplateFrame:
    """Endplate frame from a 0/1/2 label map, near a point on the endplate.

    Args:
        fields: the obstacle fields (their grid geometry is used).
        labels_zyx: (Z, Y, X) labels on the fields' grid.
        hint_lps_mm: (3,) a point on (or within a few mm of) the endplate.
        radius_mm: cranially facing bone surface within this distance of the hint is fitted.
        bone_label: the bone label value.

    Raises:
        InputError: too few cranially facing bone points near the hint.
    """
    hint = np.asarray(hint_lps_mm, float)
    points = cranial_surface_points(np.asarray(labels_zyx) == bone_label, fields.index_to_lps)
    points = points[np.linalg.norm(points - hint, axis=1) <= radius_mm]
    if len(points) < 10:
        raise InputError(
            f"found only {len(points)} cranially facing bone surface voxels within {radius_mm:g} mm of "
            f"{np.round(hint, 1).tolist()} (LPS mm); place the point on the lower vertebra's superior endplate"
        )
    frame = frame_from_endplate_points(points)
    # keep the hint's position on the plane as the centre: the local fit is only trusted near it
    centre = hint - ((hint - frame.centre_lps_mm) @ frame.normal) * frame.normal
    return EndplateFrame(centre, frame.normal, frame.left, frame.anterior)


#: The endplate is looked for within this distance (mm) of the clicks.
ENDPLATE_REACH_MM = 35.0
#: It is then grown over the whole endplate in passes reaching this far (mm) from the start.
GROWTH_REACH_MM = (20.0, 35.0, 50.0)


def endplate_frame_from_clicks(
    fields: ObstacleFields,
    labels_zyx: np.ndarray,
    triangle_lps_mm: np.ndarray,
    *,
    triangle: str = "kambin",
    bone_label: int = 1,
    band_mm: float = 2.0,
    min_support: int = 20,
    surfaces: dict | None = None,
) -> EndplateFrame:
    """The lower vertebra's superior endplate from three clicked vertices and a 0/1/2 label map.

    What a physician gives on a patient: three points and a segmentation without vertebral
    levels. The plane is first found where the clicks say it is, then fitted over the whole
    endplate, as the level-map fit (:func:`endplate_frame_from_structures`) does:

    * Kambin: B and C lie on the endplate and A above it; the best-supported plane within a few
      mm of B and C that leaves A above it.
    * Safe triangle: its vertices lie on the upper vertebra (pedicle, body border, exiting root),
      so the endplate is the best-supported cranially facing plane *below* all three.

    From there the connected cranially facing surface within ``band_mm`` of the plane and
    ``ENDPLATE_REACH_MM`` of the start is refitted (3 widening passes), then on its sub-voxel
    surface. A local fit near B and C alone follows the posterolateral rim and the curved S1
    endplate: 12-19 deg off on real bone shapes (phantom v2), which changes projected areas by
    10 % or more at oblique views.

    Args:
        fields: the obstacle fields (their grid geometry is used).
        labels_zyx: (Z, Y, X) labels on the fields' grid.
        triangle_lps_mm: (3, 3) vertices A, B, C, LPS mm (the order of the triangle's definition).
        triangle: ``kambin`` or ``safe``.
        bone_label: the bone label value.
        band_mm: distance to the plane that counts as support.
        min_support: fewer supporting surface voxels than this is an error.
        surfaces: a dict kept with this label map (a session's crop): what does not depend on the
            clicks (the cranially facing surface) is computed once and kept there, so a dragged
            point only refits.

    Raises:
        InputError: no plausible endplate (too little support, or a normal more than
            ``STEEP_TILT_DEG`` from the superior axis), naming what to click or give instead.
    """
    pts = np.asarray(triangle_lps_mm, float).reshape(3, 3)
    affine = fields.index_to_lps
    surfaces = {} if surfaces is None else surfaces
    key = ("bone_mask", bone_label)
    if key not in surfaces:
        surfaces[key] = np.asarray(labels_zyx) == bone_label
    mask = surfaces[key]
    key = ("cranial_surface", bone_label, STEEP_TILT_DEG)
    if key not in surfaces:
        surfaces[key] = cranial_surface_points(mask, affine, max_tilt_deg=STEEP_TILT_DEG, return_normals=True)
    points, normals = surfaces[key]
    link = 2.5 * _voxel_size(affine)
    if triangle == "kambin":  # B and C on the endplate, A above it
        start, seed = _plane_below(points, normals, pts, above=pts[:1], through=pts[1:], band_mm=band_mm, link_mm=link,
                                   min_support=min_support, what="through the Kambin triangle's B and C")
    else:  # every vertex of the safe triangle lies on the upper vertebra, above the endplate
        start, seed = _plane_below(points, normals, pts, above=pts, band_mm=band_mm, link_mm=link, min_support=min_support,
                                   what="below the safe triangle's points")
    origin, normal = start.centre_lps_mm, start.normal
    patch = None
    for reach in GROWTH_REACH_MM:
        keep = (np.abs((points - origin) @ normal) <= band_mm) & (normals @ normal >= np.cos(np.radians(30.0)))
        keep &= np.linalg.norm(points - seed, axis=1) <= reach
        # the first pass grows from the seed; wider passes keep the largest piece in the refitted band
        # (the endplate is the largest flat cranially facing surface; the seed's own piece can be a
        # rim corner that the refitted band cut off)
        grown = _cluster_nearest(points[keep], seed, link_mm=link) if patch is None else \
            (_largest_cluster(points[keep], link_mm=link) if keep.any() else points[keep])
        if len(grown) < min_support or (patch is not None and len(grown) < len(patch)):
            # a wider pass that finds less surface has lost the endplate (the refitted band split it
            # and the seed's piece is a rim fragment, e.g. beside an osteophyte): keep the last plane
            break
        centroid, fitted, _ = fit_plane(grown)
        fitted = fitted if fitted @ normal >= 0 else -fitted
        if fitted @ start.normal < np.cos(np.radians(30.0)):
            break  # the patch ran onto another surface: keep the last plane
        origin, normal, patch = centroid, fitted, grown
    frame = frame_from_plane(origin, normal)
    if patch is not None:
        refit = _subvoxel_plane(mask, affine, frame, patch)
        if refit is not None:
            frame = frame_from_plane(*refit)
        # the patient may lie rotated on the table: left-right from the vertebra's mirror symmetry
        frame = _lateral_from_symmetry(mask, affine, frame, patch)
    tilt = float(np.degrees(np.arccos(np.clip(frame.normal @ _SUPERIOR, -1.0, 1.0))))
    if tilt > STEEP_TILT_DEG:
        raise InputError(
            f"the endplate found from the clicked points is tilted {tilt:.0f} deg from the body's long axis "
            f"(at most {STEEP_TILT_DEG:.0f} deg is plausible); check the points, or give --endplate / --structures"
        )
    centre = seed - ((seed - frame.centre_lps_mm) @ frame.normal) * frame.normal
    return EndplateFrame(centre, frame.normal, frame.left, frame.anterior)


def _lateral_from_symmetry(mask_zyx: np.ndarray, index_to_lps: np.ndarray, frame: EndplateFrame, patch: np.ndarray,
                           *, max_turn_deg: float = 20.0, half_width_mm: float = 20.0,
                           half_height_mm: float = 25.0, max_shift_mm: float = 20.0,
                           samples: int = 3000) -> EndplateFrame:
    """Turn the frame's left-right axis onto the normal of the spine's midsagittal (mirror) plane.

    The bone within ``half_width_mm`` of the endplate's middle (:func:`_body_outline_middle` of
    ``patch``) and ``half_height_mm`` of its plane (body, pedicles, canal, arch, both vertebrae)
    is reflected across planes that hold the endplate normal, turned by up to ``max_turn_deg``
    about it and shifted by up to ``max_shift_mm`` (the patch's middle can be off where the patch
    misses part of the endplate); the plane that maps the most bone onto bone wins (a grid of
    2.5 deg x 2 mm, refined to 0.5 deg x 0.5 mm). A patch-based long axis was 10-20 deg off
    where the endplate's patch includes the sacral ala; the scanner's x is off by the patient's
    rotation on the table.
    """
    rel = patch - frame.centre_lps_mm
    axes = np.stack([frame.left, frame.anterior])
    middle = frame.centre_lps_mm + _body_outline_middle(rel @ axes.T) @ axes
    inv = np.linalg.inv(index_to_lps[:3, :3])
    # every second voxel along each axis is plenty for a mirror score (and 8x cheaper to gather)
    bone = np.argwhere(mask_zyx[::2, ::2, ::2])[:, ::-1] * 2 @ index_to_lps[:3, :3].T + index_to_lps[:3, 3]
    d = bone - middle
    keep = (np.abs(d @ frame.normal) <= half_height_mm) & (np.abs(d @ frame.left) <= half_width_mm)
    keep &= np.abs(d @ frame.anterior) <= 2.0 * half_width_mm
    d = d[keep]
    shape = np.array(mask_zyx.shape[::-1])
    # only bone whose mirror image lies well inside the crop: a crop that holds more of one side
    # (the target is lateral) would otherwise favour planes that keep mirror images in view
    mirrored = middle + d - 2.0 * (d @ frame.left)[:, None] * frame.left
    idx = (mirrored - index_to_lps[:3, 3]) @ inv.T
    margin = 8.0 / _voxel_size(index_to_lps)
    d = d[np.all((idx >= margin) & (idx < shape - 1 - margin), axis=1)]
    if len(d) < 200:
        return frame
    if len(d) > samples:
        d = d[np.random.default_rng(0).choice(len(d), samples, replace=False)]
    to_index = (middle + d - index_to_lps[:3, 3]) @ inv.T  # (N, 3) continuous (x, y, z) index

    def scores(angle_deg: float, shifts_mm: np.ndarray) -> np.ndarray:
        """Share of the bone points whose mirror image is bone, per shift of the plane."""
        a = np.radians(angle_deg)
        m = np.cos(a) * frame.left + np.sin(a) * frame.anterior  # the mirror plane's normal
        m_index = m @ inv.T
        offset = 2.0 * ((d @ m)[None, :] - shifts_mm[:, None])  # (S, N) mm moved along -m
        idx = np.rint(to_index[None] - offset[..., None] * m_index).astype(int)  # (S, N, 3)
        inside = np.all((idx >= 0) & (idx < shape), axis=-1)
        idx = np.where(inside[..., None], idx, 0)
        hits = mask_zyx[idx[..., 2], idx[..., 1], idx[..., 0]] & inside
        return hits.mean(axis=1)

    def search(angles: np.ndarray, shifts: np.ndarray) -> tuple[float, float]:
        grid = np.stack([scores(a, shifts) for a in angles])  # (A, S)
        i, j = np.unravel_index(int(np.argmax(grid)), grid.shape)
        return float(angles[i]), float(shifts[j])

    a0, t0 = search(np.arange(-max_turn_deg, max_turn_deg + 1e-9, 2.5), np.arange(-max_shift_mm, max_shift_mm + 1e-9, 2.0))
    best = search(np.arange(a0 - 2.0, a0 + 2.0 + 1e-9, 0.5), np.arange(t0 - 1.5, t0 + 1.5 + 1e-9, 0.5))
    best = (None, *best)
    a = np.radians(best[1])
    left = np.cos(a) * frame.left + np.sin(a) * frame.anterior
    return EndplateFrame(frame.centre_lps_mm, frame.normal, left, np.cross(left, frame.normal))


def _plane_below(points: np.ndarray, normals: np.ndarray, triangle_lps_mm: np.ndarray, *, above: np.ndarray,
                 through: np.ndarray | None = None, through_mm: float = 3.0, above_mm: float = 2.0,
                 band_mm: float, link_mm: float, min_support: int, what: str) -> tuple[EndplateFrame, np.ndarray]:
    """Best-supported cranially facing plane under the clicked vertices, and a surface point on it.

    Candidates: cranially facing bone surface within ``ENDPLATE_REACH_MM`` of the triangle. RANSAC
    keeps the plane with the most facing support among those that leave every point of ``above``
    at least ``above_mm`` on the plane's cranial side and pass within ``through_mm`` of every point
    of ``through``: the endplate is the largest flat cranially facing surface there. The returned
    point, where the fit over the whole endplate grows from, is the support's point nearest the
    triangle (Kambin: nearest the middle of B and C, which lie on the endplate) within the support's
    largest connected piece (``link_mm``): the nearest support point
    overall can lie on a pedicle's or articular process's top that happens to be in the band, and
    growing from there fits that patch (13-27 deg off on warped phantom arches, December 2026).
    """
    centroid = triangle_lps_mm.mean(axis=0)
    # under the highest vertex that must stay above (world superior): the surfaces of the processes
    # that reach above it (superior articular process, ala) are not the endplate
    near = (np.linalg.norm(points - centroid, axis=1) <= ENDPLATE_REACH_MM) & (points[:, 2] <= above[:, 2].max())
    cand, cand_normals = points[near], normals[near]
    message = (f"no flat cranially facing bone surface {what} (the lower vertebra's superior endplate); check "
               "the points and the segmentation, or give --endplate / --structures")
    if len(cand) < min_support:
        raise InputError(f"found only {len(cand)} cranially facing bone surface voxels near the points: {message}")
    rng = np.random.default_rng(0)
    facing_cos = np.cos(np.radians(30.0))
    best, best_support = None, -1
    for _ in range(400):
        a, b, c = cand[rng.choice(len(cand), 3, replace=False)]
        n = np.cross(b - a, c - a)
        if np.linalg.norm(n) < 1e-9:
            continue
        n = n / np.linalg.norm(n)
        n = n if n[2] >= 0 else -n
        if n @ _SUPERIOR < np.cos(np.radians(STEEP_TILT_DEG)) or np.any((above - a) @ n < above_mm):
            continue
        if through is not None and np.any(np.abs((through - a) @ n) > through_mm):
            continue
        support = int(((np.abs((cand - a) @ n) <= band_mm) & (cand_normals @ n >= facing_cos)).sum())
        if support > best_support:
            best, best_support = (a, n), support
    if best is None or best_support < min_support:
        raise InputError(message[0].upper() + message[1:])
    a, n = best
    on_plane = (np.abs((cand - a) @ n) <= band_mm) & (cand_normals @ n >= facing_cos)
    main = _largest_cluster(cand[on_plane], link_mm=link_mm)
    anchor = through.mean(axis=0) if through is not None else centroid  # Kambin: B and C lie on the endplate
    seed = main[np.argmin(np.linalg.norm(main - anchor, axis=1))]
    return frame_from_plane(a, n), seed


def _cluster_nearest(points: np.ndarray, seed: np.ndarray, *, link_mm: float) -> np.ndarray:
    """The group of points linked within ``link_mm`` (single linkage) that holds the point nearest ``seed``.

    When that group is a speck (under 20 points: a click beside the endplate's rim), the largest group.
    """
    if len(points) == 0:
        return points
    labels = _point_clusters(points, link_mm=link_mm)
    nearest = labels == labels[np.argmin(np.linalg.norm(points - seed, axis=1))]
    return points[nearest] if nearest.sum() >= 20 else points[labels == np.bincount(labels).argmax()]


def endplate_frame_from_structures(
    structures_zyx: np.ndarray, index_to_lps: np.ndarray, lower_code: int, *, inlier_mm: float = 1.5
) -> EndplateFrame:
    """Endplate frame of a vertebra from a level map (the vertebra's own code).

    The cranially facing surface of the vertebra within ``BODY_HALF_WIDTH_MM`` of its midline is
    fitted by RANSAC; the endplate is the plane with the most support, and the centre is the
    middle of the extent (left-right, antero-posterior) of its largest connected patch.

    Args:
        structures_zyx: (Z, Y, X) integer level/structure codes.
        index_to_lps: (4, 4) voxel index (x, y, z) → LPS mm affine.
        lower_code: the code of the lower vertebra (e.g. S1 at L5/S1).
        inlier_mm: RANSAC inlier distance.

    Raises:
        InputError: the vertebra is missing or has too little cranially facing surface.
    """
    mask = np.asarray(structures_zyx) == lower_code
    # S1's endplate can face 60 deg away from vertical (sacral slope 30-50 deg plus the patient's pose)
    points, normals = cranial_surface_points(mask, index_to_lps, max_tilt_deg=STEEP_TILT_DEG, return_normals=True)
    if len(points) >= 30:
        # the body is central: drop lateral parts (the sacral alae, transverse processes)
        voxels = np.argwhere(mask)[:, ::-1] @ index_to_lps[:3, :3].T + index_to_lps[:3, 3]
        central = np.abs(points[:, 0] - np.median(voxels[:, 0])) <= BODY_HALF_WIDTH_MM
        points, normals = points[central], normals[central]
    if len(points) < 30:
        raise InputError(
            f"the level map has too little of vertebra code {lower_code} ({int(mask.sum())} voxels) to find "
            "its superior endplate; check the level labels or give the endplate points"
        )
    frame = frame_from_endplate_points(points, inlier_mm=inlier_mm, iterations=400)
    link = 2.5 * _voxel_size(index_to_lps)
    for _ in range(3):  # least-squares refit on the connected patch, with a wider band
        facing = normals @ frame.normal >= np.cos(np.radians(30.0))  # surfaces parallel to the plane
        band = np.abs((points - frame.centre_lps_mm) @ frame.normal) <= 2.0 * inlier_mm
        near = points[band & facing]
        patch = _largest_cluster(near, link_mm=link)
        if len(patch) < 3:
            break
        centroid, normal, _ = fit_plane(patch)
        frame = frame_from_plane(centroid, normal)
    refit = _subvoxel_plane(mask, index_to_lps, frame, patch)
    if refit is not None:
        frame = frame_from_plane(*refit)
    frame = _lateral_from_patch(frame, patch)
    rel = patch - frame.centre_lps_mm
    axes = np.stack([frame.left, frame.anterior])
    mid = _body_outline_middle(rel @ axes.T)
    if refit is not None:  # the plane already lies on the sub-voxel surface
        height = 0.0
    else:  # surface voxel centres lie half a voxel inside the bone: lift the plane onto the surface
        lift = 0.5 * float(np.linalg.norm(np.linalg.solve(index_to_lps[:3, :3], frame.normal)) ** -1)
        height = float(np.mean(rel @ frame.normal)) + lift
    centre = frame.centre_lps_mm + mid @ axes + height * frame.normal
    return EndplateFrame(centre, frame.normal, frame.left, frame.anterior)


def _subvoxel_plane(
    mask_zyx: np.ndarray, index_to_lps: np.ndarray, frame: EndplateFrame, patch: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Least-squares plane (point (3,), unit normal (3,), LPS) through the endplate's sub-voxel surface.

    Voxel centres sit between 0 and 1 voxel inside the bone depending on the plane's tilt to the
    grid, and the rounded rim falls away from the plane; the iso-surface vertices
    (:func:`spinect.geometry.distance.surface_lps_mm`) by the voxel patch whose normals lie within
    ``_FLAT_DEG`` of the plane's are on the flat endplate itself. None when fewer than 30 remain.
    """
    from scipy import spatial

    from spinect.geometry.distance import mask_box, surface_lps_mm

    box, affine, _ = mask_box(mask_zyx, index_to_lps, patch, 3.0)
    verts, normals = surface_lps_mm(box, affine)
    if len(verts) < 30:
        return None
    near, _ = spatial.cKDTree(patch).query(verts, distance_upper_bound=1.5 * _voxel_size(index_to_lps))
    candidates = np.isfinite(near)
    centre, normal = frame.centre_lps_mm, frame.normal
    for band in (1.5, 1.0):
        keep = candidates & (np.abs((verts - centre) @ normal) <= band)
        keep &= normals @ normal >= np.cos(np.radians(_FLAT_DEG))
        if keep.sum() < 30:
            return None
        centre, fitted, _ = fit_plane(verts[keep])
        normal = fitted if fitted @ normal >= 0 else -fitted
    return centre, normal


def _lateral_from_patch(frame: EndplateFrame, patch: np.ndarray, *, max_turn_deg: float = 25.0) -> EndplateFrame:
    """Turn the frame's left-right axis onto the endplate's long (left-right) axis.

    The endplate is wider than deep, so its principal in-plane axis is the vertebra's own
    left-right axis, which differs from the scanner's x when the patient lies rotated. Kept only
    within ``max_turn_deg`` of the scanner-based axis (a round endplate has no reliable axis).
    """
    coords = (patch - patch.mean(axis=0)) @ np.stack([frame.left, frame.anterior]).T
    lat = coords[:, 0]
    # only the body: the antero-posterior run along the midline (pedicles join further back)
    ap_lo, ap_hi = _longest_run(np.sort(coords[np.abs(lat - np.median(lat)) < 5.0, 1]), 3.0)
    body = coords[(coords[:, 1] >= ap_lo) & (coords[:, 1] <= ap_hi)]
    if len(body) < 10:
        return frame
    _, _, vt = np.linalg.svd(body - body.mean(axis=0), full_matrices=False)
    major = vt[0] if vt[0][0] >= 0 else -vt[0]
    if np.degrees(np.arccos(np.clip(major[0], -1.0, 1.0))) > max_turn_deg:
        return frame
    left = major[0] * frame.left + major[1] * frame.anterior
    left /= np.linalg.norm(left)
    return EndplateFrame(frame.centre_lps_mm, frame.normal, left, np.cross(left, frame.normal))


def _body_outline_middle(coords_mm: np.ndarray, *, strip_mm: float = 5.0, gap_mm: float = 3.0) -> np.ndarray:
    """Middle of the endplate's extent: (left-right, antero-posterior) in mm.

    Antero-posterior: along the midline strip (|lateral − median| < ``strip_mm``), where no pedicle
    joins the endplate, the longest run of points without a gap over ``gap_mm`` (the body; the
    canal separates it from the lamina). Left-right: the extent of a strip across the middle of
    that run (the pedicles join further back).
    """
    lat, ap = coords_mm[:, 0], coords_mm[:, 1]
    centre_lat = float(np.median(lat))
    ap_lo, ap_hi = _longest_run(np.sort(ap[np.abs(lat - centre_lat) < strip_mm]), gap_mm)
    ap_mid = 0.5 * (ap_lo + ap_hi)
    lat_lo, lat_hi = _longest_run(np.sort(lat[np.abs(ap - ap_mid) < strip_mm]), gap_mm)
    return np.array([0.5 * (lat_lo + lat_hi), ap_mid])


def _longest_run(values: np.ndarray, gap: float) -> tuple[float, float]:
    """(first, last) of the longest stretch of sorted values without a step over ``gap``."""
    if values.size == 0:
        return 0.0, 0.0
    breaks = np.flatnonzero(np.diff(values) > gap)
    starts = np.r_[0, breaks + 1]
    ends = np.r_[breaks, values.size - 1]
    k = int(np.argmax(values[ends] - values[starts]))
    return float(values[starts[k]]), float(values[ends[k]])


def _voxel_size(index_to_lps: np.ndarray) -> float:
    return float(np.max(np.linalg.norm(index_to_lps[:3, :3], axis=0)))


def _largest_cluster(points: np.ndarray, *, link_mm: float) -> np.ndarray:
    """The largest group of points linked within ``link_mm`` (single linkage)."""
    labels = _point_clusters(points, link_mm=link_mm)
    return points[labels == np.bincount(labels).argmax()]


def _point_clusters(points: np.ndarray, *, link_mm: float) -> np.ndarray:
    """(N,) single-linkage group of each point: pairs within ``link_mm`` joined (scipy graph components)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pairs = cKDTree(points).query_pairs(link_mm, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(points),) * 2)
    return connected_components(graph, directed=False)[1]
