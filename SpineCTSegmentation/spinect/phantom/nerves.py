"""Dural sac and nerve roots.

Each root leaves the dural sac at the disc level above its vertebra, runs down the lateral
recess medial to its pedicle (the *traversing* segment), wraps under the pedicle's inferior
margin with a chosen clearance, passes the upper part of the foramen as the ganglion (5-7 mm)
and runs antero-laterally and caudally outside (the *exiting* segment). S1 and S2 leave through
the sacral foramina, which are tunnels carved around them. Centrelines are cubic splines through
control points, sampled every 1 mm; samples that come closer to bone than the wanted fat gap
are pushed away along the bone's distance gradient (:func:`relax_roots`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicSpline

from spinect.phantom.bones import SIDE_SIGN, pedicle
from spinect.phantom.params import PhantomParams
from spinect.phantom.parts import Part
from spinect.phantom.primitives import tube_segments
from spinect.phantom.skeleton import VertebraFrame
from spinect.phantom.structures import DISC_NAMES, VERTEBRA_NAMES

__all__ = ["Root", "root_centreline", "relax_roots", "dura_centreline", "cauda_part_segments", "DURA_SEMI_AXES", "dura_semi_axes"]

#: Dural sac semi-axes (lateral, antero-posterior) per vertebra, mm.
DURA_SEMI_AXES = {"L1": (9.5, 7.5), "L2": (9.0, 7.0), "L3": (8.5, 6.5), "L4": (8.0, 6.0), "L5": (7.0, 5.5), "S1": (5.5, 4.5)}
_STEP_MM = 1.0


@dataclass
class Root:
    """One nerve root's centreline.

    Attributes:
        name, side: e.g. ``L5``, ``left``.
        points: (N, 3) centreline samples, body mm, from the dural sac outwards.
        radii: (N,) radius at each sample, mm.
        split: first sample of the exiting segment (under the pedicle).
        tunnel_end: samples before this index may pass through S1/sacrum bone (sacral foramen,
            carved); 0 for lumbar roots.
    """

    name: str
    side: str
    points: np.ndarray
    radii: np.ndarray
    split: int
    tunnel_end: int = 0

    def segment(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(points, radii) of the ``traversing`` or ``exiting`` segment (sharing one sample)."""
        if which == "traversing":
            return self.points[: self.split + 1], self.radii[: self.split + 1]
        return self.points[self.split :], self.radii[self.split :]


def _lumbar_controls(frames, params: PhantomParams, name: str, side: str) -> tuple[np.ndarray, np.ndarray, float]:
    frame: VertebraFrame = frames[name]
    vp, rp, s = params.vertebrae[name], params.roots[name][side], SIDE_SIGN[side]
    ped = pedicle(frame, vp, side)
    x_pm, _, zp = ped.local_mid
    i = VERTEBRA_NAMES.index(name)
    disc_above = params.discs[DISC_NAMES[i - 1]][0] if i > 0 else 8.0
    d_lat, d_ap = dura_semi_axes(params, name)
    b, ri, rd = vp.b, rp.r_intra, rp.r_drg
    pts = [(s * max(d_lat - ri - 0.5, 2.0), b + 1.5 + 0.9 * d_ap, 0.5 * vp.h_post + 0.5 * disc_above + 4.0),
           (s * (vp.canal_half - 1.5 - ri), b + 1.5 + ri, zp + 1.0)]
    radii = [ri, ri]
    for k, theta in enumerate(np.radians([205.0, 240.0, 272.0])):
        r = ri + (rd - ri) * (k + 1) / 3.0
        c = rp.gap_pedicle + r
        pts.append((s * (x_pm + (ped.half_width + c) * np.cos(theta)), b + 1.3 + r, zp + (ped.half_height + c) * np.sin(theta)))
        radii.append(r)
    z_exit = zp - ped.half_height - rp.gap_pedicle - rd - 1.0
    x = x_pm + ped.half_width + 4.0 + rd
    y = b + 0.3 + rd
    pts.append((s * x, y, z_exit))
    radii.append(rd)
    forward = max(rp.forward, 0.9) if name == "L5" else rp.forward
    for _ in range(3):
        x, y, z_exit = x + 11.0, y - 11.0 * forward, z_exit - 11.0 * rp.descent
        pts.append((s * x, y, z_exit))
        radii.append(0.85 * rd)
    return np.array([frame.point(*p) for p in pts]), np.array(radii), vp.canal_half


