"""Osteophytes on the real bone shapes of phantom v2 (added bone, exact labels).

Two kinds, both united with a vertebra's placed bone grid (:attr:`MeshPart.added`), so the bone
label, the level map and every distance the truth is computed from include them:

* **Marginal (spondylotic) osteophytes**: lips of bone at the anterior and anterolateral rims of
  the endplates, pointing outwards and a little towards the disc. Their prevalence and size grow
  with age (population surveys find lumbar osteophytes uncommon under 30 and in most people over
  60, e.g. O'Neill et al., J Rheumatol 1999; the linear curve of :func:`marginal_probability` is
  this phantom's assumption). Drawn per case by :func:`sample_marginal` from a stream of their own
  and the patient's age, so every other draw of a case stays as it was.
* **The degenerated level's posterolateral osteophyte** (``Degeneration.osteophyte_mm``, as in
  the primitive phantom): at the lower vertebra's superior endplate, on the degenerated side,
  reaching into the foramen.

Facet hypertrophy is not added on meshes (``Degeneration.sap_hypertrophy_mm`` stays 0): it would
move the superior articular process's face, which the Kambin triangle's truth is measured from.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spinect.phantom.bones import SIDE_SIGN
from spinect.phantom.primitives import Ellipsoid
from spinect.phantom.structures import VERTEBRA_NAMES

__all__ = ["ENDPLATES", "marginal_probability", "sample_marginal", "rim_point", "marginal_primitive",
           "foraminal_primitive", "add_osteophytes"]

#: (vertebra, endplate) pairs that can carry a marginal osteophyte: L1-L5 both, S1 superior.
ENDPLATES = tuple((v, e) for v in VERTEBRA_NAMES[:-1] for e in ("superior", "inferior")) + (("S1", "superior"),)
#: Marginal osteophytes stay within this angle of the anterior midline (deg): anterior and
#: anterolateral rims, clear of the foramina and the exiting roots' course beside the bodies.
MAX_ANGLE_DEG = 80.0


def marginal_probability(age_years: float) -> float:
    """Probability that a patient of ``age_years`` has marginal lumbar osteophytes: 5 % at 30 or
    younger, rising linearly to 95 % at 75 and older."""
    return float(np.clip((age_years - 30.0) / 45.0, 0.05, 0.95))


def sample_marginal(rng: np.random.Generator, age_years: float) -> list[dict[str, Any]]:
    """Draw one case's marginal osteophytes (possibly none).

    Args:
        rng: the case's osteophyte stream. age_years: the patient's age (the appearance's).

    Returns:
        One dict per osteophyte: ``vertebra``, ``endplate`` ("superior" | "inferior"),
        ``angle_deg`` (round the rim from the anterior midline, + towards the frame's lateral
        axis), ``protrusion_mm`` (beyond the rim), ``width_mm`` (along the rim), ``height_mm``
        (semi-axis along the endplate normal), ``lift_mm`` (how far its tip rises past the
        endplate plane towards the disc).
    """
    if rng.random() >= marginal_probability(age_years):
        return []
    older = float(np.clip((age_years - 40.0) / 40.0, 0.0, 1.0))  # 0 at 40, 1 at 80
    count = int(min(1 + rng.poisson(1.0 + 5.0 * older), 10))
    picks = rng.choice(len(ENDPLATES), size=count, replace=True)
    out = []
    for k in picks:
        vertebra, endplate = ENDPLATES[int(k)]
        out.append({"vertebra": vertebra, "endplate": endplate,
                    "angle_deg": round(float(rng.uniform(-MAX_ANGLE_DEG, MAX_ANGLE_DEG)), 3),
                    "protrusion_mm": round(float(rng.uniform(1.5, 2.5 + 3.5 * older)), 3),
                    "width_mm": round(float(rng.uniform(6.0, 16.0)), 3),
                    "height_mm": round(float(rng.uniform(1.2, 2.5)), 3),
                    "lift_mm": round(float(rng.uniform(0.0, 1.0)), 3)})
    return out


def _plate_axes(frame, plate) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(outward normal, lateral, anterior) unit vectors in the endplate's plane (body coordinates)."""
    n = np.asarray(plate.normal, float)
    lat = frame.axes[0] - (frame.axes[0] @ n) * n
    lat /= np.linalg.norm(lat)
    ant = -(frame.axes[1] - (frame.axes[1] @ n) * n)
    ant -= (ant @ lat) * lat
    ant /= np.linalg.norm(ant)
    return n, lat, ant


def rim_point(part, start: np.ndarray, direction: np.ndarray, *, reach_mm: float = 50.0,
              step_mm: float = 0.25) -> np.ndarray | None:
    """Where a ray from ``start`` along ``direction`` last leaves ``part``'s bone (body mm), the
    crossing refined linearly between samples; None if the ray never enters the bone."""
    t = np.arange(0.0, reach_mm, step_mm)
    d = part.sdf_points(start + t[:, None] * direction, cut=False)
    inside = np.flatnonzero(d < 0)
    if inside.size == 0 or inside[-1] + 1 >= t.size:
        return None
    i = int(inside[-1])
    f = d[i] / (d[i] - d[i + 1])  # d[i] < 0 <= d[i + 1]
    return start + (t[i] + f * step_mm) * direction


def marginal_primitive(part, frame, spec: dict[str, Any]) -> Ellipsoid | None:
    """The ellipsoid of one marginal osteophyte on ``part`` (a placed vertebra with ``frame``),
    centred on the rim 1 mm inside the endplate plane at ``spec['angle_deg']``; None where the
    ray finds no rim (the endplate's centre region lies outside the bone at that depth)."""
    plate = frame.superior if spec["endplate"] == "superior" else frame.inferior
    n, lat, ant = _plate_axes(frame, plate)
    theta = np.radians(spec["angle_deg"])
    radial = np.cos(theta) * ant + np.sin(theta) * lat
    rim = None
    for depth in (1.0, 2.0, 3.0):  # endplates are concave: the centre may lie above the rim's level
        rim = rim_point(part, np.asarray(plate.centre, float) - depth * n, radial)
        if rim is not None:
            rim = rim + (depth - 1.0) * n
            break
    if rim is None:
        return None
    height = float(spec["height_mm"])
    centre = rim + (1.0 + float(spec["lift_mm"]) - height) * n  # the tip reaches lift_mm past the plane
    axes = np.stack([np.cross(n, radial), radial, n])
    return Ellipsoid(centre, axes, radii=np.array([0.5 * float(spec["width_mm"]), float(spec["protrusion_mm"]), height]))


def foraminal_primitive(frame, vp, side: str, size_mm: float) -> Ellipsoid:
    """The degenerated level's posterolateral osteophyte on the lower vertebra (``vp`` its
    parameters), placed and sized as in the primitive phantom."""
    s = SIDE_SIGN[side]
    o = float(size_mm)
    return Ellipsoid(frame.point(s * 0.62 * vp.a, 0.8 * vp.b, 0.5 * vp.h_post), frame.axes.copy(),
                     radii=np.array([1.6 * o, o, 0.8 * o]))


def add_osteophytes(bones_by_name: dict, frames: dict, params) -> list[dict[str, Any]]:
    """Add both kinds to the placed vertebrae (``MeshPart.added``, in place).

    Args:
        bones_by_name: vertebra name -> MeshPart. frames: name -> VertebraFrame.
        params: the case's PhantomParams (``extras['osteophytes']``: marginal specs;
            ``degeneration``).

    Returns:
        The marginal specs that found a rim (the others are skipped), as placed.
    """
    placed = []
    for spec in params.extras.get("osteophytes", []) or []:
        part = bones_by_name.get(spec["vertebra"])
        prim = None if part is None else marginal_primitive(part, frames[spec["vertebra"]], spec)
        if prim is not None:
            _add(part, prim)
            placed.append(spec)
    degen = params.degeneration
    if degen is not None and degen.osteophyte_mm > 0:
        lower = "S1" if degen.level == "L5S1" else "L5"
        _add(bones_by_name[lower], foraminal_primitive(frames[lower], params.vertebrae[lower], degen.side,
                                                       degen.osteophyte_mm))
    return placed


def _add(part, prim: Ellipsoid) -> None:
    """Unite ``prim`` with ``part``'s bone; its cached bounds are dropped (they must include it)."""
    part.added.append(prim)
    part.__dict__.pop("_mesh_bounds", None)
