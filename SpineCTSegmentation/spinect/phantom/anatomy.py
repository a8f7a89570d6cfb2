"""Assemble one phantom's anatomy: frames, bones, discs, nerves, soft tissues, in paint order.

Paint order (later wins): soft tissues (sign only) -> fat (epidural, foraminal, root sheaths,
joint capsules) -> discs -> bones -> dural sac -> roots. Bones are carved 0.8 mm away from every
nerve (and S1/sacrum 2.5 mm away from the sacral roots: the sacral foramina), so a root never
touches bone by construction; before that, root centrelines are relaxed away from bone so the
carving rarely has anything to do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicSpline

from spinect.phantom import bones as B
from spinect.phantom.nerves import Root, cauda_part_segments, dura_centreline, relax_roots, root_centreline
from spinect.phantom.params import PhantomParams
from spinect.phantom.parts import Part
from spinect.phantom.primitives import Ellipsoid, tube_segments
from spinect.phantom.skeleton import VertebraFrame, build_column
from spinect.phantom.soft_tissue import abdomen, body_layers, fat_parts, muscles
from spinect.phantom.soft_detail import SoftGeometry
from spinect.phantom.surroundings import SurroundingsSettings, sample_surroundings, surrounding_parts
from spinect.phantom.structures import DISC_NAMES, ROOT_NAMES, SIDES, VERTEBRA_NAMES
from spinect.phantom.structures import STRUCTURE_CODES as C

__all__ = ["Anatomy", "build_anatomy", "NERVE_GAP_MM", "FORAMEN_GAP_MM"]

#: Bone is carved this far from every nerve (mm): the minimal fat gap.
NERVE_GAP_MM = 0.8
#: Sacral foramina: bone carved this far around S1 and S2 roots (mm).
FORAMEN_GAP_MM = 2.5


@dataclass
class Anatomy:
    """One phantom's geometry (body coordinates, mm) and its parts in paint order."""

    params: PhantomParams
    frames: dict[str, VertebraFrame]
    discs: dict[str, tuple[float, float]]
    facets: dict[tuple[str, str], B.FacetJoint]
    roots: dict[tuple[str, str], Root]
    background: list[Part]
    foreground: list[Part]
    bones: list[Part]
    nerves: list[Part]
    surroundings: "SurroundingsSettings | None" = None
    soft: "SoftGeometry | None" = None  # phantom v2: irregular soft-tissue boundaries (soft_detail)

    def anchor(self) -> np.ndarray:
        """Body point the field of view is centred on: between the L4 body and the S1 endplate,
        at the level of the foramina's depth."""
        l4 = self.frames["L4"]
        p = 0.5 * (l4.centre + self.frames["S1"].superior.centre)
        return p + np.array([0.0, self.params.vertebrae["L5"].b * 0.6, 0.0])


def _facets(frames, params: PhantomParams, discs) -> dict[tuple[str, str], B.FacetJoint]:
    degen = params.degeneration
    facets = {}
    for i, lower in enumerate(VERTEBRA_NAMES):
        level = "T12L1" if i == 0 else DISC_NAMES[i - 1]
        disc_post = 5.0 if i == 0 else discs[level][0]
        for side in SIDES:
            extra = degen.sap_hypertrophy_mm if degen and degen.level == level and degen.side == side else 0.0
            facets[(level, side)] = B.facet_joint(frames[lower], params.vertebrae[lower], side, disc_post, sap_extra_mm=extra)
    return facets


def _bone_parts(frames, params: PhantomParams, facets) -> list[Part]:
    parts = []
    degen = params.degeneration
    levels = ["T12L1", *DISC_NAMES]
    for i, name in enumerate(VERTEBRA_NAMES[:-1]):
        above = {s: facets[(levels[i], s)] for s in SIDES}
        below = {s: facets[(levels[i + 1], s)] for s in SIDES}
        prims = B.lumbar_primitives(frames[name], params.vertebrae[name], name, above, below)
        parts.append(Part(name, C[name], prims, smooth_mm=1.5, cortex_mm=1.2))
    s1p = params.vertebrae["S1"]
    canal = B.sacral_canal(frames["S1"], s1p)
    s1_prims = B.s1_primitives(frames["S1"], s1p, {s: facets[("L5S1", s)] for s in SIDES})
    parts.append(Part("S1", C["S1"], s1_prims, subtract=canal, smooth_mm=2.5, cortex_mm=1.2))
    parts.append(Part("sacrum", C["sacrum"], B.lower_sacrum(frames["S1"], s1p), subtract=canal, smooth_mm=2.0, cortex_mm=1.2))
    if degen is not None and degen.osteophyte_mm > 0:
        lower = "S1" if degen.level == "L5S1" else "L5"
        f, vp, s = frames[lower], params.vertebrae[lower], B.SIDE_SIGN[degen.side]
        o = degen.osteophyte_mm
        spur = Ellipsoid(f.point(s * 0.62 * vp.a, 0.8 * vp.b, 0.5 * vp.h_post), f.axes.copy(), radii=np.array([1.6 * o, o, 0.8 * o]))
        part = next(p for p in parts if p.name == lower)
        part.primitives.append(spur)
    for side in SIDES:
        l45 = frames["L4"].inferior.centre + frames["L5"].superior.centre
        crest_z = 0.5 * l45[2] + params.crest_height[side]
        parts.append(Part(f"ilium_{side}", C[f"ilium_{side}"], B.ilium_primitives(frames["S1"], s1p, side, crest_z),
                          smooth_mm=3.0, cortex_mm=1.5))
    return parts


