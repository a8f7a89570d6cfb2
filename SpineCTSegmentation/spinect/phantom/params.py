"""Anatomical parameters of one phantom and how they vary between cases.

Mean values and ranges follow published lumbar morphometry (sources in docs/phantom.md):
vertebral bodies and pedicles (Panjabi 1992, Zindrick 1987), discs and foramina (Hasegawa
1995), root and ganglion diameters (Hasegawa 1996), sacral slope
(Legaye 1998, Roussouly 2005), facet angles (Noren 1991, Masharawi 2004) and the level of the
iliac crests (Chakraverty 2007). All lengths are mm, angles degrees.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from spinect.phantom.structures import DISC_NAMES, ROOT_NAMES, SIDES

__all__ = ["VertebraParams", "RootParams", "Degeneration", "PhantomParams", "sample_params", "VERTEBRA_MEANS", "DISC_MEANS"]

#: Mean lumbar dimensions: body half-width a, half-depth b, posterior/anterior body height,
#: pedicle width/height, medial pedicle angle, half interpedicular distance (canal half-width),
#: transverse-process length, spinous-process length.
VERTEBRA_MEANS: dict[str, dict[str, float]] = {
    "L1": dict(a=21.0, b=15.5, h_post=25.5, h_ant=24.0, ped_w=8.0, ped_h=15.5, ped_angle=10.0, canal_half=11.0, tp_len=20.0, sp_len=30.0),
    "L2": dict(a=22.0, b=16.0, h_post=26.5, h_ant=25.5, ped_w=8.5, ped_h=15.0, ped_angle=10.0, canal_half=11.0, tp_len=26.0, sp_len=31.0),
    "L3": dict(a=23.0, b=17.0, h_post=27.0, h_ant=27.0, ped_w=9.5, ped_h=15.0, ped_angle=11.0, canal_half=11.5, tp_len=30.0, sp_len=31.0),
    "L4": dict(a=24.0, b=17.5, h_post=26.5, h_ant=27.5, ped_w=11.0, ped_h=14.5, ped_angle=13.0, canal_half=12.0, tp_len=25.0, sp_len=29.0),
    "L5": dict(a=25.0, b=17.5, h_post=25.0, h_ant=28.5, ped_w=14.0, ped_h=14.0, ped_angle=25.0, canal_half=12.5, tp_len=19.0, sp_len=24.0),
    "S1": dict(a=25.0, b=18.0, h_post=28.0, h_ant=28.0, ped_w=14.0, ped_h=13.0, ped_angle=25.0, canal_half=14.5, tp_len=0.0, sp_len=14.0),
}
#: Mean disc heights (posterior, anterior) in mm.
DISC_MEANS: dict[str, tuple[float, float]] = {
    "L1L2": (5.5, 8.5), "L2L3": (6.0, 10.0), "L3L4": (6.5, 11.0), "L4L5": (7.0, 13.0), "L5S1": (6.5, 13.5),
}
#: Mean facet-joint angle to the sagittal plane per disc level.
FACET_MEANS: dict[str, float] = {"T12L1": 25.0, "L1L2": 28.0, "L2L3": 32.0, "L3L4": 38.0, "L4L5": 45.0, "L5S1": 50.0}


@dataclass(frozen=True)
class VertebraParams:
    """One vertebra; pedicle width and the facet angle of the joint above it are per side."""

    a: float
    b: float
    h_post: float
    h_ant: float
    ped_w: dict[str, float]
    ped_h: float
    ped_angle: float
    canal_half: float
    tp_len: float
    sp_len: float
    facet_angle: dict[str, float]


@dataclass(frozen=True)
class RootParams:
    """One nerve root on one side.

    Attributes:
        r_intra: radius inside the canal (root sleeve), mm.
        r_drg: radius of the dorsal root ganglion in the foramen, mm (diameter 5-7 mm).
        gap_pedicle: clearance between the ganglion and the pedicle above it, mm.
        descent: caudal drop per mm of lateral course outside the foramen.
        forward: anterior drift per mm of lateral course outside the foramen.
    """

    r_intra: float
    r_drg: float
    gap_pedicle: float
    descent: float
    forward: float


@dataclass(frozen=True)
class Degeneration:
    """Optional degeneration at one level and side (all zero = none)."""

    level: str = "L5S1"
    side: str = "left"
    disc_height_loss: float = 0.0  # fraction of the posterior disc height lost
    osteophyte_mm: float = 0.0  # posterolateral vertebral-body osteophyte into the foramen
    bulge_mm: float = 0.0  # posterolateral disc bulge toward the traversing root
    sap_hypertrophy_mm: float = 0.0  # thicker superior articular process (narrower foramen)


@dataclass(frozen=True)
class PhantomParams:
    """Everything that defines one phantom's anatomy and pose (appearance is separate)."""

    vertebrae: dict[str, VertebraParams]
    discs: dict[str, tuple[float, float]]
    roots: dict[str, dict[str, RootParams]]
    sacral_slope: float
    crest_height: dict[str, float]  # iliac crest top relative to the L4/5 disc centre (mm)
    body_width: float
    body_depth: float
    fat_mm: float
    fat_posterior_mm: float
    dura_scale: float
    rotation_deg: tuple[float, float, float]  # about x, y, z (LPS), applied in that order
    translation_mm: tuple[float, float, float]
    fov_shift_mm: tuple[float, float, float]
    degeneration: Degeneration | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict, floats rounded to 9 decimals.

        Rounding keeps the truth JSON identical across CPUs: derived values such as the SAP
        face normals come out of BLAS, whose kernels (AVX2, AVX-512) differ in the last bit.
        """
        return _round_floats(asdict(self))


def _round_floats(value: Any, decimals: int = 9) -> Any:
    if isinstance(value, float):
        return round(value, decimals)
    if isinstance(value, dict):
        return {k: _round_floats(v, decimals) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_round_floats(v, decimals) for v in value)
    return value


def _vertebra(rng: np.random.Generator, name: str, scale: float) -> VertebraParams:
    m = VERTEBRA_MEANS[name]

    def jit(value: float, rel: float = 0.04) -> float:
        return float(value * scale * (1.0 + rng.uniform(-rel, rel)))

    ped_w = {side: float(m["ped_w"] * scale * rng.uniform(0.85, 1.15)) for side in SIDES}
    level_above = {"L1": "T12L1", "L2": "L1L2", "L3": "L2L3", "L4": "L3L4", "L5": "L4L5", "S1": "L5S1"}[name]
    facet = {side: float(FACET_MEANS[level_above] + rng.uniform(-8, 8)) for side in SIDES}
    return VertebraParams(
        a=jit(m["a"]), b=jit(m["b"]), h_post=jit(m["h_post"]), h_ant=jit(m["h_ant"]), ped_w=ped_w,
        ped_h=jit(m["ped_h"], 0.08), ped_angle=float(m["ped_angle"] + rng.uniform(-4, 4)),
        canal_half=jit(m["canal_half"], 0.06), tp_len=jit(m["tp_len"], 0.15), sp_len=jit(m["sp_len"], 0.1),
        facet_angle=facet,
    )


def _root(rng: np.random.Generator, name: str) -> RootParams:
    # Ganglia grow from L1 to S1 (Hasegawa 1996); radius = diameter / 2.
    base = {"L1": 2.3, "L2": 2.5, "L3": 2.7, "L4": 2.9, "L5": 3.1, "S1": 3.2, "S2": 2.4}[name]
    return RootParams(
        r_intra=float(rng.uniform(1.5, 2.0)), r_drg=float(np.clip(base + rng.uniform(-0.4, 0.4), 2.0, 3.5)),
        gap_pedicle=float(rng.uniform(1.2, 3.0)), descent=float(rng.uniform(0.55, 1.0)), forward=float(rng.uniform(0.25, 0.6)),
    )


def _degeneration(rng: np.random.Generator) -> Degeneration:
    kinds = rng.permutation(["height", "osteophyte", "bulge", "sap"])[: rng.integers(1, 4)]
    return Degeneration(
        level=str(rng.choice(["L4L5", "L5S1"])), side=str(rng.choice(SIDES)),
        disc_height_loss=float(rng.uniform(0.25, 0.5)) if "height" in kinds else 0.0,
        osteophyte_mm=float(rng.uniform(2.0, 4.5)) if "osteophyte" in kinds else 0.0,
        bulge_mm=float(rng.uniform(2.0, 4.0)) if "bulge" in kinds else 0.0,
        sap_hypertrophy_mm=float(rng.uniform(1.0, 2.5)) if "sap" in kinds else 0.0,
    )


def sample_params(rng: np.random.Generator, *, degeneration: bool | None = None) -> PhantomParams:
    """Draw one phantom's anatomy.

    Args:
        rng: the geometry random stream of the case.
        degeneration: True = always, False = never, None = with probability 0.3.
    """
    scale = float(rng.uniform(0.9, 1.1))  # vertebra size
    vertebrae = {name: _vertebra(rng, name, scale) for name in VERTEBRA_MEANS}
    disc_factor = float(rng.uniform(0.8, 1.2))  # disc height (and with it foramen height)
    discs = {}
    for name in DISC_NAMES:
        post, ant = DISC_MEANS[name]
        post = post * disc_factor * rng.uniform(0.9, 1.1)
        wedge = (ant - DISC_MEANS[name][0]) * rng.uniform(0.7, 1.3)  # lordosis
        discs[name] = (float(post), float(post + wedge))
    roots = {name: {side: _root(rng, name) for side in SIDES} for name in ROOT_NAMES}
    use_degeneration = rng.uniform() < 0.3 if degeneration is None else bool(degeneration)
    degen = _degeneration(rng) if use_degeneration else None
    return PhantomParams(
        vertebrae=vertebrae, discs=discs, roots=roots,
        sacral_slope=float(rng.uniform(30.0, 50.0)),
        crest_height={side: float(v) for side, v in zip(SIDES, rng.uniform(-12.0, 8.0) + rng.uniform(-3, 3, 2))},
        body_width=float(rng.uniform(290.0, 390.0)), body_depth=float(rng.uniform(200.0, 290.0)),
        fat_mm=float(rng.uniform(8.0, 40.0)), fat_posterior_mm=float(rng.uniform(12.0, 45.0)),
        dura_scale=float(rng.uniform(0.9, 1.1)),
        rotation_deg=tuple(float(v) for v in rng.uniform(-10.0, 10.0, 3)),
        translation_mm=tuple(float(v) for v in rng.uniform(-8.0, 8.0, 3)),
        fov_shift_mm=tuple(float(v) for v in rng.uniform(-6.0, 6.0, 3)),
        degeneration=degen,
    )