def _sacral_controls(frames, params: PhantomParams, name: str, side: str) -> tuple[np.ndarray, np.ndarray, float, int]:
    frame = frames["S1"]
    vp, rp, s = params.vertebrae["S1"], params.roots[name][side], SIDE_SIGN[side]
    ri, rd, b, a, h = rp.r_intra, rp.r_drg, vp.b, vp.a, vp.h_post
    if name == "S1":
        ped = pedicle(frame, vp, side)
        _, _, zp = ped.local_mid
        d_lat, d_ap = dura_semi_axes(params, "S1")
        disc = params.discs["L5S1"][0]
        pts = [(s * max(d_lat - ri - 0.5, 1.5), b + 1.5 + 0.9 * d_ap, 0.5 * disc + 4.0),
               (s * (vp.canal_half - 1.5 - ri), b + 1.5 + ri, zp + 1.0),
               (s * (vp.canal_half - 0.5), b + 1.0, zp - ped.half_height - 3.5),
               (s * (a - 3.0), b - 9.0, -0.72 * h), (s * (a + 1.0), -b + 3.0, -h - 4.0),
               (s * (a + 6.0), -b - 6.0, -h - 16.0), (s * (a + 13.0), -b - 11.0, -h - 34.0)]
        radii = [ri, ri, 0.5 * (ri + rd), rd, rd, 0.9 * rd, 0.85 * rd]
        tunnel = 5
    else:  # S2
        pts = [(s * 2.5, 23.0, -20.0), (s * 8.0, 20.0, -36.0), (s * 14.0, 9.0, -47.0), (s * 19.0, -8.0, -55.0),
               (s * 22.0, -22.0, -60.0), (s * 28.0, -27.0, -78.0)]
        radii = [ri, ri, 0.5 * (ri + rd), rd, rd, 0.9 * rd]
        tunnel = 5
    return np.array([frame.point(*p) for p in pts]), np.array(radii), vp.canal_half, tunnel


def dura_semi_axes(params: PhantomParams, name: str) -> tuple[float, float]:
    """Dural sac semi-axes (lateral, antero-posterior; mm) at vertebra ``name``: fitted to the
    measured canal on mesh phantoms (``params.extras["dura_semi_axes"]``), else the table."""
    fitted = params.extras.get("dura_semi_axes", {}).get(name)
    if fitted is not None:
        return float(fitted[0]), float(fitted[1])
    return DURA_SEMI_AXES[name][0] * params.dura_scale, DURA_SEMI_AXES[name][1] * params.dura_scale


def root_centreline(frames, params: PhantomParams, name: str, side: str) -> Root:
    """Spline centreline of one root, sampled every 1 mm, with its traversing/exiting split."""
    if name in ("S1", "S2"):
        ctrl, ctrl_r, canal_half, tunnel_ctrl = _sacral_controls(frames, params, name, side)
        frame = frames["S1"]
    else:
        ctrl, ctrl_r, canal_half = _lumbar_controls(frames, params, name, side)
        tunnel_ctrl, frame = 0, frames[name]
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))])
    spline = CubicSpline(chord, ctrl, bc_type="natural")
    t = np.linspace(0.0, chord[-1], max(int(chord[-1] / _STEP_MM) + 1, 2))
    points = spline(t)
    radii = np.interp(t, chord, ctrl_r)
    lateral = np.abs(frame.local(points)[:, 0])
    beyond = np.flatnonzero(lateral >= canal_half)
    split = int(beyond[0]) if beyond.size else len(points) // 2
    tunnel_end = int(np.searchsorted(t, chord[tunnel_ctrl])) if tunnel_ctrl else 0
    return Root(name, side, points, radii, split, tunnel_end)