def _disc_parts(frames, params: PhantomParams) -> list[Part]:
    parts = []
    degen = params.degeneration
    for i, disc in enumerate(DISC_NAMES):
        upper, lower = VERTEBRA_NAMES[i], VERTEBRA_NAMES[i + 1]
        a = 0.5 * (params.vertebrae[upper].a + params.vertebrae[lower].a)
        b = 0.5 * (params.vertebrae[upper].b + params.vertebrae[lower].b)
        prims = [B.disc_body(frames[lower], frames[upper], a, b)]
        if degen is not None and degen.bulge_mm > 0 and degen.level == disc:
            s = B.SIDE_SIGN[degen.side]
            f = frames[lower]
            centre = 0.5 * (f.superior.centre + frames[upper].inferior.centre)
            c = centre + f.direction(s * 0.42 * a, b - 1.0, 0.0)
            prims.append(Ellipsoid(c, f.axes.copy(), radii=np.array([7.0, 1.0 + degen.bulge_mm, 0.5 * params.discs[disc][0] + 1.0])))
        parts.append(Part(f"disc_{disc}", C[f"disc_{disc}"], prims, smooth_mm=1.5))
    return parts


def _coarse(n: int, step: int = 3) -> np.ndarray:
    """Indices of every ``step``-th sample plus the last: 3 mm tube segments follow 1 mm
    samples to within 0.1 mm where the root bends with a 10 mm radius."""
    return np.unique(np.r_[np.arange(0, n, step), n - 1])


def _nerve_parts(frames, params: PhantomParams, roots: dict[tuple[str, str], Root]) -> tuple[Part, list[Part]]:
    pts, lat, ap = dura_centreline(frames, params)
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    t = np.linspace(0.0, chord[-1], int(chord[-1] / 3.0) + 2)
    dura = Part("dural_sac", C["dural_sac"], tube_segments(CubicSpline(chord, pts)(t), np.interp(t, chord, lat), np.interp(t, chord, ap)))
    parts = [dura, Part("cauda_equina_sacral", C["cauda_equina_sacral"], cauda_part_segments(frames))]
    for (name, side), root in roots.items():
        for segment in ("traversing", "exiting"):
            p, r = root.segment(segment)
            parts.append(Part(f"root_{name}_{side}_{segment}", C[f"root_{name}_{side}_{segment}"], tube_segments(p[_coarse(len(p))], r[_coarse(len(p))])))
    return dura, parts


def build_anatomy(params: PhantomParams, rng: np.random.Generator, *, surroundings: bool = True,
                  metal: bool | None = None) -> Anatomy:
    """Everything of one phantom but its appearance.

    Args:
        params: anatomy parameters (:func:`spinect.phantom.params.sample_params`).
        rng: geometry random stream (bowel loops, calcifications, surroundings).
        surroundings: draw ribs, femora, organs, table and metal (:mod:`spinect.phantom.surroundings`);
            False gives the first version's anatomy only.
    """
    frames, discs = build_column(params)
    facets = _facets(frames, params, discs)
    bones = _bone_parts(frames, params, facets)
    roots = {(n, s): root_centreline(frames, params, n, s) for n in ROOT_NAMES for s in SIDES}
    relax_roots(list(roots.values()), bones)
    dura, nerves = _nerve_parts(frames, params, roots)
    all_nerves = Part("nerves", 0, [p for part in nerves for p in part.primitives])
    sacral = Part("sacral_roots", 0, [p for part in nerves if part.name.startswith(("root_S1", "root_S2")) for p in part.primitives])
    for part in bones:
        part.cutters.append((all_nerves, NERVE_GAP_MM))
        if part.name in ("S1", "sacrum"):
            part.cutters.append((sacral, FORAMEN_GAP_MM))
    sacrum = [p for p in bones if p.name == "sacrum"][0]
    alae = Part("sacrum_outline", 0, [p for p in bones if p.name == "S1"][0].primitives + sacrum.primitives)
    for part in bones:
        if part.name.startswith("ilium"):
            part.cutters.append((alae, 2.5))  # sacroiliac joint space
    levels = ["T12L1", *DISC_NAMES]
    for i, upper in enumerate(bones[:5]):  # facet joint space: IAP kept 1.2 mm from the SAP below
        saps = [facets[(levels[i + 1], s)].sap for s in SIDES]
        upper.cutters.append((Part(f"sap_below_{upper.name}", 0, saps), 1.2))
    s1 = frames["S1"]
    anchors = {side: s1.point(B.SIDE_SIGN[side] * (params.vertebrae["S1"].a + 60.0), 0.0, -20.0) for side in SIDES}
    layers, cavity = body_layers(frames, params), abdomen(frames, params, rng)
    # surroundings (ribs, femora, organs, table, metal) from a stream of their own, drawn last,
    # so the geometry above is the same with or without them
    sur_rng = np.random.default_rng(int(rng.integers(0, 2**63)))
    settings = sample_surroundings(sur_rng, metal=metal) if surroundings else SurroundingsSettings.none()
    sur_background, sur_foreground = surrounding_parts(frames, params, sur_rng, settings)
    background = layers + cavity + sur_background + muscles(frames, params, anchors)
    foreground = fat_parts(frames, params, list(roots.values()), facets) + _disc_parts(frames, params) + bones + sur_foreground + nerves
    return Anatomy(params, frames, discs, facets, roots, background, foreground, bones, nerves, settings)
