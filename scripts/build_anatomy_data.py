#!/usr/bin/env python
"""Build the phantom v2 bone data: signed-distance grids of real bones + measured landmarks.

Reads the closed OBJ meshes of ``/work/shared/data/anatomy`` (see its README.md) and writes
``SpineCTSegmentation/spinect/phantom/data/anatomy/``:

* ``bones.npz``: per bone ``<source>__<bone>``: int8 signed distance (Z, Y, X) on an axis-aligned
  grid in the source's LPS frame (mm; negative inside), quantised with ``SDF_STEP_MM`` and clipped
  at +-12.7 mm;
* ``bones.json``: per bone the grid (origin of node (0, 0, 0) as x, y, z mm; spacing mm), the mesh
  bounding box and, per vertebra, its measured local frame (origin = body centre, rows = lateral
  (left), posterior, cranial axes in source LPS) and dimensions in that frame (mm, degrees);
* the licence files of the sources and a README with the attribution.

Sign: parity ray casting along z (exact for closed meshes); magnitude: exact point-triangle
distance to the few triangles nearest in a dense surface sample (``trimesh.triangles.closest_point``;
trimesh is a build-time extra only). Deterministic.

Usage: ``python scripts/build_anatomy_data.py [--src /work/shared/data/anatomy] [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

SDF_STEP_MM = 0.1
CLIP_MM = 12.7
PAD_MM = 10.0
_OUT = Path(__file__).resolve().parents[1] / "SpineCTSegmentation/spinect/phantom/data/anatomy"

#: source folder -> (unit to mm, 3x3 matrix source xyz -> LPS (left, posterior, superior)).
#: VHM: x anterior, y lateral (the meshes are mirror-symmetric, y is taken as left: a proper
#: rotation), z superior, metres. Clouthier's mean: the same axes in mm (the spinous processes
#: point to -x). gias3: scanner LPS (hip_bone_a has the lower x: right).
_VHM_AXES = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
SOURCES = {
    "vhm": ("vhm_lumbosacral", 1000.0, _VHM_AXES),
    "mean": ("clouthier_mean_L2L5", 1.0, _VHM_AXES),
    "gias3": ("gias3_pelvis", 1.0, np.eye(3)),
}


def load_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (N, 3) float, triangles (M, 3) int, 0-based) of an OBJ file (polygons fanned)."""
    verts, faces = [], []
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            verts.append([float(v) for v in line.split()[1:4]])
        elif line.startswith("f "):
            idx = [int(t.split("/")[0]) - 1 for t in line.split()[1:]]
            faces += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]
    return np.array(verts), np.array(faces, int)


