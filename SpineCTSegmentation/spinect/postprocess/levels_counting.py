"""Vertebral levels by counting from a visible reference (no level model needed).

Radiologists name the lumbar levels by counting: up from the sacrum, or down from the last
rib-bearing vertebra (T12). This module does the same on a bone mask (the default model's
segmentation, or any bone mask):

1. **Spine axis**: per axial slice, the vertebral canal is the hole that filling the bone mask
   closes (after a 3 mm closing where the ring is open), with bone in front of it (the body);
   the canal centroids are tracked from slice to slice, interpolated where the canal is open, and
   smoothed (Gaussian, 8 mm) into a centreline, resampled every 1 mm along its arc.
2. **Straightened spine**: the bone mask sampled in planes perpendicular to the centreline
   (u lateral, + left; v antero-posterior, + posterior; 1.5 mm), so lordosis does not tilt the
   discs against the sampling planes.
3. **Vertebra instances**: the bone fraction (holes in each plane filled, so a hollow body of a
   threshold mask counts whole) of the vertebral-body region in each plane (12 mm
   either side of the midline, 8-45 mm in front of the canal centre) drops at every
   intervertebral disc; the column is split at the profile's minima. Segments whose body height
   (the extent above half the segment's peak) is under 15 mm are merged into a neighbour; every
   segment records its height, and heights outside 15-45 mm are noted. A segment taller than
   45 mm (the mask bridges a disc: the model's bone on a real chest CT) is split at the discs below
   the *foramina*: the minima of the bone fraction beside the canal (the pedicles, |u| 8-22 mm,
   v -6..6 mm), each 2-10 mm cranial of its disc (not within the sacrum's run).
4. **References**: the *sacrum* is the top of the run of *wide* segments at the caudal end of the
   column (bone connected to the body wider than 90 mm with more than 800 mm² lateral to the body,
   over at least 15 mm along the axis: alae, often fused to the ilia); the *last rib* is the
   lowest segment with a rib: a bone component lateral to the column (|u| > 28 mm) that continues
   into the column across that cut, reaches 65 mm or more laterally, and spans at most 90 mm along
   the axis, with at most 25 mL (not a contrast-filled kidney); the segment of its most cranial
   contact with the column bears the rib, and the lowest such segment is T12.
5. **Counting**: L5, L4, ... up from the sacrum; L1, L2, ... down from T12. When both are in view
   and more or fewer than five vertebrae lie between them (transitional anatomy), the notes say
   so and the sacrum's count names the lumbar levels. With neither in view counting is refused
   (:class:`LevelCountError`): no level is guessed.
6. **Labels**: the bone near the canal (|u| <= 55 mm, v -60..65 mm; posterior elements included)
   is flooded through the bone mask from each vertebral body and its pedicles (geodesic nearest
   seed: an arch floods from its own pedicles, not across bridged facets); the map uses
   :data:`spinect.plan.LEVEL_MAP_NAMES` codes (L1-L5, sacrum; T12 and the thoracic vertebrae have
   no code and stay 0).

Validation: ``benchmarks/validate_levels.py`` and ``docs/levels.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from spinect.errors import SpinectError

__all__ = ["LevelCountError", "LevelCount", "count_levels", "count_levels_image", "REFUSAL_NO_REFERENCE", "ALL_REFERENCES",
           "COUNTING_SOURCES"]

#: The message of a refusal when neither reference is in view (the start of the error's text).
REFUSAL_NO_REFERENCE = ("levels cannot be counted: neither the sacrum nor a rib-bearing vertebra is in the field of "
                        "view; give a level map (--structures) or a level model")
#: What the result's ``source`` says per reference.
#: ``references`` of :func:`count_levels`: both (``--levels-by counting``), or the sacrum only
#: (``--levels-by auto``: the last-rib count is off by one whenever a short 12th rib is missed).
ALL_REFERENCES: tuple[str, ...] = ("sacrum", "last rib")
COUNTING_SOURCES = {"sacrum": "levels by counting from the sacrum", "last rib": "levels by counting from the last rib"}

LUMBAR = ("L1", "L2", "L3", "L4", "L5")
# Geometry (mm) of the method; see the module docstring.
STEP_MM = 1.0             # arc-length step of the centreline
PLANE_MM = 1.5            # in-plane step of the straightened volume
U_HALF_MM = 160.0         # lateral half-width of the straightened planes
V_RANGE_MM = (-70.0, 65.0)  # antero-posterior range of the planes (v + posterior)
BODY_U_MM = 12.0
BODY_V_MM = (-45.0, -8.0)
CANAL_AREA_MM2 = (40.0, 1000.0)
CLOSING_MM = 3.0
SMOOTH_MM = 8.0
EXTEND_MM = 25.0
MIN_HEIGHT_MM, MAX_HEIGHT_MM = 15.0, 45.0
THORACIC_HEIGHT_MM = (12.0, 34.0)  # body + disc pitch of T1 (about 20 mm) to T12 (about 30 mm)
WIDE_MM = 90.0
WIDE_AREA_MM2 = 800.0
WIDE_RUN_MM = 15.0
CORE_U_MM = 28.0
RIB_REACH_MM = 65.0
RIB_MAX_SPAN_MM = 90.0
RIB_MAX_ML = 25.0
LABEL_U_MM = 55.0
LABEL_V_MM = (-60.0, 65.0)
# the pedicles: beside the canal (lateral |u|, antero-posterior v from the canal centre); between
# two levels' pedicles lies the foramen, whose centre is this far cranial of the disc below it
PEDICLE_U_MM = (8.0, 22.0)
PEDICLE_V_MM = (-6.0, 6.0)
FORAMEN_ABOVE_DISC_MM = (2.0, 10.0)


class LevelCountError(SpinectError):
    """Vertebral levels cannot be counted (no reference in view, no spine found)."""

    exit_code = 3


@dataclass
class LevelCount:
    """The counted levels of one bone mask.

    Attributes:
        levels: UInt8 level map on the input grid (:data:`spinect.plan.LEVEL_MAP_NAMES` codes).
        reference: ``"sacrum"`` or ``"last rib"`` (the reference the lumbar names come from).
        vertebrae: one dict per vertebra found, caudal first: ``name`` (``L4``, ``T12``, ``sacrum``,
            ``?`` above/below what counting can name), ``code`` (its map value, 0 = none),
            ``s_mm`` (range along the centreline from its caudal end), ``height_mm`` (body),
            ``z_range`` (first and last array index along axis 0 of its labelled voxels, or None),
            ``centre_mm`` (centroid of its labelled voxels: LPS world mm for an image, array mm
            for an array), ``voxels``, ``rib`` (a rib was found on it), ``wide`` (sacral width).
        notes: remarks (transitional anatomy, implausible heights).
    """

    levels: np.ndarray
    reference: str
    vertebrae: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    references_seen: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        """``levels by counting from the sacrum`` / ``... the last rib``."""
        return COUNTING_SOURCES[self.reference]

    def record(self) -> dict[str, Any]:
        """JSON-ready summary (provenance, benchmark): method, reference, vertebrae, notes."""
        return {"method": "counting", "source": self.source, "reference": self.reference,
                "references_seen": list(self.references_seen), "vertebrae": self.vertebrae, "notes": list(self.notes)}


# ------------------------------------------------------------------------------------- the axis


def _disk(radius_mm: float, spacing_yx: Sequence[float]) -> np.ndarray:
    ry, rx = (max(int(radius_mm / s), 1) for s in spacing_yx)
    yy, xx = np.mgrid[-ry:ry + 1, -rx:rx + 1]
    return (yy * spacing_yx[0]) ** 2 + (xx * spacing_yx[1]) ** 2 <= radius_mm**2 + 1e-9


def _canal_candidates(sl: np.ndarray, spacing_yx, disk) -> list[tuple[float, float, float]]:
    """(y mm, x mm, body fraction) of the plausible canal holes of one axial slice."""
    out = _holes_with_body(sl, sl, spacing_yx)
    if not out and disk is not None:  # a ring opened by the segmentation: close it and look again
        out = _holes_with_body(ndi.binary_closing(sl, structure=disk), sl, spacing_yx)
    return out


def _holes_with_body(closed: np.ndarray, sl: np.ndarray, spacing_yx) -> list[tuple[float, float, float]]:
    """Holes of ``closed`` of canal size and shape with vertebral-body bone of ``sl`` in front of them."""
    dy, dx = spacing_yx
    out = []
    holes = ndi.binary_fill_holes(closed) & ~closed
    if holes.any():
        lab, n = ndi.label(holes)
        areas = np.bincount(lab.ravel(), minlength=n + 1)[1:] * dy * dx
        for i in np.flatnonzero((areas >= CANAL_AREA_MM2[0]) & (areas <= CANAL_AREA_MM2[1])):
            ys, xs = np.nonzero(lab == i + 1)
            cy, cx = ys.mean(), xs.mean()
            h, w = (ys.max() - ys.min() + 1) * dy, (xs.max() - xs.min() + 1) * dx
            if max(h, w) > 3.0 * min(h, w):
                continue
            # bone in front (anterior = smaller y in LPS) of the hole: the vertebral body
            y0, y1 = int(cy - 45.0 / dy), int(cy - 8.0 / dy)
            x0, x1 = int(cx - 8.0 / dx), int(cx + 8.0 / dx) + 1
            box = sl[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]
            body = float(box.mean()) if box.size else 0.0
            if body >= 0.25:
                out.append((cy * dy, cx * dx, body))
    return out


def _centreline(bone: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """(N, 3) centreline points (z, y, x mm), caudal to cranial, every STEP_MM along the arc."""
    disk = _disk(CLOSING_MM, spacing[1:])
    cands: dict[int, list] = {}
    for z in np.flatnonzero(bone.any(axis=(1, 2))):
        c = _canal_candidates(bone[z], spacing[1:], disk)
        if c:
            cands[int(z)] = c
    if len(cands) * spacing[0] < 20.0:
        raise LevelCountError("levels cannot be counted: no vertebral canal was found in the bone mask (fewer than "
                              "20 mm of slices show a canal enclosed by bone with a vertebral body in front)")
    # The canal is the longest chain of candidates from slice to slice (step-limited, gaps allowed):
    # holes elsewhere (vessels, ribs, organs) do not continue over the length of the spine.
    nodes = [(z, c) for z in sorted(cands) for c in cands[z]]
    best = np.zeros(len(nodes))
    back = np.full(len(nodes), -1)
    first = 0
    for i, (z, c) in enumerate(nodes):
        best[i] = 1.0 + c[2]
        while (z - nodes[first][0]) * spacing[0] > 40.0:
            first += 1
        for j in range(first, i):
            zj, cj = nodes[j]
            if zj >= z:
                break
            gap = (z - zj) * spacing[0]
            if math.hypot(c[0] - cj[0], c[1] - cj[1]) <= 8.0 + 0.8 * gap and best[j] + 1.0 + c[2] > best[i]:
                best[i], back[i] = best[j] + 1.0 + c[2], j
    i = int(np.argmax(best))
    track = {}
    while i >= 0:
        track[nodes[i][0]] = nodes[i][1][:2]
        i = int(back[i])
    tz = np.array(sorted(track))
    if (tz[-1] - tz[0]) * spacing[0] < 20.0:
        raise LevelCountError("levels cannot be counted: the vertebral canal was traced over less than 20 mm")
    ty = np.array([track[z][0] for z in tz])
    tx = np.array([track[z][1] for z in tz])
    zfull = np.arange(tz[0], tz[-1] + 1)
    sigma = SMOOTH_MM / spacing[0]
    y = ndi.gaussian_filter1d(np.interp(zfull, tz, ty), sigma, mode="nearest")
    x = ndi.gaussian_filter1d(np.interp(zfull, tz, tx), sigma, mode="nearest")
    pts = np.stack([zfull * spacing[0], y, x], axis=1)
    # extend both ends along their direction (the end vertebrae's canal may be open or cut) up to EXTEND_MM
    span = (bone.shape[0] - 1) * spacing[0]
    ends = []
    for end, inner, sign in ((pts[0], pts[min(int(15.0 / spacing[0]), len(pts) - 1)], -1), (pts[-1], pts[max(len(pts) - 1 - int(15.0 / spacing[0]), 0)], 1)):
        d = end - inner
        d = d / np.linalg.norm(d) if np.linalg.norm(d) > 0 else np.array([sign, 0.0, 0.0])
        room = (end[0] if sign < 0 else span - end[0])
        length = min(EXTEND_MM, room / max(abs(d[0]), 1e-3))
        steps = np.arange(1, int(length / STEP_MM) + 1) * STEP_MM
        ends.append(end[None] + steps[:, None] * d[None])
    pts = np.concatenate([ends[0][::-1], pts, ends[1]])
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.arange(0.0, arc[-1] + 1e-9, STEP_MM)
    return np.stack([np.interp(s, arc, pts[:, i]) for i in range(3)], axis=1)


def _frames(line: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tangent t (cranial), lateral l (+ left) and posterior p unit vectors per point (z, y, x)."""
    t = np.gradient(line, axis=0)
    t = ndi.gaussian_filter1d(t, 3.0, axis=0, mode="nearest")
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    post = np.array([0.0, 1.0, 0.0])
    p = post - (t @ post)[:, None] * t
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    l = np.cross(t, p)  # in (z, y, x) component order: t = +z, p = +y gives +x (left)
    l /= np.linalg.norm(l, axis=1, keepdims=True)
    return t, l, p