def _bone_distance(points: np.ndarray, bones: list[Part], tunnel: np.ndarray, sacral: set[str]) -> np.ndarray:
    d = np.full(len(points), 1.0e4)
    for part in bones:
        v = part.sdf_points(points)
        if part.name in sacral:
            v = np.where(tunnel, 1.0e4, v)
        d = np.minimum(d, v)
    return d


def relax_roots(roots: list[Root], bones: list[Part], *, gap_mm: float = 1.2, iterations: int = 24) -> None:
    """Push root samples away from bone until each has ``gap_mm`` of clearance (in place).

    Samples in a sacral tunnel ignore S1 and the sacrum (the tunnel is carved around them).
    The first sample (inside the dural sac) stays fixed; moved samples are smoothed.
    """
    sacral = {"S1", "sacrum"}
    pts = np.concatenate([r.points for r in roots])
    radii = np.concatenate([r.radii for r in roots])
    tunnel = np.concatenate([np.arange(len(r.points)) < r.tunnel_end for r in roots])
    fixed = np.concatenate([np.arange(len(r.points)) == 0 for r in roots])
    h = 0.25
    for it in range(iterations):
        d = _bone_distance(pts, bones, tunnel, sacral)
        need = gap_mm + radii - d
        bad = (need > 0) & ~fixed
        if not bad.any():
            break
        idx = np.flatnonzero(bad)
        grad = np.zeros((idx.size, 3))
        for axis in range(3):
            off = np.zeros(3)
            off[axis] = h
            plus = _bone_distance(pts[idx] + off, bones, tunnel[idx], sacral)
            minus = _bone_distance(pts[idx] - off, bones, tunnel[idx], sacral)
            grad[:, axis] = (plus - minus) / (2 * h)
        grad /= np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-6)
        pts[idx] += grad * (need[idx, None] + 0.2)
        if it < iterations - 6:  # last passes push only, so smoothing cannot undo the clearance
            pts = _smooth(pts, roots, fixed)
    start = 0
    for r in roots:
        r.points = pts[start : start + len(r.points)].copy()
        start += len(r.points)


def _smooth(pts: np.ndarray, roots: list[Root], fixed: np.ndarray) -> np.ndarray:
    out = pts.copy()
    start = 0
    for r in roots:
        n = len(r.points)
        seg = pts[start : start + n]
        sm = seg.copy()
        sm[1:-1] = 0.25 * seg[:-2] + 0.5 * seg[1:-1] + 0.25 * seg[2:]
        keep = fixed[start : start + n]
        sm[keep] = seg[keep]
        out[start : start + n] = sm
        start += n
    return out


def dura_centreline(frames, params: PhantomParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dural sac centreline (K, 3) and semi-axes (K,) lateral, (K,) antero-posterior, from
    above L1 to its end at S2."""
    pts, lat, ap = [], [], []
    for name in VERTEBRA_NAMES[:-1]:
        f, vp = frames[name], params.vertebrae[name]
        dl, da = dura_semi_axes(params, name)
        first = name == "L1"
        for z in ((0.5 * vp.h_post + 25.0,) if first else ()) + (0.3 * vp.h_post, -0.3 * vp.h_post):
            pts.append(f.point(0.0, vp.b + 1.5 + da, z))
            lat.append(dl)
            ap.append(da)
    s1, vp = frames["S1"], params.vertebrae["S1"]
    dl, da = dura_semi_axes(params, "S1")
    for local, l, a in (((0.0, vp.b + 1.5 + da, -4.0), dl, da), ((0.0, vp.b + 4.0, -24.0), 0.6 * dl, 0.7 * da),
                        ((0.0, 23.0, -36.0), 2.0, 2.0)):
        pts.append(s1.point(*local))
        lat.append(l)
        ap.append(a)
    return np.array(pts), np.array(lat), np.array(ap)


def cauda_part_segments(frames) -> list:
    """Sacral roots (S3-S5) below the dural sac as one thin tube in the sacral canal."""
    s1 = frames["S1"]
    pts = np.array([s1.point(0.0, 23.0, -36.0), s1.point(0.0, 17.5, -50.0), s1.point(0.0, 8.0, -70.0)])
    return tube_segments(pts, [1.8, 1.8, 1.5])