def components(verts: np.ndarray, faces: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Connected pieces of a mesh as (vertices, faces) pairs, largest first."""
    n = len(verts)
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    _, lab = connected_components(graph, directed=False)
    out = []
    for c in np.unique(lab):
        keep = np.flatnonzero(lab == c)
        remap = -np.ones(n, int)
        remap[keep] = np.arange(len(keep))
        f = faces[np.all(lab[faces] == c, axis=1)]
        out.append((verts[keep], remap[f]))
    return sorted(out, key=lambda vf: -len(vf[1]))


def surface_samples(tri: np.ndarray, step_mm: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """Points on the triangles (T, 3, 3) at most ``step_mm`` apart, with their triangle index."""
    edge = np.max(np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2), axis=1)
    nsub = np.maximum(np.ceil(edge / step_mm).astype(int), 1)
    pts, ids = [], []
    for n in np.unique(nsub):
        sel = np.flatnonzero(nsub == n)
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        ok = i + j <= n
        w = np.stack([i[ok], j[ok]], axis=1) / n
        t = tri[sel]
        p = t[:, None, 0] + w[None, :, :1] * (t[:, None, 1] - t[:, None, 0]) + w[None, :, 1:] * (t[:, None, 2] - t[:, None, 0])
        pts.append(p.reshape(-1, 3))
        ids.append(np.repeat(sel, len(w)))
    return np.concatenate(pts), np.concatenate(ids)


def inside_parity(tri: np.ndarray, origin: np.ndarray, h: float, shape_zyx) -> np.ndarray:
    """Inside mask (Z, Y, X) of a closed mesh by parity of z-ray crossings below each node."""
    nz, ny, nx = shape_zyx
    xy = (tri[:, :, :2] - origin[:2]) / h
    lo = np.clip(np.ceil(xy.min(axis=1)).astype(int), 0, [nx, ny])
    hi = np.clip(np.floor(xy.max(axis=1)).astype(int), -1, [nx - 1, ny - 1])
    cx, cy = np.maximum(hi[:, 0] - lo[:, 0] + 1, 0), np.maximum(hi[:, 1] - lo[:, 1] + 1, 0)
    count = cx * cy
    t = np.repeat(np.arange(len(tri)), count)
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    ix = lo[t, 0] + k % cx[t]
    iy = lo[t, 1] + k // cx[t]
    p = np.stack([ix, iy], axis=1).astype(float)
    a, b, c = xy[t, 0], xy[t, 1], xy[t, 2]
    den = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    ok = np.abs(den) > 1e-12
    den = np.where(ok, den, 1.0)
    u = ((p[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (p[:, 1] - a[:, 1])) / den
    v = ((b[:, 0] - a[:, 0]) * (p[:, 1] - a[:, 1]) - (p[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])) / den
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1)
    z = tri[t, 0, 2] + u * (tri[t, 1, 2] - tri[t, 0, 2]) + v * (tri[t, 2, 2] - tri[t, 0, 2])
    kz = np.clip(np.ceil((z - origin[2]) / h).astype(int), 0, nz)
    counts = np.zeros((nz + 1, ny, nx), np.int32)
    np.add.at(counts, (kz[hit], iy[hit], ix[hit]), 1)
    return (np.cumsum(counts[:-1], axis=0) % 2).astype(bool)


def signed_distance_grid(verts: np.ndarray, faces: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """(origin_xyz_mm (3,), sdf (Z, Y, X) float32 mm) on nodes spaced ``h`` around the mesh."""
    from trimesh.triangles import closest_point

    # odd offset: no node lies exactly on a mesh edge or vertex (parity stays exact)
    origin = np.floor((verts.min(axis=0) - PAD_MM) / h) * h + h * np.array([0.01234, 0.02345, 0.03456])
    shape_xyz = np.ceil((verts.max(axis=0) + PAD_MM - origin) / h).astype(int) + 1
    shape = tuple(int(v) for v in shape_xyz[::-1])
    tri = verts[faces]
    inside = inside_parity(tri, origin, h, shape)
    samples, sample_tri = surface_samples(tri)
    tree = cKDTree(samples)
    iz, iy, ix = np.indices(shape)
    nodes = origin + h * np.stack([ix.ravel(), iy.ravel(), iz.ravel()], axis=1)
    dist, _ = tree.query(nodes, k=1, distance_upper_bound=CLIP_MM + 1.0, workers=2)
    dist = np.minimum(dist, CLIP_MM + 1.0)
    near = np.flatnonzero(dist < 3.0)
    _, idx = tree.query(nodes[near], k=8, workers=2)
    best = np.full(len(near), np.inf)
    for j in range(idx.shape[1]):
        cp = closest_point(tri[sample_tri[idx[:, j]]], nodes[near])
        best = np.minimum(best, np.linalg.norm(cp - nodes[near], axis=1))
    dist[near] = best
    sdf = np.where(inside.ravel(), -dist, dist).reshape(shape).astype(np.float32)
    return origin, sdf


class Sampler:
    """Trilinear samples of a source SDF grid in a local frame (origin, rows = axes)."""

    def __init__(self, origin_xyz: np.ndarray, h: float, sdf: np.ndarray) -> None:
        self.origin, self.h, self.sdf = origin_xyz, h, sdf

    def at(self, points_xyz: np.ndarray) -> np.ndarray:
        idx = ((np.asarray(points_xyz) - self.origin) / self.h)[..., ::-1]
        flat = idx.reshape(-1, 3).T
        return ndimage.map_coordinates(self.sdf, flat, order=1, mode="nearest").reshape(idx.shape[:-1])

    def local_grid(self, centre: np.ndarray, axes: np.ndarray, lo, hi, step: float = 0.5):
        """Inside mask on a local (lateral, posterior, cranial) grid: (mask (L, P, C), axes values)."""
        ticks = [np.arange(a, b + 1e-9, step) for a, b in zip(lo, hi)]
        g = np.stack(np.meshgrid(*ticks, indexing="ij"), axis=-1)
        return self.at(centre + g @ axes) < 0, ticks


def _tilt(tau: float) -> np.ndarray:
    return np.array([[1.0, 0.0, 0.0], [0.0, np.cos(tau), np.sin(tau)], [0.0, -np.sin(tau), np.cos(tau)]])


def _body_component(sag: np.ndarray, ty: np.ndarray, tz: np.ndarray, z_near: float = 0.0) -> np.ndarray:
    """Mask of the vertebral body in a midsagittal (P, C) slice: the component holding the most
    anterior inside pixel within 8 mm of height ``z_near``."""
    lab, _ = ndimage.label(sag)
    rows = np.abs(tz - z_near) < 8.0
    cand = np.argwhere(sag & rows[None, :])
    i, j = cand[np.argmin(cand[:, 0])]
    return lab == lab[i, j]


def _endplate_lines(body: np.ndarray, ty: np.ndarray, tz: np.ndarray):
    """Least-squares lines z = m y + c of the body's top and bottom over its central 60 %."""
    cols = np.flatnonzero(body.any(axis=1))
    y0, y1 = ty[cols[0]], ty[cols[-1]]
    sel = [c for c in cols if y0 + 0.2 * (y1 - y0) <= ty[c] <= y1 - 0.2 * (y1 - y0)]
    top = np.array([tz[np.flatnonzero(body[c])[-1]] for c in sel])
    bot = np.array([tz[np.flatnonzero(body[c])[0]] for c in sel])
    ys = ty[sel]
    return np.polyfit(ys, top, 1), np.polyfit(ys, bot, 1), y0, y1


def measure_vertebra(s: Sampler, verts: np.ndarray, *, sacrum: bool = False) -> dict:
    """Local frame and dimensions of one vertebra (or the S1 part of a sacrum), mm / degrees."""
    xc = 0.5 * (verts[:, 0].min() + verts[:, 0].max())
    if sacrum:
        centre, axes, b, h_post, h_ant, s1_len = _s1_frame(s, verts, xc)
    else:
        centre, axes = _lumbar_frame(s, verts, xc)
    # refined measurements in the local frame
    mask, (tx, ty, tz) = s.local_grid(centre, axes, (-70, -45, -60), (70, 75, 60))
    i0 = int(np.argmin(np.abs(tx)))
    sag = mask[i0]
    if not sacrum:
        body = _body_component(sag, ty, tz)
        top, bot, y_a, y_p = _endplate_lines(body, ty, tz)
        cy = 0.5 * (y_a + y_p)
        cz = 0.5 * (np.polyval(top, cy) + np.polyval(bot, cy))
        centre = centre + np.array([0.0, cy, cz]) @ axes
        b = 0.5 * (y_p - y_a)
        h_post = float(np.polyval(top, y_p) - np.polyval(bot, y_p))
        h_ant = float(np.polyval(top, y_a) - np.polyval(bot, y_a))
        mask, (tx, ty, tz) = s.local_grid(centre, axes, (-70, -45, -60), (70, 75, 60))
        sag = mask[i0]
    # half-width a: axial slice through the centre (just under the endplate for S1: alae)
    z_a = 0.5 * h_post - 3.0 if sacrum else 0.0
    ax = mask[:, :, int(np.argmin(np.abs(tz - z_a)))]
    lab, _ = ndimage.label(ax)
    j0 = int(np.argmin(np.abs(ty)))
    row = lab[:, j0] == lab[i0, j0]
    xs = tx[row]
    half_width = 0.5 * float(xs.max() - xs.min())
    if sacrum:  # the body merges with the alae: half the S1 endplate's depth x 1.4 (typical ratio)
        half_width = min(half_width, 1.45 * b)
    else:
        centre = centre + 0.5 * float(xs.max() + xs.min()) * axes[0]
        mask, (tx, ty, tz) = s.local_grid(centre, axes, (-70, -45, -60), (70, 75, 60))
        sag = mask[i0]
    out = {"origin_xyz_mm": centre.tolist(), "axes": axes.tolist(), "a": half_width, "b": float(b),
           "h_post": float(h_post), "h_ant": float(h_ant)}
    # canal depth: from the posterior wall back to the first bone (arch), 10th percentile over heights
    gaps = []
    for k in np.flatnonzero(np.abs(tz) < 0.5 * h_post - 1.0):
        col = np.flatnonzero(sag[:, k] & (ty > b + 0.5))
        if col.size:
            gaps.append(ty[col[0]] - b)
    out["canal_depth"] = float(np.percentile(gaps, 10)) if gaps else 16.0
    sides = {}
    for side, sg in (("left", 1.0), ("right", -1.0)):
        sides[side] = _pedicle_and_sap(mask, tx, ty, tz, b, h_post, sg, s, centre, axes, sacrum=sacrum)
    out["sides"] = sides
    out["canal_half"] = float(np.mean([v["medial_wall"] for v in sides.values()]))
    if sacrum:
        out["s1_length"] = s1_len
    return out


def _lumbar_frame(s: Sampler, verts: np.ndarray, xc: float) -> tuple[np.ndarray, np.ndarray]:
    """Rough origin and axes: tilt about the lateral axis so the endplates' mean slope is zero."""
    centre = np.array([xc, *(0.5 * (verts[:, 1:].min(axis=0) + verts[:, 1:].max(axis=0)))])
    axes = np.eye(3)
    for _ in range(2):
        mask, (tx, ty, tz) = s.local_grid(centre, axes, (-1, -70, -60), (1, 70, 60))
        sag = mask[int(np.argmin(np.abs(tx)))]
        body = _body_component(sag, ty, tz, z_near=0.0)
        top, bot, y_a, y_p = _endplate_lines(body, ty, tz)
        tau = np.arctan(0.5 * (top[0] + bot[0]))
        cy = 0.5 * (y_a + y_p)
        cz = 0.5 * (np.polyval(top, cy) + np.polyval(bot, cy))
        centre = centre + np.array([0.0, cy, cz]) @ axes
        axes = _tilt(tau) @ axes
    return centre, axes


def _s1_frame(s: Sampler, verts: np.ndarray, xc: float):
    """S1 frame from the midsagittal top profile: the superior endplate runs from the promontory
    (most anterior column) back to the first drop of the profile."""
    lo, hi = verts.min(axis=0), verts.max(axis=0)
    ty = np.arange(lo[1] - 2, hi[1] + 2, 0.5)
    tz = np.arange(lo[2] - 2, hi[2] + 2, 0.5)
    g = np.stack(np.meshgrid(ty, tz, indexing="ij"), axis=-1)
    pts = np.concatenate([np.full(g.shape[:-1] + (1,), xc), g], axis=-1)
    sag = s.at(pts) < 0
    top_z = np.array([tz[np.flatnonzero(c)[-1]] if c.any() else -np.inf for c in sag])
    cols = np.flatnonzero(np.isfinite(top_z))
    # the upper half of the sacrum only (the coccyx may reach further anteriorly)
    upper = cols[top_z[cols] > lo[2] + 0.55 * (hi[2] - lo[2])]
    j0 = upper[0]
    run = [j0]  # up the endplate to the posterior-superior corner (the profile then falls)
    for j in range(j0 + 1, len(ty)):
        if not np.isfinite(top_z[j]) or top_z[j] < max(top_z[run]) - 0.3:
            break
        run.append(j)
    ys, zs = ty[run], top_z[run]
    keep = (ys > ys[0] + 3.0) & (ys < ys[-1] - 2.0)  # the rounded corners aside
    m, c = np.polyfit(ys[keep], zs[keep], 1)
    tau = np.arctan(m)
    axes = _tilt(tau)
    p0, p1 = np.array([xc, ys[0], m * ys[0] + c]), np.array([xc, ys[-1], m * ys[-1] + c])
    length = float(np.linalg.norm(p1 - p0))
    b = 0.5 * length
    h = 28.0  # nominal S1 body height (its lower end is fused)
    plate = 0.5 * (p0 + p1)
    centre = plate - 0.5 * h * axes[2]
    return centre, axes, b, h, h, length


def _pedicle_and_sap(mask, tx, ty, tz, b, h_post, sg, s: Sampler, centre, axes, *, sacrum: bool = False) -> dict:
    """Pedicle (the narrowest coronal cross-section behind the posterior wall) and SAP of one side.
    S1's pedicle is sought below its superior endplate only (above it lie the SAP and the ala)."""
    z_max = 0.5 * h_post - 1.5 if sacrum else 0.5 * h_post + 1.0
    a_lim = float(np.max(tx[mask[:, int(np.argmin(np.abs(ty))), int(np.argmin(np.abs(tz)))]])) if mask.any() else 30.0

    def section(y):
        cor = mask[:, int(np.argmin(np.abs(ty - y))), :] & (sg * tx[:, None] > 2.0) & (sg * tx[:, None] < a_lim + 2.0)
        cor &= (np.abs(tz) <= 0.5 * h_post + 1.0)[None, :] & (tz <= z_max)[None, :]
        lab, n = ndimage.label(cor)
        if n == 0:
            return None
        sizes = ndimage.sum(cor, lab, range(1, n + 1))
        comp = lab == 1 + int(np.argmax(sizes))
        ii, kk = np.nonzero(comp)
        return tx[ii], tz[kk]

    # the pedicle is the narrowest coronal section between the body and the articular pillar
    ys = np.arange(b + 2.0, b + 14.01, 1.0)
    secs = [section(y) for y in ys]
    area = [len(sc[0]) if sc is not None else np.inf for sc in secs]
    k = int(np.argmin(area))
    y_mid = float(ys[k])
    x, z = secs[k]
    medial = float(np.min(sg * x))
    # the section widens laterally into the transverse process root: the pedicle proper is its
    # medial 12 mm; its height is read over the medial 5 mm (the foramen's roof)
    body = sg * x <= medial + 12.0
    roof = sg * x <= medial + 5.0
    x, z = x[body], np.where(roof, z, np.nan)[body]
    z = z[np.isfinite(z)]
    xa, _ = secs[max(k - 3, 0)]
    xb, _ = secs[min(k + 3, len(ys) - 1)]
    dy = float(ys[min(k + 3, len(ys) - 1)] - ys[max(k - 3, 0)])
    angle = float(np.degrees(np.arctan2(sg * (xb.mean() - xa.mean()), dy)))
    ped = {"mid": [float(abs(x.mean())), y_mid, float(z.mean())],
           "width": float(np.ptp(x) + 0.5), "height": float(np.ptp(z) + 0.5),
           "inferior_margin": float(z.min()), "medial_wall": medial, "angle_deg": float(np.clip(angle, 0.0, 35.0))}
    # SAP: bone above the endplate's posterior edge, behind the body, lateral to the canal
    z_top = 0.5 * h_post
    sap = mask & (tz[None, None, :] > z_top + 1.0) & (ty[None, :, None] > b + 3.0) & (sg * tx[:, None, None] > ped["medial_wall"] - 2.0)
    lab, n = ndimage.label(sap)
    sizes = ndimage.sum(sap, lab, range(1, n + 1))
    comp = lab == 1 + int(np.argmax(sizes))
    ii, jj, kk = np.nonzero(comp)
    face = []
    for k in np.unique(kk):
        if not z_top + 1.0 < tz[k] <= z_top + 9.0:
            continue
        sel = kk == k
        jmin = jj[sel].min()
        near = sel & (jj <= jmin + 2)
        face.append([tx[ii[near]].mean(), ty[jmin], tz[k]])
    face = np.array(face).mean(axis=0)
    world = centre + face @ axes
    eps = 0.3
    grad = np.array([(s.at(world + eps * e) - s.at(world - eps * e)) / (2 * eps) for e in np.eye(3)])
    normal_local = axes @ grad
    normal_local /= max(np.linalg.norm(normal_local), 1e-9)
    sap_centroid = np.array([tx[ii].mean(), ty[jj].mean(), tz[kk].mean()])
    return {"pedicle": ped, "medial_wall": ped["medial_wall"],
            "sap_face": [float(v) for v in face], "sap_normal": [float(v) for v in normal_local],
            "sap_centroid": [float(v) for v in sap_centroid], "sap_top": float(tz[kk].max())}


def _bones(src: Path, with_gias3: bool = False) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """name -> (kind, vertices LPS mm, faces) of every bone used by the phantom."""
    out = {}

    def lps(key, path):
        folder, unit, m = SOURCES[key]
        v, f = load_obj(src / folder / path)
        return (v * unit) @ m.T, f

    for lv in ("L1", "L2", "L3", "L4", "L5"):
        out[f"vhm__{lv}"] = ("vertebra", *lps("vhm", f"{lv}.obj"))
    pieces = components(*lps("mean", "meanMesh_L2-L5.obj"))[:4]
    for lv, (v, f) in zip(("L5", "L4", "L3", "L2"), sorted(pieces, key=lambda vf: vf[0][:, 2].mean())):
        out[f"mean__{lv}"] = ("vertebra", v, f)
    out["vhm__sacrum"] = ("sacrum", *lps("vhm", "sacrum.obj"))
    # both hip bones in one grid (the mesh is one closed piece, joined at the symphysis); the
    # phantom splits them at the sacrum's midsagittal plane
    out["vhm__hips"] = ("ilium", *lps("vhm", "hip_bones.obj"))
    if with_gias3:  # off: its sacrum has no open canal in the midline and needs registering
        out["gias3__sacrum"] = ("sacrum", *lps("gias3", "sacrum.obj"))
        (va, fa), (vb, fb) = lps("gias3", "hip_bone_a.obj"), lps("gias3", "hip_bone_b.obj")
        out["gias3__hips"] = ("ilium", np.concatenate([va, vb]), np.concatenate([fa, fb + len(va)]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default="/work/shared/data/anatomy", help="folder of the source meshes")
    ap.add_argument("--out", default=str(_OUT), help="output folder")
    ap.add_argument("--spacing", type=float, default=0.8, help="grid spacing of vertebrae and sacra (mm)")
    ap.add_argument("--ilium-spacing", type=float, default=1.5, help="grid spacing of the hip bones (mm)")
    ap.add_argument("--cache", default="", help="optional folder keeping each bone's grid between runs")
    ap.add_argument("--measure-only", action="store_true", help="reuse the grids of --out, redo the measurements")
    args = ap.parse_args(argv)
    src, out = Path(args.src), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arrays, meta = {}, {"format": "spinect-phantom-anatomy", "version": 1, "sdf_step_mm": SDF_STEP_MM,
                        "clip_mm": CLIP_MM, "bones": {}}
    old = {}
    if args.measure_only:
        old_meta = json.loads((out / "bones.json").read_text())["bones"]
        with np.load(out / "bones.npz") as z:
            old = {k: (np.asarray(old_meta[k]["origin_xyz_mm"]), z[k]) for k in z.files}
    for name, (kind, v, f) in _bones(src).items():
        h = args.ilium_spacing if kind == "ilium" else args.spacing
        cached = Path(args.cache) / f"{name}_{h:g}.npz" if args.cache else None
        if name in old:
            origin, q = old[name]
        elif cached is not None and cached.exists():
            with np.load(cached) as z:
                origin, q = z["origin"], z["sdf"]
        else:
            origin, sdf = signed_distance_grid(v, f, h)
            q = np.clip(np.rint(sdf / SDF_STEP_MM), -127, 127).astype(np.int8)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.savez(cached, origin=origin, sdf=q)
        arrays[name] = q
        entry = {"kind": kind, "origin_xyz_mm": origin.tolist(), "spacing_mm": h, "shape_zyx": list(q.shape),
                 "bbox_xyz_mm": [v.min(axis=0).tolist(), v.max(axis=0).tolist()], "n_faces": int(len(f))}
        if kind in ("vertebra", "sacrum"):
            entry["measured"] = measure_vertebra(Sampler(origin, h, q.astype(np.float32) * SDF_STEP_MM), v,
                                                 sacrum=kind == "sacrum")
        meta["bones"][name] = entry
        print(name, q.shape, {k: round(entry.get("measured", {}).get(k, 0.0), 1) for k in ("a", "b", "h_post", "h_ant", "canal_half", "canal_depth")}, flush=True)
    np.savez_compressed(out / "bones.npz", **arrays)
    (out / "bones.json").write_text(json.dumps(meta, indent=1))
    for key, (folder, _, _) in SOURCES.items():
        if key == "gias3":
            continue
        shutil.copyfile(src / folder / "LICENSE.txt", out / f"LICENSE_{key}.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
