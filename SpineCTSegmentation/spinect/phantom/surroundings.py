"""Real surroundings of the lumbosacral spine (phantom v2): what makes real abdomen-pelvis CT hard.

* **Ribs** (11th and 12th, both sides; bone, label 1): curved oval tubes (about 6 x 10 mm,
  1 mm cortex) from beside the level above L1 running posterolaterally, then round the flank
  anteriorly and caudally, kept inside the body wall.
* **Femora** (bone, label 1): head (sphere, radius 21-26 mm) about +-85-95 mm lateral,
  90-110 mm below and 10-35 mm anterior of the S1 endplate centre, neck, greater trochanter
  and the proximal shaft.
* **Organs** (sign-only background): liver (right upper quadrant), kidneys (lateral to L1-L3,
  in front of quadratus lumborum, lateral to psoas), lung bases (posterior costophrenic recesses
  down to about L1, -900..-750 HU) with branching vessels (blood: bright tubes with IV contrast,
  which a network must not take for trabecular bone), loops of bowel with oral contrast
  (150-600 HU) and gas. Organs only replace abdominal-cavity content (visceral fat, bowel), so
  they never leave the body or cover vessels.
* **CT table**: a curved plate under the patient's back, outside the body, horizontal in the
  scanner (world) frame: a 1.5-3 mm shell (100-300 HU) around a foam core (left as air).
* **Metal** (label 0, never bone): pedicle screws (2 per vertebra, inside the pedicles, along
  the pedicle axis into the body) at 2-3 consecutive vertebrae of L3-S1 (1-2 fused segments)
  with a tulip head each and one rod per side; titanium 2500-3071 HU. Streak artefacts:
  :func:`add_metal_artefacts` (a cheap line model per axial slice).
* **IV contrast** (blood 200-400 HU, enhanced liver and kidneys) is an appearance flag;
  **circular field of view**: :func:`apply_circular_fov`.

All geometry is in body coordinates (mm; +x left, +y posterior, +z superior), built from the
vertebra frames (:func:`spinect.phantom.skeleton.build_column`) and the case parameters.
Arrays are (z, y, x).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from spinect.phantom.bones import SIDE_SIGN, pedicle
from spinect.phantom.params import PhantomParams
from spinect.phantom.parts import ClippedPart, Part
from spinect.phantom.primitives import Ellipsoid, EllipticColumn, GridBox, Primitive, frame_from_vectors, tube_segments
from spinect.phantom.soft_tissue import body_layers, spine_extent
from spinect.phantom.structures import STRUCTURE_CODES as C
from spinect.phantom.structures import STRUCTURE_TISSUE

__all__ = [
    "SURROUNDING_HU_RANGES",
    "METAL_LEVELS",
    "SurroundingsSettings",
    "sample_surroundings",
    "surrounding_parts",
    "rib_centrelines",
    "femur_landmarks",
    "screw_axes",
    "CurvedPlate",
    "ClippedPart",
    "surrounding_values",
    "apply_surrounding_values",
    "add_metal_artefacts",
    "apply_circular_fov",
]

#: HU ranges of the tissue classes added with the surroundings (merge into appearance.HU_RANGES).
#: ``*_contrast`` replace the plain class when the case has IV contrast.
SURROUNDING_HU_RANGES: dict[str, tuple[float, float]] = {
    "liver": (50.0, 70.0), "liver_contrast": (90.0, 130.0),
    "kidney": (30.0, 40.0), "kidney_contrast": (150.0, 320.0),
    "blood_contrast": (200.0, 400.0),
    "oral_contrast": (150.0, 600.0),
    "table": (100.0, 300.0),
    "metal": (2500.0, 3071.0),
    "lung": (-900.0, -750.0),
}

#: Vertebrae that can carry pedicle screws.
METAL_LEVELS: tuple[str, ...] = ("L3", "L4", "L5", "S1")

#: Codes an organ may replace when painted (abdominal-cavity content only).
_CAVITY = (C["visceral_fat"], C["bowel"], C["bowel_gas"])


# ----------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SurroundingsSettings:
    """Which surroundings one case has (drawn per case; stored in the truth JSON).

    Attributes:
        ribs, femora, organs (liver, kidneys), table: present or not.
        oral_contrast: bowel loops filled with positive oral contrast.
        iv_contrast: enhanced blood, liver and kidneys (appearance only).
        metal_levels: vertebrae with a pair of pedicle screws (consecutive, joined by rods); empty = none.
        fov_fraction: radius of a circular reconstruction field of view as a fraction of half the
            smaller in-plane grid extent; None = square image without a circle.
    """

    ribs: bool = True
    femora: bool = True
    organs: bool = True
    oral_contrast: bool = False
    iv_contrast: bool = False
    table: bool = True
    metal_levels: tuple[str, ...] = ()
    fov_fraction: float | None = None

    @classmethod
    def none(cls) -> "SurroundingsSettings":
        """No surroundings at all (the first phantom version's anatomy)."""
        return cls(ribs=False, femora=False, organs=False, oral_contrast=False, iv_contrast=False, table=False)

    def to_dict(self) -> dict:
        """JSON-serialisable dict."""
        d = asdict(self)
        d["metal_levels"] = list(self.metal_levels)
        return d


def sample_surroundings(rng: np.random.Generator, *, metal: bool | None = None) -> SurroundingsSettings:
    """Draw one case's surroundings.

    Ribs, femora, organs 90 %; table 80 %; oral contrast 30 %; IV contrast 40 %; metal 10 %
    (``metal`` True/False forces it) at 2-3 consecutive vertebrae of L3-S1; circular FOV 50 %.
    """
    u = rng.uniform(size=8)
    use_metal = u[6] < 0.1 if metal is None else bool(metal)
    levels: tuple[str, ...] = ()
    if use_metal:
        n = int(rng.integers(2, 4))  # 1 or 2 fused segments
        start = int(rng.integers(0, len(METAL_LEVELS) - n + 1))
        levels = METAL_LEVELS[start : start + n]
    return SurroundingsSettings(
        ribs=bool(u[0] < 0.9), femora=bool(u[1] < 0.9), organs=bool(u[2] < 0.9), table=bool(u[3] < 0.8),
        oral_contrast=bool(u[4] < 0.3), iv_contrast=bool(u[5] < 0.4), metal_levels=levels,
        fov_fraction=float(rng.uniform(0.9, 1.0)) if u[7] < 0.5 else None,
    )


# ----------------------------------------------------------------------------------- helpers


def _clipped(name: str, prims: list[Primitive], allowed: tuple[int, ...]) -> ClippedPart:
    return ClippedPart(name, C[name], prims, partial_volume=False, allowed=allowed)


def _columns(frames, params: PhantomParams) -> dict[str, EllipticColumn]:
    """The body-layer columns (skin, subcutaneous fat, abdominal wall, cavity) by name."""
    part = body_layers(frames, params)[0]
    names = ("skin", "subcutaneous_fat", "abdominal_wall_muscle", "visceral_fat")
    return dict(zip(names, part.primitives))


def _pull_inside(points: np.ndarray, col: EllipticColumn, inset_mm: float) -> np.ndarray:
    """Move (N, 3) body points radially (in the axial plane) so they lie ``inset_mm`` inside ``col``."""
    p = np.array(points, float)
    local = (p - col.centre) @ col.axes.T
    rx = col.rx0 + col.rx_slope * local[:, 2] - inset_mm
    ry = col.ry0 + col.ry_slope * local[:, 2] - inset_mm
    q = np.sqrt((local[:, 0] / rx) ** 2 + (local[:, 1] / ry) ** 2)
    scale = np.where(q > 1.0, 1.0 / np.maximum(q, 1e-9), 1.0)
    local[:, 0] *= scale
    local[:, 1] *= scale
    local[:, 1] = np.minimum(local[:, 1], col.flat_1 - inset_mm)
    return col.centre + local @ col.axes


def _pose_rotation(params: PhantomParams) -> np.ndarray:
    # imported here: render imports anatomy, which imports this module
    from spinect.phantom.render import pose_matrix

    return pose_matrix(params.rotation_deg)


# ----------------------------------------------------------------------------------- ribs


def rib_centrelines(frames, params: PhantomParams, rng: np.random.Generator | None = None) -> dict[tuple[str, str], np.ndarray]:
    """Centrelines of the 11th and 12th ribs, ``{(side, "11" | "12"): (N, 3) body points}`` (mm).

    Written in L1's frame (lateral, posterior, cranial): the head beside the level above L1
    (12th: ~33 mm above L1's centre, 11th: ~28 mm higher), then laterally and posteriorly to
    the rib angle, round the flank anteriorly and caudally (the 11th longer). Points are kept
    6 mm inside the abdominal wall. ``rng`` jitters length and height per rib.
    """
    f, v = frames["L1"], params.vertebrae["L1"]
    a, b = v.a, v.b
    cols = _columns(frames, params)
    wall = cols["skin"]
    spec = {  # (lateral beyond a, posterior beyond b, cranial) in L1's frame
        "12": [(6.0, 4.0, 34.0), (20.0, 14.0, 31.0), (42.0, 21.0, 24.0), (66.0, 16.0, 13.0), (82.0, 0.0, 2.0)],
        "11": [(6.0, 4.0, 62.0), (20.0, 15.0, 59.0), (45.0, 23.0, 50.0), (76.0, 14.0, 35.0), (96.0, -12.0, 18.0),
               (102.0, -42.0, 4.0)],
    }
    out = {}
    for side, s in SIDE_SIGN.items():
        for rib, pts in spec.items():
            grow = float(rng.uniform(0.9, 1.1)) if rng is not None else 1.0
            dz = float(rng.uniform(-4.0, 4.0)) if rng is not None else 0.0
            local = np.array([(s * (a + x * (grow if i else 1.0)), b + y, z + dz) for i, (x, y, z) in enumerate(pts)])
            body = np.array([f.point(*p) for p in local])
            body[1:] = _pull_inside(body[1:], wall, params.fat_mm + 6.0)  # the head stays by the spine
            out[(side, rib)] = _densify(body, 6.0)
    return out


def _densify(points: np.ndarray, step_mm: float) -> np.ndarray:
    """Catmull-Rom-like smoothing of a polyline: samples about every ``step_mm`` (smooth bends)."""
    from scipy.interpolate import CubicSpline

    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    t = np.linspace(0.0, chord[-1], max(int(chord[-1] / step_mm) + 1, 2))
    return CubicSpline(chord, points)(t)


def _rib_parts(frames, params: PhantomParams, rng: np.random.Generator) -> list[Part]:
    parts = []
    for (side, rib), pts in rib_centrelines(frames, params, rng).items():
        n = len(pts)
        taper = np.linspace(1.0, 0.75, n)  # thinner towards the costal cartilage
        tall = 5.0 * taper * float(rng.uniform(0.9, 1.1))  # cranio-caudal semi-axis (mm)
        thin = 3.0 * taper  # radial semi-axis (mm)
        segs = tube_segments(pts, tall, thin, lateral=frames["L1"].axes[2])
        name = f"rib_{side}"
        parts.append(Part(name, C[name], segs, smooth_mm=1.0, cortex_mm=1.0))
    return _merge_by_name(parts)


def _merge_by_name(parts: list[Part]) -> list[Part]:
    """One part per structure name (both ribs of a side are one bone code)."""
    merged: dict[str, Part] = {}
    for p in parts:
        if p.name in merged:
            merged[p.name].primitives.extend(p.primitives)
        else:
            merged[p.name] = p
    return list(merged.values())


# ----------------------------------------------------------------------------------- femora


def femur_landmarks(frames, params: PhantomParams, rng: np.random.Generator | None = None) -> dict[str, dict[str, np.ndarray | float]]:
    """Per side: ``head`` centre (3,), ``head_radius`` (mm), ``trochanter`` centre and ``shaft_end``
    (body mm). The head is 85-95 mm lateral, 90-110 mm below and 10-35 mm anterior of the S1
    endplate centre (the body origin); the neck runs laterally, 40 deg downwards and a little
    backwards (anteversion) to the greater trochanter; the shaft descends 110 mm."""
    skin = _columns(frames, params)["skin"]
    r = rng if rng is not None else np.random.default_rng(0)
    lat, below, ant = r.uniform(85.0, 95.0), r.uniform(90.0, 110.0), r.uniform(10.0, 35.0)
    radius = float(r.uniform(21.0, 26.0))
    out = {}
    for side, s in SIDE_SIGN.items():
        head = np.array([s * (lat + r.uniform(-2.0, 2.0)), -ant, -below + r.uniform(-2.0, 2.0)])
        neck_dir = np.array([s * np.cos(np.radians(40.0)), 0.25, -np.sin(np.radians(40.0))])
        neck_dir /= np.linalg.norm(neck_dir)
        troch = head + float(r.uniform(48.0, 58.0)) * neck_dir
        troch = _pull_inside(troch[None], skin, params.fat_mm * 0.5 + 20.0)[0]
        shaft_end = troch + np.array([-s * 12.0, 0.0, -110.0])
        out[side] = {"head": head, "head_radius": radius, "trochanter": troch, "shaft_end": shaft_end}
    return out


def _femur_parts(frames, params: PhantomParams, rng: np.random.Generator) -> list[Part]:
    parts = []
    for side, lm in femur_landmarks(frames, params, rng).items():
        head, troch, end = lm["head"], lm["trochanter"], lm["shaft_end"]
        rh = float(lm["head_radius"])
        prims: list[Primitive] = [Ellipsoid(head, np.eye(3), radii=np.full(3, rh))]
        neck = np.array([head, 0.5 * (head + troch), troch])
        prims += tube_segments(neck, [0.62 * rh, 0.55 * rh, 0.7 * rh], [0.5 * rh, 0.45 * rh, 0.6 * rh], lateral=(0.0, 0.0, 1.0))
        prims.append(Ellipsoid(troch + np.array([0.0, 4.0, 6.0]), np.eye(3), radii=np.array([13.0, 17.0, 22.0])))
        shaft_top = troch + np.array([0.0, 0.0, -18.0])
        prims += tube_segments(np.array([shaft_top, end]), [14.0, 13.0])
        name = f"femur_{side}"
        parts.append(Part(name, C[name], prims, smooth_mm=4.0, cortex_mm=2.0))
    return parts


# ----------------------------------------------------------------------------------- organs


def _organ_parts(frames, params: PhantomParams, rng: np.random.Generator) -> list[Part]:
    """Liver (right upper quadrant, lower edge about L2-L3) and kidneys (left L1-L2, right ~12 mm
    lower; long axis tilted, upper pole medial and posterior)."""
    v = params.vertebrae
    l1, l2 = frames["L1"], frames["L2"]
    liver = [
        Ellipsoid(l1.point(-(v["L1"].a + 55.0), -(v["L1"].b + 25.0), 45.0), np.eye(3), radii=np.array([80.0, 70.0, 75.0]) * rng.uniform(0.9, 1.1)),
        Ellipsoid(l2.point(-(v["L2"].a + 75.0), -(v["L2"].b + 5.0), 0.0), np.eye(3), radii=np.array([38.0, 40.0, 55.0]) * rng.uniform(0.85, 1.1)),
    ]
    parts: list[Part] = [_clipped("liver", liver, _CAVITY)]
    kidneys = []
    for side, s in SIDE_SIGN.items():
        drop = 0.0 if side == "left" else 12.0
        c = l1.point(s * (v["L1"].a + 48.0), v["L1"].b - 22.0, -12.0 - drop + rng.uniform(-6.0, 6.0))
        long_axis = np.array([s * 0.25, 0.3, 1.0])  # upper pole medial and posterior
        axes = frame_from_vectors(long_axis, np.array([s * 1.0, -0.4, 0.0]), primary_axis=2)
        kidneys.append(Ellipsoid(c, axes, radii=np.array([27.0, 18.0, 55.0]) * rng.uniform(0.9, 1.1)))
    parts.append(_clipped("kidney", kidneys, _CAVITY + (C["liver"],)))
    parts += _lung_parts(frames, params, rng)
    return parts


def _lung_parts(frames, params: PhantomParams, rng: np.random.Generator) -> list[Part]:
    """Lung bases: the posterior costophrenic recesses reach about L1, lateral to the spine, above
    the liver and the kidneys' upper poles; vessels branch from the medial top outwards (2.5 ->
    0.8 mm radius). The lung replaces cavity content and liver (the diaphragm is not drawn); the
    vessels replace lung only."""
    v = params.vertebrae
    l1 = frames["L1"]
    lungs, vessels = [], []
    for side, s in SIDE_SIGN.items():
        radii = np.array([55.0, 55.0, 95.0]) * rng.uniform(0.85, 1.1)
        bottom = rng.uniform(-30.0, 5.0)  # lowest point relative to the L1 centre (mm): T12-L1 recesses
        centre = l1.point(s * (v["L1"].a + 50.0), v["L1"].b + 5.0, bottom + radii[2])
        lungs.append(Ellipsoid(centre, np.eye(3), radii=radii))
        hilum = l1.point(s * (v["L1"].a + 20.0), -5.0, bottom + 1.6 * radii[2])
        for _ in range(int(rng.integers(10, 20))):
            # a random target in the lowest part of the lung (what a lumbar CT shows), reached in
            # 4 wiggling steps
            target = centre + radii * rng.uniform(-0.6, 0.6, 3) * np.array([1.0, 1.0, 0.0]) \
                + np.array([0.0, 0.0, -radii[2] * rng.uniform(0.75, 0.97)])
            t = np.linspace(0.0, 1.0, 5)[:, None]
            path = hilum + t * (target - hilum) + rng.normal(0.0, 4.0, (5, 3)) * np.sin(np.pi * t)
            vessels += tube_segments(path, np.linspace(2.5, 0.8, 5) * rng.uniform(0.8, 1.2))
    return [_clipped("lung", lungs, _CAVITY + (C["liver"],)), _clipped("blood_vessel", vessels, (C["lung"],))]


@dataclass
class LevelledEllipsoid(Ellipsoid):
    """The part of an ellipsoid in front of a coronal plane: gas over fluid in a supine patient's
    bowel loop, whose air-fluid level is flat (a straight line in axial and sagittal slices).

    Attributes:
        level_mm: the plane's body y relative to the centre (negative: anterior; body y points
            posteriorly).
    """

    level_mm: float = 0.0

    def local_sdf(self, l0, l1, l2):
        a = self.axes
        y = l0 * float(a[0, 1]) + l1 * float(a[1, 1]) + l2 * float(a[2, 1])  # body y - centre y
        return np.maximum(super().local_sdf(l0, l1, l2), y - float(self.level_mm))

    local_inside = Primitive.local_inside  # the sign of local_sdf, not the ellipsoid's own test


#: Air-fluid level of a gas-capped contrast loop, in front of its centre, as a share of its smallest radius.
GAS_LEVEL_SHARE = 0.35


def _contrast_bowel(frames, params: PhantomParams, rng: np.random.Generator) -> list[Part]:
    """Loops with positive oral contrast, some with a gas cap anteriorly (the patient is supine;
    since phantom version 12 the cap is the loop's front above a flat air-fluid level, not a round
    bubble, which blinded readers named as a "perfectly round black dot")."""
    ext = spine_extent(frames, params)
    y_front_body = ext["y_back"] - ext["depth"]
    half_w = 0.5 * params.body_width - params.fat_mm - 30.0
    loops, gas = [], []
    for _ in range(int(rng.integers(8, 20))):
        c = np.array([rng.uniform(-half_w, half_w), rng.uniform(y_front_body + params.fat_mm + 25.0, ext["y_front"] - 20.0),
                      rng.uniform(-140.0, 170.0)])
        radii = rng.uniform(8.0, 22.0, 3)
        axes = frame_from_vectors(rng.normal(size=3), rng.normal(size=3))
        loops.append(Ellipsoid(c, axes, radii=radii))
        if rng.uniform() < 0.3:
            gas.append(LevelledEllipsoid(c, axes, radii=radii, level_mm=-GAS_LEVEL_SHARE * float(radii.min())))
    parts: list[Part] = [_clipped("bowel_contrast", loops, _CAVITY)]
    if gas:
        parts.append(_clipped("bowel_gas", gas, (C["bowel_contrast"],)))
    return parts


# ----------------------------------------------------------------------------------- table


@dataclass
class CurvedPlate(Primitive):
    """A sector of a cylindrical shell (a CT table, concave towards the patient).

    Local frame: axis 2 along the cylinder axis (the table's length), the plate's mid-surface at
    distance ``radius`` from the axis on the local +1 side, ``half_width`` along local 0 (chord
    half-length), ``half_thickness`` across. Signed distance: exact in the radial direction,
    a bound at the edges.
    """

    radius: float = 800.0
    half_thickness: float = 20.0
    half_width: float = 220.0
    half_length: float = 600.0

    def local_sdf(self, l0, l1, l2):
        r = np.sqrt(l0 * l0 + l1 * l1)
        d = np.abs(r - float(self.radius)) - float(self.half_thickness)
        d = np.maximum(d, np.abs(l0) - float(self.half_width))
        d = np.maximum(d, -l1)  # only the half on the +1 side
        return np.maximum(d, np.abs(l2) - float(self.half_length))

    def local_bounds(self):
        low = np.sqrt(max(self.radius ** 2 - self.half_width ** 2, 0.0)) - self.half_thickness
        return (np.array([-self.half_width, low, -self.half_length]),
                np.array([self.half_width, self.radius + self.half_thickness, self.half_length]))


def _table_part(frames, params: PhantomParams, rng: np.random.Generator) -> Part:
    """Carbon-fibre shell (1.5-3 mm) round a foam core, 40-60 mm thick, 400-460 mm wide,
    curvature radius 500-900 mm, 0-15 mm below the back (a pad), patient off-centre by up to
    +-20 mm; horizontal in the scanner frame (the pose rotates the patient, not the table)."""
    rot = _pose_rotation(params)  # rows: world axes written in body coordinates
    R = float(rng.uniform(500.0, 900.0))
    ht = 0.5 * float(rng.uniform(40.0, 60.0))
    hw = 0.5 * float(rng.uniform(400.0, 460.0))
    shell = float(rng.uniform(1.5, 3.0))
    gap = float(rng.uniform(0.0, 15.0))
    offset = float(rng.uniform(-20.0, 20.0))
    skin = _columns(frames, params)["skin"]
    ext = spine_extent(frames, params)
    mid = np.array([0.0, ext["y_back"], 0.0])  # back, midline, at the S1 level
    # inner surface at the midline touches y_back + gap, then push back until clear of the skin
    axis_pt = mid + rot[1] * (gap - (R - 2.0 * ht)) + rot[0] * offset
    u = np.linspace(-hw, hw, 41)
    w = np.linspace(-600.0, 600.0, 61)  # the whole table length: the body widens caudally
    for _ in range(3):
        inner = R - 2.0 * ht  # inner (patient-side) surface radius: plate spans [R - 2 ht, R]
        uu, ww = np.meshgrid(u, w)
        uu = np.clip(uu, -inner + 1.0, inner - 1.0)
        ll = np.sqrt(inner ** 2 - uu ** 2)
        pts = axis_pt + uu.reshape(-1, 1) * rot[0] + ll.reshape(-1, 1) * rot[1] + ww.reshape(-1, 1) * rot[2]
        d = skin.sdf_points(pts)
        need = gap - float(d.min())
        if need <= 0.1:
            break
        axis_pt = axis_pt + rot[1] * need
    centre_r = R - ht  # mid-surface
    outer = CurvedPlate(axis_pt, rot.copy(), radius=centre_r, half_thickness=ht, half_width=hw, half_length=600.0)
    core = CurvedPlate(axis_pt, rot.copy(), radius=centre_r, half_thickness=ht - shell, half_width=hw - shell, half_length=601.0)
    return Part("ct_table", C["ct_table"], [outer], subtract=[core])


# ----------------------------------------------------------------------------------- metal


def screw_axes(frames, params: PhantomParams, levels, rng: np.random.Generator | None = None) -> list[dict]:
    """Pedicle screws: per level and side ``{"level", "side", "entry", "tip", "radius", "head"}``
    (body mm). Along the pedicle axis (converging medially), from 6 mm behind the pedicle's
    posterior end to 35 % of the body depth in front of its centre; radius 2.5-3.75 mm but at
    most 0.8 x the pedicle's smaller semi-axis, so the screw stays inside the pedicle."""
    out = []
    for n in levels:
        f, vp = frames[n], params.vertebrae[n]
        for side in SIDE_SIGN:
            ped = pedicle(f, vp, side)
            cos_a = float(ped.axis @ f.axes[1])
            entry = ped.mid + (0.5 * ped.length + 6.0) * ped.axis
            t_tip = (ped.local_mid[1] + 0.35 * vp.b) / max(cos_a, 0.3)
            tip = ped.mid - t_tip * ped.axis
            want = float(rng.uniform(2.5, 3.75)) if rng is not None else 3.25
            radius = min(want, 0.8 * min(ped.half_width, ped.half_height))
            out.append({"level": n, "side": side, "entry": entry, "tip": tip, "radius": radius,
                        "head": entry + 8.0 * ped.axis, "axis": ped.axis.copy()})
    return out


def _metal_part(frames, params: PhantomParams, levels, rng: np.random.Generator) -> Part:
    screws = screw_axes(frames, params, levels, rng)
    prims: list[Primitive] = []
    for sc in screws:
        r = sc["radius"]
        prims += tube_segments(np.array([sc["entry"], sc["tip"]]), [r, 0.6 * r])
        prims += tube_segments(np.array([sc["entry"] + 1.0 * sc["axis"], sc["head"] + 5.0 * sc["axis"]]), [5.5, 5.5])  # tulip
    rod_r = float(rng.uniform(2.5, 3.0))
    for side in SIDE_SIGN:
        heads = np.array([sc["head"] for sc in screws if sc["side"] == side])
        if len(heads) >= 2:
            d = heads[-1] - heads[0]
            d /= np.linalg.norm(d)
            pts = np.vstack([heads[0] - 6.0 * d, heads, heads[-1] + 6.0 * d])
            prims += tube_segments(pts, np.full(len(pts), rod_r))
    return Part("metal", C["metal"], prims)


# ----------------------------------------------------------------------------------- assembly


def surrounding_parts(frames, params: PhantomParams, rng: np.random.Generator,
                      settings: SurroundingsSettings | None = None) -> tuple[list[Part], list[Part]]:
    """The surroundings of one case.

    Args:
        frames: vertebra frames (:func:`spinect.phantom.skeleton.build_column`).
        params: the case parameters (body size, fat, pose).
        rng: a random stream of its own (use a separately spawned one so the rest of the case
            does not change when surroundings change).
        settings: which surroundings; None draws them with :func:`sample_surroundings` first.

    Returns:
        (background, foreground): background parts are sign-only :class:`ClippedPart` organs
        that replace abdominal-cavity content only, to be painted after ``body_layers`` and
        ``abdomen`` and before ``muscles``; foreground parts (ribs, femora: bone codes with a
        cortex; the table; metal last) are painted with partial volume after the bones and
        before the nerves.
    """
    s = settings if settings is not None else sample_surroundings(rng)
    # one child stream per item: switching one item off does not move the others
    r_rib, r_fem, r_org, r_bowel, r_table, r_metal = (np.random.default_rng(int(x)) for x in rng.integers(0, 2**63, 6))
    background: list[Part] = []
    foreground: list[Part] = []
    if s.organs:
        background += _organ_parts(frames, params, r_org)
    if s.oral_contrast:
        background += _contrast_bowel(frames, params, r_bowel)
    if s.ribs:
        foreground += _rib_parts(frames, params, r_rib)
    if s.femora:
        foreground += _femur_parts(frames, params, r_fem)
    if s.table:
        foreground.append(_table_part(frames, params, r_table))
    if s.metal_levels:
        foreground.append(_metal_part(frames, params, s.metal_levels, r_metal))
    return background, foreground


# ----------------------------------------------------------------------------------- appearance


def surrounding_values(settings: SurroundingsSettings, rng: np.random.Generator) -> dict[str, float]:
    """HU per new tissue class for one case (physical mode), plus ``blood`` when IV contrast
    (liver and kidney then take their enhanced ranges)."""
    r = SURROUNDING_HU_RANGES
    iv = settings.iv_contrast
    values = {
        "liver": float(rng.uniform(*r["liver_contrast" if iv else "liver"])),
        "kidney": float(rng.uniform(*r["kidney_contrast" if iv else "kidney"])),
        "oral_contrast": float(rng.uniform(*r["oral_contrast"])),
        "table": float(rng.uniform(*r["table"])),
        "metal": float(rng.uniform(*r["metal"])),
    }
    values["lung"] = float(rng.uniform(*r["lung"]))  # drawn last: the other values stay as before
    if iv:
        values["blood"] = float(rng.uniform(*r["blood_contrast"]))
    return values


def apply_surrounding_values(table: np.ndarray, values: dict[str, float]) -> np.ndarray:
    """Write tissue-class values into a (256,) code -> HU table (in place; returns it)."""
    for code, tissue in STRUCTURE_TISSUE.items():
        if tissue in values:
            table[code] = values[tissue]
    return table


# ----------------------------------------------------------------------------------- artefacts


def _add_line(out: np.ndarray, yy: np.ndarray, xx: np.ndarray, p: np.ndarray, d: np.ndarray, width: float,
              amp: float, decay: float, half_len: float) -> None:
    """Add ``amp * exp(-s^2 / 2 w^2) * exp(-max(|t| - half_len, 0) / decay)`` for a line through
    ``p`` (mm, (y, x)) along unit ``d``: s across, t along (mm)."""
    dy, dx = float(d[0]), float(d[1])
    ry = yy - np.float32(p[0])
    rx = xx - np.float32(p[1])
    s = ry * np.float32(dx) - rx * np.float32(dy)
    band = np.abs(s) < np.float32(3.0 * width)  # only the streak's own band costs exp()
    if not band.any():
        return
    t = (ry * np.float32(dy) + rx * np.float32(dx))[band]
    sb = s[band]
    val = np.exp(np.float32(-0.5 / width ** 2) * sb * sb)
    val *= np.exp(-np.maximum(np.abs(t) - np.float32(half_len), 0.0) / np.float32(decay))
    out[band] += np.float32(amp) * val


def add_metal_artefacts(hu_zyx: np.ndarray, structures_zyx: np.ndarray, spacing_zyx_mm, rng: np.random.Generator) -> np.ndarray:
    """Streak artefacts of metal (in place on float32 HU; returns ``hu_zyx``; labels untouched).

    A cheap line model per axial slice that holds metal (other slices are not changed): the
    metal cross-sections are found (connected components); between each pair a dark band
    (photon starvation / beam hardening along the rays through both; -40..-500 HU, growing with
    the geometric mean of the two areas) and from each object a few radial streaks of
    alternating sign (20..300 HU, growing with its area) that fade exponentially (25-60 mm).
    Apply after rasterising and before the scanner blur and noise.

    Args:
        hu_zyx: (Z, Y, X) float32 HU, modified in place.
        structures_zyx: (Z, Y, X) uint8 structure codes (metal: ``STRUCTURE_CODES["metal"]``).
        spacing_zyx_mm: voxel size (z, y, x) in mm.
        rng: random stream (streak angles, widths, strengths).
    """
    metal = structures_zyx == C["metal"]
    zs = np.flatnonzero(metal.any(axis=(1, 2)))
    if zs.size == 0:
        return hu_zyx
    sy, sx = float(spacing_zyx_mm[1]), float(spacing_zyx_mm[2])
    ny, nx = hu_zyx.shape[1:]
    yy = np.broadcast_to((np.arange(ny, dtype=np.float32) * np.float32(sy))[:, None], (ny, nx))
    xx = np.broadcast_to((np.arange(nx, dtype=np.float32) * np.float32(sx))[None, :], (ny, nx))
    gain = float(rng.uniform(0.6, 1.4))  # per case: kV, dose, any metal-artefact reduction
    n_radial = int(rng.integers(3, 7))
    streak = np.zeros((ny, nx), np.float32)
    for z in zs:
        lab, n = ndimage.label(metal[z])
        idx = np.arange(1, n + 1)
        com = np.array(ndimage.center_of_mass(metal[z], lab, idx)).reshape(-1, 2) * np.array([sy, sx])
        area = np.asarray(ndimage.sum_labels(metal[z], lab, idx), float) * sy * sx
        streak.fill(0.0)
        for i in range(n):
            for j in range(i + 1, n):
                d = com[j] - com[i]
                dist = float(np.linalg.norm(d))
                if dist < 1e-3:
                    continue
                amp = -gain * float(np.clip(1.2 * np.sqrt(area[i] * area[j]), 40.0, 500.0))
                _add_line(streak, yy, xx, 0.5 * (com[i] + com[j]), d / dist, float(rng.uniform(1.5, 3.5)), amp,
                          float(rng.uniform(60.0, 150.0)), 0.5 * dist)
            base = gain * float(np.clip(0.5 * area[i], 20.0, 300.0))
            for k in range(n_radial):
                ang = rng.uniform(0.0, np.pi)
                sign = 1.0 if k % 2 == 0 else -1.0
                _add_line(streak, yy, xx, com[i], np.array([np.sin(ang), np.cos(ang)]), float(rng.uniform(0.6, 1.5)),
                          sign * base * float(rng.uniform(0.5, 1.0)), float(rng.uniform(25.0, 60.0)),
                          0.5 * float(np.sqrt(area[i])))
        hu_zyx[z] += streak
    return hu_zyx


def apply_circular_fov(hu_zyx: np.ndarray, structures_zyx: np.ndarray, spacing_zyx_mm, fraction: float,
                       *, fill_hu: float = -1024.0, min_extent_mm: float = 250.0) -> bool:
    """A scanner's circular reconstruction field of view: outside a circle centred on the image
    (radius ``fraction`` x half the smaller in-plane extent) HU become ``fill_hu`` and structures
    air (0), so the labels follow. Skipped (returns False) on crops smaller than
    ``min_extent_mm`` in-plane, where a circle would not be realistic. In place on (Z, Y, X)."""
    _, ny, nx = hu_zyx.shape
    ext_y, ext_x = ny * float(spacing_zyx_mm[1]), nx * float(spacing_zyx_mm[2])
    if min(ext_y, ext_x) < min_extent_mm:
        return False
    radius = fraction * 0.5 * min(ext_y, ext_x)
    y = (np.arange(ny) - 0.5 * (ny - 1)) * float(spacing_zyx_mm[1])
    x = (np.arange(nx) - 0.5 * (nx - 1)) * float(spacing_zyx_mm[2])
    outside = (y[:, None] ** 2 + x[None, :] ** 2) > radius ** 2
    hu_zyx[:, outside] = np.float32(fill_hu)
    structures_zyx[:, outside] = C["air"]
    return True
