"""Assemble a phantom v2 anatomy on real bone shapes (:mod:`spinect.phantom.meshes`).

Same paint order and guarantees as :func:`spinect.phantom.anatomy.build_anatomy`: roots are routed
by :func:`nerves.root_centreline` from the fitted frames and pedicles, relaxed away from the real
bone, and every bone is carved 0.8 mm from every nerve (S1/sacrum 2.5 mm around the sacral roots).
Facet joints keep a joint space: each vertebra is carved 1 mm from the bone below it; the ilia are
carved 1.5 mm from the sacrum (the sacroiliac joint).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from spinect.phantom import anatomy as A
from spinect.phantom.bones import SIDE_SIGN, FacetJoint
from spinect.phantom.meshes import MeshPart, load_library, mesh_placement, rotate_axially
from spinect.phantom.nerves import relax_roots, root_centreline
from spinect.phantom.osteophytes import add_osteophytes
from spinect.phantom.warps import make_arch_warp
from spinect.phantom.params import PhantomParams
from spinect.phantom.parts import Part
from spinect.phantom.skeleton import build_column
from spinect.phantom.soft_detail import sample_soft_geometry
from spinect.phantom.soft_tissue import abdomen, body_layers, fat_parts, muscles
from spinect.phantom.structures import DISC_NAMES, ROOT_NAMES, SIDES, VERTEBRA_NAMES
from spinect.phantom.surroundings import SurroundingsSettings, sample_surroundings, surrounding_parts
from spinect.phantom.structures import STRUCTURE_CODES as C

__all__ = ["build_mesh_anatomy", "FACET_GAP_MM", "SI_GAP_MM"]

#: Joint space kept between a vertebra and the one below (facet joints), mm: the default, and the
#: value of cases without a drawn one (``extras['facet_gap_mm']``, 1.0-2.0 mm since version 9).
FACET_GAP_MM = 1.0
#: Sacroiliac joint space kept between ilium and sacrum, mm.
SI_GAP_MM = 1.5
#: S1 ends this far below its superior endplate (the rest of the sacrum mesh is ``sacrum``), mm.
_S1_DEPTH_EXTRA_MM = 2.0


def _bone_parts(frames, params: PhantomParams, lib) -> list[MeshPart]:
    """L1-L5, S1, sacrum, ilia as placed grids (body mm)."""
    parts = []
    for name in VERTEBRA_NAMES[:-1]:
        vp = params.vertebrae[name]
        grid = lib[vp.source]
        m, k = mesh_placement(frames[name], grid.measured, vp.scale)
        spec = (params.extras.get("arch_warp") or {}).get(name)
        warp = make_arch_warp(grid, spec["amplitude_mm"], spec["seed"]) if spec else None
        parts.append(MeshPart(name, C[name], [], cortex_mm=1.2, grid=grid, source_from_body=m, dist_scale=k, warp=warp))
    s1, vp = frames["S1"], params.vertebrae["S1"]
    pelvis = params.extras["pelvis"]
    grid = lib[vp.source]
    m, k = mesh_placement(s1, grid.measured, vp.scale)
    up = s1.axes[2]
    cut = s1.centre - (0.5 * vp.h_post + _S1_DEPTH_EXTRA_MM) * up
    parts.append(MeshPart("S1", C["S1"], [], cortex_mm=1.2, grid=grid, source_from_body=m, dist_scale=k, planes=[(cut, -up)]))
    parts.append(MeshPart("sacrum", C["sacrum"], [], cortex_mm=1.2, grid=grid, source_from_body=m, dist_scale=k, planes=[(cut, up)]))
    for side in SIDES:  # one grid holds both hip bones: split at the sacrum's midsagittal plane
        parts.append(MeshPart(f"ilium_{side}", C[f"ilium_{side}"], [], cortex_mm=1.5, grid=lib[f"{pelvis}__hips"],
                              source_from_body=m, dist_scale=k, planes=[(s1.centre, -SIDE_SIGN[side] * s1.axes[0])]))
    return parts


def _facets(frames, params: PhantomParams) -> dict[tuple[str, str], FacetJoint]:
    """One facet joint per level and side from the lower vertebra's measured SAP (its anterior
    face centre feeds the Kambin triangle; centre and normal place the joint capsule)."""
    facets = {}
    levels = ["T12L1", *DISC_NAMES]
    for level, lower in zip(levels, VERTEBRA_NAMES):
        f, vp = frames[lower], params.vertebrae[lower]
        for side in SIDES:
            s = SIDE_SIGN[side]
            face = f.point(*vp.sap_face[side])
            normal = f.direction(s * np.cos(np.radians(45.0)), -np.sin(np.radians(45.0)), 0.0)
            centre = f.point(*vp.sap_centroid[side]) - 3.0 * normal
            facets[(level, side)] = FacetJoint(centre, normal, f.axes[2].copy(), None, None, face)
    return facets


def build_mesh_anatomy(params: PhantomParams, rng: np.random.Generator, *, surroundings: bool = True,
                       metal: bool | None = None) -> A.Anatomy:
    """Everything of one mesh phantom but its appearance (params from
    :func:`spinect.phantom.meshes.sample_mesh_params`; ``rng``: the geometry stream;
    ``surroundings``: as in :func:`spinect.phantom.anatomy.build_anatomy`)."""
    lib = load_library()
    frames, discs = build_column(params)
    for name, angle in params.extras.get("axial_rotation_deg", {}).items():
        frames[name] = rotate_axially(frames[name], angle)
    bones = _bone_parts(frames, params, lib)
    # osteophytes before the roots are relaxed off the bone and the joints carved: both see them
    placed = add_osteophytes({p.name: p for p in bones if p.name in VERTEBRA_NAMES}, frames, params)
    if "osteophytes" in params.extras:
        params = replace(params, extras={**params.extras, "osteophytes": placed})
    facets = _facets(frames, params)
    roots = {(n, s): root_centreline(frames, params, n, s) for n in ROOT_NAMES for s in SIDES}
    relax_roots(list(roots.values()), bones)
    dura, nerves = A._nerve_parts(frames, params, roots)
    all_nerves = Part("nerves", 0, [p for part in nerves for p in part.primitives])
    sacral = Part("sacral_roots", 0, [p for part in nerves if part.name.startswith(("root_S1", "root_S2")) for p in part.primitives])
    by_name = {p.name: p for p in bones}
    for part in bones:
        part.cutters.append((all_nerves, A.NERVE_GAP_MM))
        if part.name in ("S1", "sacrum"):
            part.cutters.append((sacral, A.FORAMEN_GAP_MM))
    for upper, lower in zip(VERTEBRA_NAMES[:-1], VERTEBRA_NAMES[1:]):  # facet joint space
        gap = float(params.extras.get("facet_gap_mm", FACET_GAP_MM))  # drawn per case from version 9
        by_name[upper].cutters.append((by_name[lower].raw(f"below_{upper}"), gap))
    sacrum_raw = by_name["sacrum"].raw("sacrum_outline")
    sacrum_raw.planes = []
    for side in SIDES:
        by_name[f"ilium_{side}"].cutters.append((sacrum_raw, SI_GAP_MM))
    s1 = frames["S1"]
    anchors = {side: s1.point(SIDE_SIGN[side] * (params.vertebrae["S1"].a + 60.0), 0.0, -20.0) for side in SIDES}
    layers, cavity = body_layers(frames, params), abdomen(frames, params, rng, shaped_vessels=True)
    # surroundings from a stream of their own, drawn last (as in build_anatomy)
    sur_rng = np.random.default_rng(int(rng.integers(0, 2**63)))
    settings = sample_surroundings(sur_rng, metal=metal) if surroundings else SurroundingsSettings.none()
    sur_background, sur_foreground = surrounding_parts(frames, params, sur_rng, settings)
    # soft-tissue detail: the geometry stream's last draw, so nothing above changes
    soft_rng = np.random.default_rng(int(rng.integers(0, 2**63)))
    front = [frames[n].point(0.0, -params.vertebrae[n].b, 0.0) for n in VERTEBRA_NAMES]
    soft = sample_soft_geometry(soft_rng, front_zy=[(float(p[2]), float(p[1])) for p in front])
    background = layers + cavity + sur_background + muscles(frames, params, anchors, style="v2")
    foreground = (fat_parts(frames, params, list(roots.values()), facets) + A._disc_parts(frames, params) + bones
                  + sur_foreground + nerves)
    return A.Anatomy(params, frames, discs, facets, roots, background, foreground, bones, nerves, settings, soft)