def _straighten(bone: np.ndarray, spacing: np.ndarray, line, l, p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bone sampled in planes perpendicular to the centreline: (s, v, u) bool, and the v, u axes (mm)."""
    v = np.arange(V_RANGE_MM[0], V_RANGE_MM[1] + 1e-9, PLANE_MM)
    u = np.arange(-U_HALF_MM, U_HALF_MM + 1e-9, PLANE_MM)
    vv, uu = np.meshgrid(v, u, indexing="ij")
    out = np.zeros((len(line), len(v), len(u)), dtype=bool)
    src = bone.view(np.uint8) if bone.dtype == bool else bone.astype(np.uint8)
    chunk = 24
    for a in range(0, len(line), chunk):
        b = min(a + chunk, len(line))
        pts = (line[a:b, None, None, :] + vv[None, :, :, None] * p[a:b, None, None, :]
               + uu[None, :, :, None] * l[a:b, None, None, :])
        idx = pts / spacing
        out[a:b] = ndi.map_coordinates(src, idx.transpose(3, 0, 1, 2).reshape(3, -1), order=0, mode="constant",
                                       cval=0).reshape(b - a, len(v), len(u)) > 0
    return out, v, u


# ------------------------------------------------------------------------------ the vertebrae


def _segments(profile: np.ndarray) -> tuple[list[list[int]], list[float]]:
    """Split the body profile at its disc minima: [[lo, hi], ...] (sample indices, caudal first), heights."""
    from scipy.signal import find_peaks

    prof = ndi.gaussian_filter1d(profile, 1.5 / STEP_MM, mode="nearest")
    on = np.flatnonzero(prof > 0.1)
    if on.size == 0:
        raise LevelCountError("levels cannot be counted: no vertebral bodies were found in front of the canal")
    top = float(np.percentile(prof[on], 90))
    minima, _ = find_peaks(-prof, distance=max(int(12.0 / STEP_MM), 1), prominence=0.2 * top)
    bounds = [int(on[0])] + [int(m) for m in minima if on[0] < m < on[-1]] + [int(on[-1]) + 1]
    segs = [[bounds[i], bounds[i + 1]] for i in range(len(bounds) - 1)]

    def height(seg):
        return _body_height(prof, seg)

    # merge too-short inner segments into the neighbour across the shallower boundary
    changed = True
    while changed and len(segs) > 1:
        changed = False
        hs = [height(s) for s in segs]
        for i in range(1, len(segs) - 1):  # the end segments may be cut by the field of view
            if hs[i] < MIN_HEIGHT_MM:
                lower = prof[segs[i][0]] if i > 0 else -1
                upper = prof[segs[i][1]] if i + 1 < len(segs) else -1
                j = i - 1 if lower >= upper else i + 1
                a, b = sorted((i, j))
                segs[a:b + 1] = [[segs[a][0], segs[b][1]]]
                changed = True
                break
    return segs, [height(s) for s in segs]


def _body_height(prof: np.ndarray, seg) -> float:
    """Body height (mm) of a segment: the extent of its smoothed body profile above half its peak."""
    part = prof[seg[0]:seg[1]]
    if part.size == 0:
        return 0.0
    above = np.flatnonzero(part > 0.5 * part.max())
    return float((above[-1] - above[0] + 1) * STEP_MM) if above.size else 0.0


def _pedicle_profile(straight: np.ndarray, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Bone fraction of the pedicle regions (both sides of the canal) per plane, smoothed (1.5 mm).

    High at each vertebra's pedicles, low at the foramina between them: a second, independent
    look at where one vertebra ends, where the bone mask bridges the discs in front of the canal."""
    pv = (v >= PEDICLE_V_MM[0]) & (v <= PEDICLE_V_MM[1])
    pu = (np.abs(u) >= PEDICLE_U_MM[0]) & (np.abs(u) <= PEDICLE_U_MM[1])
    prof = straight[:, pv][:, :, pu].mean(axis=(1, 2))
    return ndi.gaussian_filter1d(prof, 1.5 / STEP_MM, mode="nearest")


def _split_at_foramina(segs: list[list[int]], body: np.ndarray, pedicle: np.ndarray,
                       splittable: Sequence[bool]) -> tuple[list[list[int]], list[int]]:
    """Split segments taller than MAX_HEIGHT_MM (discs the body profile missed) at the discs below
    the foramina.

    The foramina are the pedicle profile's minima (at least 12 mm apart, prominence 0.2 of its 90th
    percentile); each one inside a tall segment gives a cut at the body profile's lowest point
    2-10 mm caudal of it (the disc). Only ``splittable`` segments are cut, and only where every
    piece keeps at least MIN_HEIGHT_MM (pieces at the ends of the column, cut by the field of
    view, excepted). Returns the new segments and the indices of those that came from a split.
    """
    from scipy.signal import find_peaks

    on = pedicle[pedicle > 0.05]
    if on.size == 0:
        return segs, []
    top = float(np.percentile(on, 90))
    foramina, _ = find_peaks(-pedicle, distance=max(int(12.0 / STEP_MM), 1), prominence=0.2 * top)
    first, last = segs[0][0], segs[-1][1]
    out: list[list[int]] = []
    split: list[int] = []
    lo_off, hi_off = (int(round(d / STEP_MM)) for d in FORAMEN_ABOVE_DISC_MM)
    min_len = int(math.ceil(MIN_HEIGHT_MM / STEP_MM))
    for k, seg in enumerate(segs):
        if not splittable[k] or _body_height(body, seg) <= MAX_HEIGHT_MM:
            out.append(seg)
            continue
        cuts: list[int] = []
        for m in foramina:
            a, b = max(int(m) - hi_off, seg[0] + 1), min(int(m) - lo_off, seg[1] - 1)
            if a > b:
                continue
            cut = a + int(np.argmin(body[a:b + 1]))
            prev = cuts[-1] if cuts else seg[0]
            if cut - prev >= min_len or (not cuts and seg[0] == first):
                cuts.append(cut)
        while cuts and seg[1] - cuts[-1] < min_len and seg[1] != last:
            cuts.pop()
        if not cuts:
            out.append(seg)
            continue
        bounds = [seg[0], *cuts, seg[1]]
        for i in range(len(bounds) - 1):
            split.append(len(out))
            out.append([bounds[i], bounds[i + 1]])
    return out, split


def _sacral_run(wide: Sequence[bool], rib_on: Sequence[bool] | None = None) -> range:
    """Indices of the run of wide segments that starts among the caudal three (empty without one),
    ended below a segment that bears a rib (``rib_on``)."""
    first = next((k for k in range(min(3, len(wide))) if wide[k]), None)
    if first is None:
        return range(0)
    top = first
    while top + 1 < len(wide) and wide[top + 1] and not (rib_on is not None and rib_on[top + 1]):
        top += 1
    return range(first, top + 1)


def _wide_run_mm(straight: np.ndarray, u: np.ndarray, v: np.ndarray, seg) -> float:
    """How many mm of the segment have bone connected to the body wider than WIDE_MM (and massive)."""
    body_v = (v >= BODY_V_MM[0]) & (v <= BODY_V_MM[1])
    body_u = np.abs(u) <= BODY_U_MM
    lateral = np.abs(u) > 25.0
    run = 0
    for s in range(seg[0], seg[1]):
        plane = straight[s]
        if not plane[np.ix_(body_v, body_u)].any():
            continue
        lab, _ = ndi.label(plane)
        ids = np.unique(lab[np.ix_(body_v, body_u)])
        comp = np.isin(lab, ids[ids > 0])
        cols = np.flatnonzero(comp.any(axis=0))
        width = (u[cols[-1]] - u[cols[0]] + PLANE_MM) if cols.size else 0.0
        area = np.count_nonzero(comp[:, lateral]) * PLANE_MM**2
        if width >= WIDE_MM and area >= WIDE_AREA_MM2:
            run += 1
    return run * STEP_MM


def _rib_positions(straight: np.ndarray, u: np.ndarray) -> list[tuple[float, str]]:
    """(s index of the rib's medial end, side) of every rib-like component reaching the column."""
    out_mask = straight & (np.abs(u) > CORE_U_MM)[None, None, :]
    lab, n = ndi.label(out_mask)
    if n == 0:
        return []
    cut_l = int(np.argmin(np.abs(u - CORE_U_MM)))       # first column outside on the left (u > 0)
    cut_r = int(np.argmin(np.abs(u + CORE_U_MM)))
    # components that continue into the column across the cut (bone on both sides of it), and where
    contact: dict[int, float] = {}
    for inside, outside in ((cut_l, cut_l + 1), (cut_r, cut_r - 1)):
        where = straight[:, :, inside] & (lab[:, :, outside] > 0)
        for s_i, comp_id in zip(np.nonzero(where)[0], lab[:, :, outside][where]):
            contact[int(comp_id)] = max(contact.get(int(comp_id), -1.0), float(s_i))
    ribs = []
    voxel_ml = STEP_MM * PLANE_MM**2 / 1000.0
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if i not in contact or sl is None:
            continue
        comp = lab[sl] == i
        s_idx, _, u_idx = np.nonzero(comp)
        if s_idx.size * voxel_ml > RIB_MAX_ML:  # kidneys, spleen (contrast), ilia: too massive for a rib
            continue
        uu = u[u_idx + sl[2].start]
        if np.any(uu > 0) and np.any(uu < 0):
            continue
        reach = np.abs(uu).max()
        span = (s_idx.max() - s_idx.min() + 1) * STEP_MM
        if reach < RIB_REACH_MM or span > RIB_MAX_SPAN_MM:
            continue
        # the most cranial contact with the column: the neck runs caudally from the rib head
        ribs.append((contact[i], "left" if uu[0] > 0 else "right"))
    return ribs


# ------------------------------------------------------------------------------------- counting


def count_levels(bone: np.ndarray, spacing_zyx_mm: Sequence[float], *, to_world=None,
                 references: Sequence[str] = ALL_REFERENCES) -> LevelCount:
    """Count the vertebral levels of a bone mask in LPS array order.

    Args:
        bone: bone mask (z, y, x) with axis 0 cranial (+S), axis 1 posterior (+P), axis 2 left
            (+L): a SimpleITK array of an LPS-oriented image (:func:`count_levels_image` orients).
        spacing_zyx_mm: voxel size (z, y, x), mm.
        to_world: optional function mapping (N, 3) array mm (z, y, x) to world points for the
            record's ``centre_mm`` (default: the array mm themselves).
        references: what the count may start from: ``"sacrum"`` and/or ``"last rib"``.

    A vertebra whose body height is implausible (a disc missed or split) stops the count: it and
    every vertebra past it, seen from the reference, are left unnamed (``?``, code 0) with a note,
    because the count past it may be off by one. A wrong level is worse than none.

    Returns:
        :class:`LevelCount`.

    Raises:
        LevelCountError: no canal or no vertebral bodies found, neither the sacrum nor a
            rib-bearing vertebra in view (:data:`REFUSAL_NO_REFERENCE`), only a reference that
            ``references`` excludes, or no lumbar level left to name.
    """
    unknown = set(references) - set(ALL_REFERENCES)
    if unknown or not references:
        raise LevelCountError(f"unknown counting reference(s) {sorted(unknown)}; use {list(ALL_REFERENCES)}")
    bone = np.asarray(bone) > 0
    if bone.ndim != 3:
        raise LevelCountError(f"levels cannot be counted: the bone mask must be 3D, got shape {bone.shape}")
    spacing = np.asarray(spacing_zyx_mm, dtype=float)
    line = _centreline(bone, spacing)
    t, l, p = _frames(line)
    straight, v, u = _straighten(bone, spacing, line, l, p)
    body_v = (v >= BODY_V_MM[0]) & (v <= BODY_V_MM[1])
    body_u = np.abs(u) <= BODY_U_MM
    # the body's bone fraction per plane, its cortical ring filled (a hollow body of a threshold mask counts whole)
    near_v = (v >= V_RANGE_MM[0]) & (v <= -2.0)
    near_u = np.abs(u) <= 40.0
    crop = straight[:, near_v][:, :, near_u]
    filled = np.stack([ndi.binary_fill_holes(plane) for plane in crop])
    profile = filled[:, body_v[near_v]][:, :, body_u[near_u]].mean(axis=(1, 2))
    segs, heights = _segments(profile)
    wide = [_wide_run_mm(straight, u, v, s) >= WIDE_RUN_MM for s in segs]
    # where the bone mask bridges discs (segments too tall for one vertebra), the foramina between
    # the pedicles still show where one vertebra ends; the sacrum's run is left whole
    smoothed = ndi.gaussian_filter1d(profile, 1.5 / STEP_MM, mode="nearest")
    run = _sacral_run(wide)
    old = {tuple(seg): (h, w) for seg, h, w in zip(segs, heights, wide)}
    segs, from_split = _split_at_foramina(segs, smoothed, _pedicle_profile(straight, v, u),
                                          [k not in run for k in range(len(segs))])
    if from_split:  # only the new pieces need measuring
        measured = [old.get(tuple(seg)) or (_body_height(smoothed, seg), _wide_run_mm(straight, u, v, seg) >= WIDE_RUN_MM)
                    for seg in segs]
        heights, wide = [h for h, _ in measured], [w for _, w in measured]
    n = len(segs)
    rib_s = _rib_positions(straight, u)
    rib_on = [False] * n
    for s_pos, _ in rib_s:
        for k, (lo, hi) in enumerate(segs):
            if lo <= s_pos < hi:
                rib_on[k] = True
    notes: list[str] = []
    if from_split:
        notes.append(f"{len(from_split)} vertebrae were told apart at the foramina between their pedicles, where the "
                     f"bone mask bridges the discs in front of the canal")
    # the sacrum: the top of the run of wide segments at the caudal end (its first 3 segments)
    sacrum = max(_sacral_run(wide, rib_on), default=None)
    if sacrum == n - 1:  # the whole column is "wide": no lumbar spine above it to count
        sacrum = None
        notes.append("every segment of the column is wide; no sacrum could be told apart")
    last_rib = None
    lowest = sacrum + 1 if sacrum is not None else 0
    ribbed = [k for k in range(lowest, n) if rib_on[k]]
    if ribbed:
        last_rib = min(ribbed)
    if sacrum is None and last_rib is None:
        raise LevelCountError(REFUSAL_NO_REFERENCE)
    if "last rib" not in references and sacrum is None:
        raise LevelCountError(
            "levels cannot be counted from the sacrum: it is not in the field of view. A rib-bearing vertebra is: "
            "--levels-by counting counts down from the last rib, which is less reliable (a short 12th rib is easily "
            "missed, and then every level is off by one); or give a level map (--structures) or a level model")
    if "sacrum" not in references and last_rib is None:
        raise LevelCountError("levels cannot be counted from the last rib: no rib-bearing vertebra is in the field of "
                              "view; count from the sacrum, or give a level map (--structures) or a level model")
    if "sacrum" not in references:
        sacrum = None
    if "last rib" not in references:
        last_rib = None
    names = ["?"] * n
    if last_rib is not None:
        names[last_rib] = "T12"
        for k in range(last_rib + 1, n):
            names[k] = f"T{12 - (k - last_rib)}" if 12 - (k - last_rib) >= 1 else "?"
    by_rib = {}
    if last_rib is not None:
        for i, k in enumerate(range(last_rib - 1, lowest - 1, -1)):
            by_rib[k] = f"L{i + 1}"
    if sacrum is not None:
        reference = "sacrum"
        for k in range(0, sacrum + 1):
            names[k] = "sacrum"
        between = (last_rib - sacrum - 1) if last_rib is not None else None
        for i, k in enumerate(range(sacrum + 1, min(sacrum + 6, n))):
            names[k] = f"L{5 - i}"  # the sacrum's count wins, through a lumbar rib too
        for k in range(sacrum + 6, last_rib if last_rib is not None else n):
            names[k] = "?"  # a sixth lumbar-type vertebra (or a thoracic one of unknown number)
        if between is not None and between != 5:
            notes.append(f"transitional anatomy: {between} vertebrae lie between the last rib-bearing vertebra and "
                         f"the sacrum (5 expected); the count from the last rib disagrees with the count from the "
                         f"sacrum, and the lumbar levels are counted from the sacrum")
    else:
        reference = "last rib"
        for k, name in by_rib.items():
            names[k] = name if name in LUMBAR else "?"
    # the thoracic names above T12 (record only, no map code) stop at the first implausible body too
    thoracic = [k for k in range(n) if names[k].startswith("T") and names[k] != "T12"]
    bad = next((k for k in thoracic if k < n - 1 and not THORACIC_HEIGHT_MM[0] <= heights[k] <= THORACIC_HEIGHT_MM[1]),
               None)
    if bad is not None:
        past = [k for k in thoracic if k >= bad]
        notes.append(f"the vertebra counted as {names[bad]} has an implausible body height of {heights[bad]:.0f} mm "
                     f"({THORACIC_HEIGHT_MM[0]:.0f}-{THORACIC_HEIGHT_MM[1]:.0f} mm expected for a thoracic vertebra): "
                     f"it and the vertebrae above it ({', '.join(names[k] for k in past)}) are left unnamed")
        for k in past:
            names[k] = "?"
    # from the reference outwards, the first implausible body stops the count (ends are cut by the field of view)
    outward = list(range(sacrum + 1, n)) if reference == "sacrum" else list(range(last_rib, -1, -1))
    stop = next((i for i, k in enumerate(outward)
                 if 0 < k < n - 1 and not MIN_HEIGHT_MM <= heights[k] <= MAX_HEIGHT_MM), None)
    if stop is not None:
        k, past = outward[stop], outward[stop:]
        notes.append(f"the vertebra counted as {names[k]} has an implausible body height of {heights[k]:.0f} mm "
                     f"(15-45 mm expected): a disc may have been missed or split, so it and the vertebrae past it "
                     f"({', '.join(names[j] for j in past if names[j] != '?')}) are left unnamed")
        for j in past:
            names[j] = "?"
    if not any(name in LUMBAR for name in names):
        raise LevelCountError("levels cannot be counted: " + (notes[-1] if notes else "no lumbar vertebra was named")
                              + "; check the segmentation, or give a level map (--structures) or a level model")
    labels = _label_voxels(bone, spacing, line, t, l, p, segs, names)
    vertebrae = []
    from spinect.plan import LEVEL_MAP_NAMES

    for k, (seg, name) in enumerate(zip(segs, names)):
        code = LEVEL_MAP_NAMES.index(name) if name in LEVEL_MAP_NAMES else 0
        mine = labels == k + 1
        idx = np.argwhere(mine)
        entry = {"name": name, "code": code, "s_mm": [round(seg[0] * STEP_MM, 1), round(seg[1] * STEP_MM, 1)],
                 "height_mm": round(heights[k], 1), "voxels": int(idx.shape[0]), "rib": rib_on[k], "wide": wide[k],
                 "split_at_foramina": k in from_split,
                 "z_range": None, "centre_mm": None}
        if idx.size:
            entry["z_range"] = [int(idx[:, 0].min()), int(idx[:, 0].max())]
            centre = idx.mean(axis=0) * spacing
            entry["centre_mm"] = [round(float(c), 1) for c in (to_world(centre[None])[0] if to_world else centre)]
        vertebrae.append(entry)
    lut = np.zeros(n + 1, dtype=np.uint8)
    for k, name in enumerate(names):
        lut[k + 1] = LEVEL_MAP_NAMES.index(name) if name in LEVEL_MAP_NAMES else 0
    seen = tuple(r for r, found in (("sacrum", sacrum is not None), ("last rib", last_rib is not None)) if found)
    return LevelCount(levels=lut[labels], reference=reference, vertebrae=vertebrae, notes=notes, references_seen=seen)


def _label_voxels(bone, spacing, line, t, l, p, segs, names) -> np.ndarray:
    """Segment index + 1 per bone voxel near the canal (0 elsewhere): flooded from the bodies."""
    from scipy.spatial import cKDTree
    from skimage.segmentation import watershed

    lo = np.maximum(np.floor((line.min(axis=0) - 170.0) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((line.max(axis=0) + 170.0) / spacing).astype(int) + 1, bone.shape)
    lo[0] = max(int(np.floor((line[:, 0].min() - 20.0) / spacing[0])), 0)
    hi[0] = min(int(np.ceil((line[:, 0].max() + 20.0) / spacing[0])) + 1, bone.shape[0])
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = bone[box]
    pos = np.argwhere(sub)
    labels = np.zeros(bone.shape, dtype=np.int32)
    if pos.size == 0:
        return labels
    mm = (pos + lo) * spacing
    dist, near = cKDTree(line).query(mm)
    d = mm - line[near]
    uu, vv, ww = (d * l[near]).sum(1), (d * p[near]).sum(1), (d * t[near]).sum(1)
    seg_of = np.zeros(len(line), dtype=np.int32)
    for k, (a, b) in enumerate(segs):
        seg_of[a:b] = k + 1
    k_near = seg_of[near]
    region = (np.abs(uu) <= LABEL_U_MM) & (vv >= LABEL_V_MM[0]) & (vv <= LABEL_V_MM[1]) & (np.abs(ww) <= 15.0)
    region &= k_near > 0
    s_near = near.astype(float)
    edge = np.zeros(len(pos), dtype=bool)
    for a, b in segs:
        edge |= (s_near >= a) & (s_near < b) & ((s_near < a + 3) | (s_near >= b - 3))
    body = region & (np.abs(uu) <= 18.0) & (vv >= -45.0) & (vv <= -8.0) & ~edge
    # the pedicles too: each arch floods from its own pedicles, not across bridged facet joints from the next level
    body |= region & (np.abs(uu) >= PEDICLE_U_MM[0]) & (np.abs(uu) <= PEDICLE_U_MM[1]) \
        & (vv >= PEDICLE_V_MM[0]) & (vv <= PEDICLE_V_MM[1]) & ~edge
    mask = np.zeros(sub.shape, dtype=bool)
    markers = np.zeros(sub.shape, dtype=np.int32)
    r = pos[region]
    mask[r[:, 0], r[:, 1], r[:, 2]] = True
    b = pos[body]
    markers[b[:, 0], b[:, 1], b[:, 2]] = k_near[body]
    flooded = watershed(np.zeros(sub.shape, dtype=np.uint8), markers=markers, mask=mask) if markers.any() else markers
    # region voxels the flood did not reach (not connected to a body) take their place along the axis
    missing = mask & (flooded == 0)
    if missing.any():
        fill = np.zeros(sub.shape, dtype=np.int32)
        fill[r[:, 0], r[:, 1], r[:, 2]] = k_near[region]
        flooded[missing] = fill[missing]
    labels[box] = flooded
    return labels


def count_levels_image(labels, bone_value: int | None = 1, *,
                       references: Sequence[str] = ALL_REFERENCES) -> tuple[Any, LevelCount]:
    """Count the levels of a label image (SimpleITK), any orientation.

    Args:
        labels: label image whose ``bone_value`` voxels are bone (``bone_value=None``: every
            nonzero voxel is bone, e.g. a bone mask).
        bone_value: the bone label (SPINECT: 1).
        references: see :func:`count_levels`.

    Returns:
        (UInt8 level map on ``labels``' grid with :data:`spinect.plan.LEVEL_MAP_NAMES` codes,
        :class:`LevelCount` with ``centre_mm`` in LPS world mm).

    Raises:
        LevelCountError: see :func:`count_levels`.
    """
    import SimpleITK as sitk

    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(labels.GetDirection())
    lps = sitk.DICOMOrient(labels, "LPS")
    arr = sitk.GetArrayViewFromImage(lps)
    bone = arr > 0 if bone_value is None else arr == bone_value
    spacing = lps.GetSpacing()[::-1]
    origin = np.array(lps.GetOrigin())
    direction = np.array(lps.GetDirection()).reshape(3, 3)

    def to_world(zyx_mm):
        return origin + (np.asarray(zyx_mm)[:, ::-1]) @ direction.T

    result = count_levels(bone, spacing, to_world=to_world, references=references)
    out = sitk.GetImageFromArray(result.levels)
    out.CopyInformation(lps)
    out = sitk.DICOMOrient(out, orientation)
    out.CopyInformation(labels)
    result.levels = sitk.GetArrayFromImage(out)
    return out, result
