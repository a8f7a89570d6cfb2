"""A thorax above the lumbosacral phantom: T1-T12, ribs 1-12, sternum, chest wall, lungs, heart.

Opt-in: built only when ``generate_case(..., field="thoracolumbar" | "chest")``; the default
``"lumbosacral"`` field is the phantom of before bit for bit (labels, bone/disc/nerve codes and
truth). Everything here is drawn from a generator of its own (derived from the case seed), so the
lumbosacral part of a thorax case is the same patient as the default case of that seed.

* **Thoracic vertebrae T1-T12** (``thoracic_vertebra``, bone): the case's L1 bone grid scaled per
  level (T12 about 0.92 of L1 in width, depth and height, down to about 0.6 width / 0.62 depth /
  0.75 height at T1), stacked on L1 with anteriorly wedged bodies and discs (a kyphosis of 20-45
  deg over T1-T12, discs 3-6 mm, ``disc_thoracic``); the arch behind the canal is sheared
  caudally (spinous processes point down). Each level is kept 1 mm from the one below (facets),
  0.8 mm from the dural sac, which continues up the thoracic canal in epidural fat.
* **Ribs 1-12** both sides (``rib_left`` / ``rib_right``): head beside its vertebra, neck and
  tubercle at the transverse process, posterolaterally to the rib angle, then round the chest wall
  anteriorly and downwards, flattened oval section (about 12 x 6 mm, 1 mm cortex) thinning
  anteriorly. Ribs 1-7 continue as **costal cartilage** (``costal_cartilage``, label 0) to the
  sternum, 8-10 to the cartilage above, 11-12 end free.
* **Sternum** (``sternum``, bone): manubrium (T2-T4), body (to T9), xiphoid, in the anterior wall.
* **Scapulae and clavicles** (``scapula``, ``clavicle``, bone): thin curved blades behind ribs 2-7
  with lateral border, glenoid, spine and acromion; S-curved clavicles from the manubrium.
* **Soft tissue** (sign-only background, painted after the abdomen): a chest outline widening
  above L1 (290-350 x 200-250 mm at T8, narrower at T1) with skin, subcutaneous fat, chest wall
  muscle (``abdominal_wall_muscle``) and the back muscles (``paraspinal_*``); above the diaphragm
  domes (right top at about T10, left lower) the lungs (``lung``) fill the cage around the
  mediastinum (``mediastinal_fat``), heart (``heart`` myocardium, ``heart_chamber`` blood),
  thoracic aorta (arch and descending, continuing the abdominal aorta), IVC, trachea and main
  bronchi (``airway``) and branching pulmonary vessels (``blood_vessel``); the liver fills the right
  dome.

Body coordinates (mm; +x left, +y posterior, +z superior); arrays (z, y, x).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from spinect.errors import SpinectError
from spinect.phantom.bones import SIDE_SIGN, disc_body
from spinect.phantom.meshes import MeshPart, load_library
from spinect.phantom.parts import Part
from spinect.phantom.primitives import Ellipsoid, GridBox, frame_from_vectors, smoothstep, tube_segments
from spinect.phantom.skeleton import VertebraFrame, _body, _vertebra_above
from spinect.phantom.structures import STRUCTURE_CODES as C
from spinect.phantom.surroundings import ClippedPart, _densify

__all__ = ["FIELDS", "DEFAULT_FIELD", "THORACIC_NAMES", "check_field", "ThoraxSettings", "Thorax", "build_thorax",
           "attach_thorax", "thorax_values", "THORAX_HU_RANGES"]

#: Fields of view of :func:`spinect.phantom.generate_case`; only the default has no thorax.
FIELDS: tuple[str, ...] = ("lumbosacral", "thoracolumbar", "chest")
DEFAULT_FIELD = "lumbosacral"
#: Thoracic vertebrae from cranial to caudal.
THORACIC_NAMES: tuple[str, ...] = tuple(f"T{i}" for i in range(1, 13))
#: HU ranges of the thorax's own tissue classes (``*_contrast``: with IV contrast).
THORAX_HU_RANGES: dict[str, tuple[float, float]] = {
    "cartilage": (60.0, 180.0), "myocardium": (30.0, 50.0), "myocardium_contrast": (90.0, 140.0),
    "heart_blood_contrast": (200.0, 450.0),
}
#: Codes the thorax's organs may replace.
_CHEST = (C["lung"], C["mediastinal_fat"])
_ABDO = (C["visceral_fat"], C["bowel"], C["bowel_gas"])


def check_field(value: str) -> str:
    """Validated field of view name.

    Raises:
        SpinectError: anything but one of :data:`FIELDS`.
    """
    if not isinstance(value, str) or value not in FIELDS:
        raise SpinectError(f"unknown phantom field {value!r}: use one of {', '.join(FIELDS)}")
    return value


@dataclass(frozen=True)
class ThoraxSettings:
    """One case's thorax (truth JSON ``thorax``)."""

    field: str
    kyphosis_deg: float
    chest_width_mm: float
    chest_depth_mm: float
    fat_mm: float
    fat_back_mm: float
    wall_mm: float
    dome_right_mm: float
    dome_left_drop_mm: float
    heart_scale: float
    shoulder_mm: float = 0.0
    disc_mm: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class UnionPart(Part):
    """A bone made of several placed grids (the unsheared body and pedicles + the sheared arch)."""

    members: list

    def body_bounds(self):
        b = [m.body_bounds() for m in self.members]
        return np.min([x[0] for x in b], axis=0), np.max([x[1] for x in b], axis=0)

    def raw(self, name: str) -> "UnionPart":
        out = UnionPart(name, 0, [])
        out.members = [m.raw(name) for m in self.members]
        return out

    def sdf_box(self, box: GridBox) -> np.ndarray:
        d = None
        for m in self.members:
            dm = m.sdf_box(box)
            d = dm if d is None else np.minimum(d, dm, out=d)
        return self._carve(d, box)

    def sdf_points(self, points: np.ndarray, *, cut: bool = True) -> np.ndarray:
        points = np.asarray(points, float).reshape(-1, 3)
        d = np.min([m.sdf_points(points) for m in self.members], axis=0)
        for cutter, margin in self.cutters if cut else ():
            d = np.maximum(d, margin - cutter.sdf_points(points))
        return d


def _placement(frame: VertebraFrame, measured: dict, scale, shear: float = 0.0, y0: float = 0.0):
    """[M | c] body -> source LPS of a bone on ``frame`` scaled by (lat, post, cran), with the
    cranial coordinate sheared by ``shear`` x (posterior - y0) (the arch tilted caudally)."""
    s = np.asarray(scale, float)
    a = np.asarray(measured["axes"], float).T @ np.diag(1.0 / s)
    sh = np.eye(3)
    sh[2, 1] = shear
    m = a @ sh @ frame.axes
    c = np.asarray(measured["origin_xyz_mm"], float) + a @ np.array([0.0, 0.0, -shear * y0]) - m @ frame.centre
    return np.concatenate([m, c[:, None]], axis=1), float(s.min() / np.sqrt(1.0 + shear * shear))


@dataclass
class Thorax:
    """One case's thorax: settings, frames, centrelines and parts in paint order."""

    settings: ThoraxSettings
    frames: dict[str, VertebraFrame]
    dims: dict[str, tuple[float, float, float]]
    ribs: dict[tuple[str, int], np.ndarray]
    cartilage: dict[tuple[str, int], np.ndarray]
    sternum: np.ndarray
    background: list[Part] = field(default_factory=list)
    soft_foreground: list[Part] = field(default_factory=list)
    bones: list[Part] = field(default_factory=list)
    nerves: list[Part] = field(default_factory=list)

    def anchor(self) -> np.ndarray:
        """Centre of the field of view: T12/L1 (thoracolumbar) or T7/T8 (chest), at the canal."""
        if self.settings.field == "chest":
            f7, f8 = self.frames["T7"], self.frames["T8"]
            p = 0.5 * (f7.centre + f8.centre)
            return p + np.array([0.0, -35.0, 0.0])  # the chest's centre is in front of the spine
        p = 0.5 * (self.frames["T12"].centre + self.frames["L1"].centre)
        return p + np.array([0.0, -20.0, 0.0])

    def to_dict(self) -> dict:
        out = self.settings.to_dict()
        out["vertebra_centres_mm"] = {n: np.round(self.frames[n].centre, 3).tolist() for n in THORACIC_NAMES}
        out["rib_centrelines_mm"] = {f"{side}_{n}": np.round(p[:: max(1, len(p) // 12)], 2).tolist()
                                     for (side, n), p in sorted(self.ribs.items())}
        out["sternum_centreline_mm"] = np.round(self.sternum, 2).tolist()
        return out


# ------------------------------------------------------------------------------------ outline


class _Outline:
    """The trunk's cross-section (skin) as a function of body z: the abdominal column below L1,
    blending into the chest ellipse above; ``level`` values (spine centre y, half width/depth)
    interpolated along the column."""

    def __init__(self, frames, params, th: ThoraxSettings, names):
        from spinect.phantom.soft_tissue import spine_extent

        ext = spine_extent(frames, params)
        self.y_back_a, self.depth_a, self.width_a = ext["y_back"], ext["depth"], params.body_width
        zs = np.array([frames[n].centre[2] for n in names])
        order = np.argsort(zs)
        self.zs = zs[order]
        self.yc = np.array([frames[n].centre[1] for n in names])[order]
        self.zj = float(frames["L1"].centre[2])
        z = {n: float(frames[n].centre[2]) for n in names}
        self.z6, self.z1, self.z10, self.z2 = z["T6"], z["T1"], z["T10"], z["T2"]
        self.th = th
        self.a_of = None
        self.b_of = None

    def spine(self, z):
        return np.interp(z, self.zs, self.yc)

    def skin(self, z, shoulders: bool = True):
        """(cy, rx, ry, y_back) of the skin at body heights ``z`` (arrays); ``shoulders``: widened
        above T6 by the shoulder girdle (``shoulder_mm`` per side at T2), else the chest wall only."""
        z = np.asarray(z, float)
        th = self.th
        taper = smoothstep((z - self.z6) / (self.z1 + 15.0 - self.z6))
        wc = th.chest_width_mm * (1.0 - 0.2 * taper)
        dc = th.chest_depth_mm * (1.0 - 0.22 * taper)
        yb_c = self.spine(z) + np.interp(z, self.zs, self.b_of) + 55.0 + th.fat_back_mm
        w = smoothstep((z - self.zj) / max(self.z10 - self.zj, 20.0))
        za = np.minimum(z, self.zj)  # the abdominal column, frozen above L1
        rx_a = 0.5 * self.width_a - 0.12 * za
        ry_a = 0.58 * self.depth_a - 0.03 * za
        rx = (1 - w) * rx_a + w * 0.5 * wc
        if shoulders:
            rx = rx + th.shoulder_mm * smoothstep((z - self.z6) / (self.z2 - self.z6))
        ry = (1 - w) * ry_a + w * 0.58 * dc
        yb = (1 - w) * self.y_back_a + w * yb_c
        depth = (1 - w) * self.depth_a + w * dc
        cy = yb - depth + ry
        return cy, rx, ry, yb

    def cage(self, z, inset):
        """(cy, rx, ry) of the chest cavity ``inset`` mm inside the skin: the front and sides follow
        the skin, the back 36 mm behind the vertebral bodies (the rib angles). The
        front half is an ellipse, the back half a superellipse of exponent :data:`BACK_POWER`
        (the broad, flat back of the lungs)."""
        z = np.asarray(z, float)
        cy, rx, ry, yb = self.skin(z, shoulders=False)
        front = cy - ry + inset
        back = self.spine(z) + np.interp(z, self.zs, self.b_of) + 36.0
        return 0.5 * (front + back), rx - inset, 0.5 * (back - front)


#: Superellipse exponent of the back half of the chest cavity.
BACK_POWER = 4.0


def _in_cage(x, y, cy, rx, ry, grow=0.0):
    """Inside the chest cavity (ellipse in front, superellipse behind), ``grow`` mm larger."""
    u = np.abs(x) / (rx + grow)
    v = np.abs(y - cy) / (ry + grow)
    p = np.where(y >= cy, BACK_POWER, 2.0)
    return u ** p + v ** p <= 1.0


# ------------------------------------------------------------------------------------ painter


#: Amplitude (mm) of the smooth waves added to the thorax painter's inner borders (version 10).
WOBBLE_MM = 3.0


class Wobble:
    """A smooth random offset (mm) of two coordinates: a sum of three plane waves of 35-90 mm
    wavelength and random direction, ``WOBBLE_MM`` in all (the thorax painter's borders, which
    blinded readers saw as ruler-straight lines)."""

    def __init__(self, seed: int, amplitude_mm: float = WOBBLE_MM):
        rng = np.random.default_rng(int(seed))
        ang = rng.uniform(0.0, 2.0 * np.pi, 3)
        k = 2.0 * np.pi / rng.uniform(35.0, 90.0, 3)
        self.ku, self.kv = (k * np.cos(ang)).astype(np.float32), (k * np.sin(ang)).astype(np.float32)
        self.phase = rng.uniform(0.0, 2.0 * np.pi, 3).astype(np.float32)
        self.amp = (amplitude_mm * rng.dirichlet(np.ones(3))).astype(np.float32)

    def __call__(self, u, v) -> np.ndarray:
        """Offset (mm) at coordinates ``u``, ``v`` (mm, broadcast arrays)."""
        return sum(a * np.sin(ku * u + kv * v + ph) for a, ku, kv, ph in zip(self.amp, self.ku, self.kv, self.phase))


class ThoraxBody(Part):
    """Sign-only painter of the chest above L1: wall layers, back muscles, and above the
    diaphragm lungs and mediastinum; below the domes the abdominal content is kept (air and
    old wall codes inside the new outline become visceral fat), with a 4 mm diaphragm.

    Since version 10 the inner borders (back muscles, lung gutters, mediastinum, domes) are
    curved and waved (``wobble``: four :class:`Wobble` fields) rather than straight lines."""

    outline: _Outline
    dome: tuple
    lo_z: float
    hi_z: float
    wobble: tuple | None = None

    def body_bounds(self):
        return np.array([-400.0, -400.0, self.lo_z]), np.array([400.0, 400.0, self.hi_z])

    def dome_z(self, x, y):
        zr, zl_drop, yc_d, half = self.dome
        xs = np.abs(x)
        rise = np.where(x >= 0, zr - zl_drop, zr)
        dx = np.maximum(xs - 45.0, 0.0) / 95.0
        dy = (y - yc_d) / 95.0
        return rise - 75.0 * (dx * dx + np.where(dy > 0, 1.6, 0.8) * dy * dy) - np.where(xs < 45.0, 12.0 * (1 - xs / 45.0), 0.0)

    def paint_inside(self, root: GridBox, structures: np.ndarray) -> None:
        o, th = self.outline, self.outline.th
        nz, ny, nx = root.shape
        iy, ix = np.meshgrid(np.arange(ny, dtype=np.float32), np.arange(nx, dtype=np.float32), indexing="ij")
        base = root.origin[None, None, :] + iy[..., None] * root.step[1] + ix[..., None] * root.step[2]
        wall = np.array([C["skin"], C["subcutaneous_fat"], C["abdominal_wall_muscle"]], np.uint8)
        old_wall = np.zeros(256, bool)
        old_wall[[C["air"], C["skin"], C["subcutaneous_fat"], C["abdominal_wall_muscle"]]] = True
        w_gut, w_dome, w_med, w_back = self.wobble if self.wobble is not None else (lambda u, v: 0.0,) * 4
        for k in range(nz):
            p = base + k * root.step[0]
            z = p[..., 2]
            if z.max() < self.lo_z or z.min() > self.hi_z:
                continue
            x, y = p[..., 0], p[..., 1]
            cy, rx, ry, yb = o.skin(z)
            q = lambda inset, back: np.where(y <= yb - back, (x / (rx - inset)) ** 2 + ((y - cy) / (ry - inset)) ** 2, 9.0)
            act = z >= self.lo_z
            sl = structures[k]
            layer = np.full(z.shape, -1, np.int8)  # -1 outside
            layer[q(0.0, 0.0) <= 1] = 0
            layer[q(2.0, 2.0) <= 1] = 1
            layer[q(th.fat_mm, th.fat_back_mm) <= 1] = 2
            yc = o.spine(z)
            bz = np.interp(z, o.zs, o.b_of)
            az = np.interp(z, o.zs, o.a_of)
            ccy, crx, cry = o.cage(z, th.fat_mm + th.wall_mm)
            # the paravertebral gutters: the lungs reach 14 mm behind the vertebral body beside it,
            # deeper towards the rib angles (the back muscles and transverse processes in between)
            if self.wobble is None:  # the straight borders of phantom versions before 10
                gutter = yc + bz + 14.0 + np.clip(np.abs(x) - az - 12.0, 0.0, None) * 0.6
            else:  # the same slope, its kink rounded (softplus over 6 mm), waved
                gutter = yc + bz + 14.0 + 0.6 * 6.0 * np.logaddexp(0.0, (np.abs(x) - az - 12.0) / 6.0) + w_gut(x, z)
            interior = _in_cage(x, y, ccy, crx, cry) & (y <= gutter) & (layer >= 2)
            layer[interior] = 3
            dz = self.dome_z(x, y) + w_dome(x, y)
            above = z > dz
            lung = interior & above
            # mediastinum: around the spine and a band in front of it; the back muscles behind
            front = yc - bz
            wide = np.where(z > o.z1 - 0.35 * (o.z1 - o.z6), 26.0, 34.0) + w_med(y, z)
            med = (np.abs(x) < wide) & (y < front + 4.0)
            med |= (np.abs(x) < az + 9.0 + 0.5 * w_med(y, z)) & (y < yc + bz) & (y >= front - 6.0)
            if self.wobble is None:
                back = (layer >= 2) & (y > yc + bz - 2.0) & (np.abs(x) < az + 58.0)
            else:  # the back muscles' front follows the ribs backwards laterally (a parabola), waved
                lat = np.clip(np.abs(x) - az, 0.0, None)
                back = (layer >= 2) & (y > yc + bz - 2.0 + 0.008 * lat * lat + w_back(x, z)) & (lat < 70.0)
            code = np.zeros(z.shape, np.uint8)
            code[layer >= 0] = wall[np.clip(layer[layer >= 0], 0, 2)]
            keep = (layer == 3) & ~above
            cur = sl
            code[keep] = np.where(old_wall[cur[keep]], C["visceral_fat"], cur[keep])
            code[keep & (z > dz - 4.0)] = C["abdominal_wall_muscle"]  # the diaphragm
            code[lung] = np.where(med[lung], C["mediastinal_fat"], C["lung"])
            code[back & ~lung] = np.where(x[back & ~lung] >= 0, C["paraspinal_left"], C["paraspinal_right"])
            np.putmask(sl, act, code)


# ------------------------------------------------------------------------------------ build


def _sample_settings(field_name: str, rng: np.random.Generator, params) -> ThoraxSettings:
    u = rng.uniform(size=10)
    return ThoraxSettings(
        field=field_name, kyphosis_deg=float(20.0 + 25.0 * u[0]), chest_width_mm=float(280.0 + 60.0 * u[1]),
        chest_depth_mm=float(210.0 + 50.0 * u[2]), fat_mm=float(np.clip(params.fat_mm * (0.3 + 0.3 * u[3]), 4.0, 25.0)),
        fat_back_mm=float(np.clip(params.fat_posterior_mm * (0.4 + 0.3 * u[4]), 5.0, 25.0)),
        wall_mm=float(12.0 + 8.0 * u[5]), dome_right_mm=float(-10.0 + 25.0 * u[6]),
        dome_left_drop_mm=float(5.0 + 15.0 * u[7]), heart_scale=float(0.9 + 0.2 * u[8]),
        shoulder_mm=float(25.0 + 35.0 * u[9]),
    )


def _column(frames, params, lib, rng, th: ThoraxSettings):
    """Thoracic frames (T12 .. T1 stacked on L1), their (a, b, h) and the source grid + scales."""
    vl1 = params.vertebrae["L1"]
    source = (params.extras.get("mesh_sources") or {}).get("L1", "vhm__L1")
    grid = lib.get(source) or lib["vhm__L1"]
    meas = grid.measured
    base = np.array([vl1.a / meas["a"], vl1.b / meas["b"], vl1.h_post / meas["h_post"]])
    per = np.radians(th.kyphosis_deg) / 12.0
    out, dims, scales, discs = {}, {}, {}, []
    lower_sup, lower_b, lower_name = frames["L1"].superior, vl1.b, "L1"
    for i, name in enumerate(reversed(THORACIC_NAMES)):  # T12 first
        t = i / 11.0
        f = np.array([0.92 - 0.32 * t, 0.92 - 0.30 * t, 0.92 - 0.17 * t]) * (1.0 + rng.uniform(-0.03, 0.03, 3))
        s = base * f
        a, b, h = meas["a"] * s[0], meas["b"] * s[1], meas["h_post"] * s[2]
        d = float(5.5 - 2.0 * t + rng.uniform(-0.5, 0.5))
        bm = 0.5 * (b + lower_b)
        k_disc = 0.4 * per * (0.6 if i < 2 else 1.1)
        disc = (d + bm * np.tan(k_disc), max(d - bm * np.tan(k_disc), 1.5))
        inferior = _vertebra_above(lower_sup, lower_b, b, disc)
        k_body = (0.6 if i < 2 else 1.1) * per - k_disc
        h_ant = h - 2.0 * b * np.tan(k_body)
        fr = _body(name, inferior, b, h, h_ant)
        out[name], dims[name], scales[name] = fr, (a, b, h), s
        discs.append(round(d, 3))
        lower_sup, lower_b, lower_name = fr.superior, b, name
    return out, dims, scales, grid, discs


def _vertebra_parts(frames, dims, scales, grid, all_nerves, l1_part) -> list[UnionPart]:
    meas = grid.measured
    parts = {}
    for i, name in enumerate(THORACIC_NAMES):  # T1 first
        f, (a, b, h), s = frames[name], dims[name], scales[name]
        y0 = b + 0.6 * meas["canal_depth"] * s[1]
        shear = 0.35 + 0.45 * np.sin(np.pi * min(i, 10) / 10.0)  # steepest mid-thoracic
        m_front, k_front = _placement(f, meas, s)
        m_back, k_back = _placement(f, meas, s, shear, y0)
        cut = f.point(0.0, y0, 0.0)
        front = MeshPart(name, C["thoracic_vertebra"], [], cortex_mm=1.2, grid=grid, source_from_body=m_front, dist_scale=k_front,
                         planes=[(cut, f.axes[1].copy())])
        back = MeshPart(name, C["thoracic_vertebra"], [], cortex_mm=1.2, grid=grid, source_from_body=m_back, dist_scale=k_back,
                        planes=[(cut, -f.axes[1])])
        part = UnionPart("thoracic_vertebra", C["thoracic_vertebra"], [], cortex_mm=1.2)
        part.members = [front, back]
        parts[name] = part
    names = list(THORACIC_NAMES)
    for upper, lower in zip(names, names[1:]):
        parts[upper].cutters.append((parts[lower].raw(f"below_{upper}"), 1.0))
    parts["T12"].cutters.append((l1_part.raw("below_T12"), 1.0))
    for name in ("T11", "T12"):
        parts[name].cutters.append((all_nerves, 0.8))
    return [parts[n] for n in names]


def build_thorax(anatomy, field_name: str, rng: np.random.Generator) -> Thorax:
    """The thorax of one case (``anatomy``: the mesh or primitive lumbosacral anatomy; ``rng``:
    the thorax's own stream)."""
    params = anatomy.params
    lib = load_library()
    th = _sample_settings(field_name, rng, params)
    tframes, dims, scales, grid, discs = _column(anatomy.frames, params, lib, rng, th)
    th = ThoraxSettings(**{**asdict(th), "disc_mm": discs})
    frames = dict(anatomy.frames)
    frames.update(tframes)
    names = list(THORACIC_NAMES) + ["L1"]
    vl1 = params.vertebrae["L1"]
    dims_all = dict(dims)
    dims_all["L1"] = (vl1.a, vl1.b, vl1.h_post)
    outline = _Outline(frames, params, th, names)
    order = np.argsort([frames[n].centre[2] for n in names])
    outline.a_of = np.array([dims_all[n][0] for n in names])[order]
    outline.b_of = np.array([dims_all[n][1] for n in names])[order]
    z = {n: float(frames[n].centre[2]) for n in names}

    # ---- bones: vertebrae
    all_nerves = next((c for p in anatomy.bones for c, _ in p.cutters if c.name == "nerves"), None)
    l1_part = next(p for p in anatomy.bones if p.name == "L1")
    if not hasattr(l1_part, "raw"):
        l1_part = _PrimitiveRaw(l1_part)
    verts = _vertebra_parts(tframes, dims, scales, grid, all_nerves, l1_part)
    if all_nerves is None:
        for v in verts:
            v.cutters = [c for c in v.cutters if c[0] is not None]
    vert_of = dict(zip(THORACIC_NAMES, verts))

    # ---- dural sac and epidural fat up the canal
    meas = grid.measured
    pts, lat, ap = [], [], []
    l1f = frames["L1"]
    for name in ["L1"] + list(reversed(THORACIC_NAMES)):
        f = frames[name]
        a, b, h = dims_all[name]
        s = scales.get(name, np.array([1.0, 1.0, 1.0]))
        dl = float(np.clip(meas["canal_half"] * s[0] - 1.5, 3.5, 8.0)) if name != "L1" else 7.0
        da = float(np.clip(0.5 * (meas["canal_depth"] * s[1] - 2.5), 3.0, 6.5)) if name != "L1" else 6.0
        for zz in ((0.45 * h,) if name == "L1" else (-0.3 * h, 0.3 * h)):
            pts.append(f.point(0.0, b + 1.5 + da, zz))
            lat.append(dl)
            ap.append(da)
    top = frames["T1"].point(0.0, dims["T1"][1] + 1.5 + ap[-1], dims["T1"][2] + 30.0)
    pts.append(top)
    lat.append(lat[-1])
    ap.append(ap[-1])
    pts = np.array(pts)
    dura = Part("dural_sac", C["dural_sac"], tube_segments(pts, lat, ap))
    epi = Part("epidural_fat", C["epidural_fat"], tube_segments(pts, np.array(lat) + 1.8, np.array(ap) + 1.8))
    for v in verts:
        v.cutters.append((dura, 0.8))

    # ---- discs
    disc_parts = []
    chain = ["L1"] + list(reversed(THORACIC_NAMES))
    for lower, upper in zip(chain, chain[1:]):
        a = 0.5 * (dims_all[lower][0] + dims_all[upper][0])
        b = 0.5 * (dims_all[lower][1] + dims_all[upper][1])
        disc_parts.append(Part("disc_thoracic", C["disc_thoracic"], [disc_body(frames[lower], frames[upper], a, b)], smooth_mm=1.0))

    # ---- ribs
    cage_inset = th.fat_mm + th.wall_mm  # the pleura; rib centres 5 mm outside it

    def cage_point(phi_deg, zz, s):
        cy, rx, ry = outline.cage(np.array([zz]), cage_inset)
        ph = np.radians(phi_deg)
        e = 2.0 / (BACK_POWER if phi_deg < 90.0 else 2.0)
        x = s * (rx[0] + 5.0) * abs(np.sin(ph)) ** e
        y = cy[0] + (ry[0] + 5.0) * np.sign(np.cos(ph)) * abs(np.cos(ph)) ** e
        yc = outline.spine(zz)
        bz = float(np.interp(zz, outline.zs, outline.b_of))
        return np.array([x, min(y, yc + bz + 40.0), zz])

    # sternum: manubrium top at T2's upper endplate, sternal angle at T4/5, xiphisternal joint at T9
    z_top = z["T2"] + 5.0
    z_angle = 0.5 * (z["T4"] + z["T5"])
    z_xs = z["T9"]
    z_xiph = z["T10"] - 10.0
    st_z = np.array([z_top, z_angle + 2.0, z_angle - 2.0, 0.5 * (z_angle + z_xs), z_xs, z_xiph])
    st_half = np.array([26.0, 15.0, 14.0, 16.0, 13.0, 7.0]) * rng.uniform(0.9, 1.1)
    st_thick = np.array([7.0, 6.0, 5.5, 5.5, 5.0, 3.0]) * rng.uniform(0.9, 1.1)
    st_pts = []
    for zz in st_z:
        cy, rx, ry = outline.cage(np.array([zz]), cage_inset)
        st_pts.append([0.0, cy[0] - ry[0] - 4.0, zz])
    st_pts = np.array(st_pts)
    sternum = Part("sternum", C["sternum"], tube_segments(st_pts, st_half, st_thick, lateral=(1.0, 0.0, 0.0)),
                   smooth_mm=2.0, cortex_mm=1.0)

    def sternal_edge(zz, s):
        hw = float(np.interp(zz, st_z[::-1], st_half[::-1]))
        y = float(np.interp(zz, st_z[::-1], st_pts[::-1, 1]))
        return np.array([s * (hw - 2.0), y, zz])

    att = {1: z_top - 14.0, 2: z_angle}
    for n in range(3, 8):
        att[n] = z_angle + (z_xs - z_angle) * (n - 2) / 5.0
    phi_end = {1: 145.0, 2: 150.0, 3: 152.0, 4: 153.0, 5: 152.0, 6: 150.0, 7: 147.0, 8: 140.0, 9: 132.0, 10: 124.0,
               11: 108.0, 12: 85.0}
    ribs, cart = {}, {}
    rib_parts, cart_parts = [], []
    for side, s in SIDE_SIGN.items():
        for n in range(1, 13):
            name = f"T{n}"
            f = frames[name]
            a, b, h = dims_all[name]
            head = f.point(s * 0.8 * a, 0.55 * b, 0.45 * h)
            tub = f.point(s * (a + 14.0), b + 12.0, 0.2 * h)
            z0 = float(tub[2])
            if n <= 7:
                # the costochondral junction: level with the sternal end for the upper ribs, ever
                # lower for 3-7 (their cartilages ascend medially to the sternum)
                z_end = att[n] + (10.0 if n == 1 else 2.0 - 9.0 * (n - 2))
            elif n <= 10:
                z_end = z0 - 95.0 - 10.0 * (n - 8)
            else:
                z_end = z0 - (70.0 if n == 11 else 40.0)
            z_end += float(rng.uniform(-4.0, 4.0))
            pe = phi_end[n] + float(rng.uniform(-4.0, 4.0))
            phis = np.linspace(30.0, pe, 10)
            tt = (phis - phis[0]) / (pe - phis[0])
            zz = z0 + (z_end - z0) * tt ** 1.3
            arc = [cage_point(ph, zv, s) for ph, zv in zip(phis, zz)]
            if n == 1:  # the first rib: short and flat, turning forward at once
                arc = [cage_point(ph, zv, s) * np.array([0.85, 1.0, 1.0]) for ph, zv in zip(phis, zz)]
            line = _densify(np.vstack([head, tub, arc]), 4.0)
            ribs[(side, n)] = line
            m = len(line)
            taper = np.linspace(1.0, 0.82, m)
            tall = 6.0 * taper * float(rng.uniform(0.9, 1.1)) * (0.8 if n in (1, 11, 12) else 1.0)
            thin = 3.0 * taper
            tall[:3], thin[:3] = 4.5, 4.0  # head and neck
            cuts = [0, min(m - 1, int(0.3 * m)), min(m - 1, int(0.65 * m)), m - 1]
            cuts = sorted(set(cuts))
            for j, (i0, i1) in enumerate(zip(cuts[:-1], cuts[1:])):
                segs = tube_segments(line[i0 : i1 + 1], tall[i0 : i1 + 1], thin[i0 : i1 + 1], lateral=(0.0, 0.0, 1.0))
                part = Part(f"rib_{side}", C[f"rib_{side}"], segs, cortex_mm=1.0)
                if j == 0:
                    part.cutters.append((vert_of[name].raw(f"rib_joint_{name}"), 1.2))
                    if n > 1:
                        part.cutters.append((vert_of[f"T{n - 1}"].raw(f"rib_joint_{n - 1}"), 1.2))
                rib_parts.append(part)
            # costal cartilage
            end = line[-1]
            if n <= 7:
                tgt = sternal_edge(att[n], s)
                mid = 0.5 * (end + tgt) + np.array([0.0, -4.0, 0.0])
                c_line = _densify(np.vstack([end, mid, tgt]), 4.0)
            elif n <= 10:
                prev = cart[(side, n - 1)]
                tgt = prev[int(0.55 * (len(prev) - 1))]
                mid = 0.5 * (end + tgt) + np.array([0.0, -3.0, -4.0])
                c_line = _densify(np.vstack([end, mid, tgt]), 4.0)
            else:
                continue
            cart[(side, n)] = c_line
            k = len(c_line)
            cart_parts.append(Part("costal_cartilage", C["costal_cartilage"],
                                   tube_segments(c_line, np.linspace(5.0, 4.0, k), np.linspace(3.5, 3.0, k), lateral=(0.0, 0.0, 1.0))))

    # ---- soft tissue painter
    body = ThoraxBody("thorax_body", 0, [], partial_volume=False)
    body.outline = outline
    body.lo_z = float(z["L1"])
    body.hi_z = 1000.0
    # from the settings, not the geometry stream, so the rest of the thorax stays as in version 9
    wob_seed = int(1e6 * (th.kyphosis_deg + 3.0 * th.chest_width_mm + 7.0 * th.wall_mm)) % 2**32
    body.wobble = tuple(Wobble(s) for s in np.random.SeedSequence(wob_seed).generate_state(4))
    cy8, rx8, ry8, yb8 = outline.skin(np.array([z["T8"]]))
    body.dome = (z["T10"] + th.dome_right_mm, th.dome_left_drop_mm,
                 float(outline.cage(np.array([z["T8"]]), th.fat_mm + th.wall_mm)[0][0]), 0.0)
    background: list[Part] = [body]
    # liver under the right dome
    zr = z["T10"] + th.dome_right_mm
    cy, inner_rx, inner_ry = (float(v[0]) for v in outline.cage(np.array([zr - 60.0]), th.fat_mm + th.wall_mm))
    liver = Ellipsoid(np.array([-0.42 * inner_rx, cy - 0.05 * inner_ry, zr - 75.0]), np.eye(3),
                      radii=np.array([0.62 * inner_rx, 0.85 * inner_ry, 85.0]))
    lv = ClippedPart("liver", C["liver"], [liver], partial_volume=False,
                     allowed=_ABDO)
    background.append(lv)
    # heart: anterior-left, T6-T10, on the central tendon
    hs = th.heart_scale
    y_front = float(outline.spine(z["T8"]) - dims["T8"][1])
    ccy8, _, cry8 = outline.cage(np.array([z["T8"]]), th.fat_mm + th.wall_mm)
    y_ant = float(ccy8[0] - cry8[0])
    hc = np.array([32.0, min(y_ant + 44.0 * hs, 0.5 * (y_front + y_ant)), z["T8"] - 5.0])  # the right ventricle behind the sternum
    h_axes = frame_from_vectors(np.array([0.55, -0.5, -0.55]), np.array([0.0, 0.0, 1.0]), primary_axis=2)
    h_rad = np.array([50.0, 46.0, 66.0]) * hs
    peri = ClippedPart("mediastinal_fat", C["mediastinal_fat"], [Ellipsoid(hc, h_axes, radii=h_rad + 5.0)], partial_volume=False,
                       allowed=_CHEST)
    heart = ClippedPart("heart", C["heart"], [Ellipsoid(hc, h_axes, radii=h_rad)], partial_volume=False,
                        allowed=_CHEST)
    cham = [Ellipsoid(hc + h_axes[0] * 14.0 * hs - h_axes[2] * 8.0, h_axes, radii=np.array([24.0, 26.0, 40.0]) * hs),
            Ellipsoid(hc - h_axes[0] * 18.0 * hs + h_axes[2] * 6.0, h_axes, radii=np.array([22.0, 28.0, 44.0]) * hs)]
    chambers = ClippedPart("heart_chamber", C["heart_chamber"], cham, partial_volume=False,
                           allowed=(C["heart"],))
    background += [peri, heart, chambers]
    # great vessels: ascending aorta, arch, descending aorta into the abdominal aorta; IVC
    yc4 = float(outline.spine(z["T4"]))
    b4 = dims["T4"][1]
    aorta_pts = [hc + h_axes[2] * (-0.2 * h_rad[2]) + np.array([-12.0, 0.0, 40.0]),
                 np.array([-14.0, yc4 - b4 - 48.0, z["T5"] + 5.0]),
                 np.array([8.0, yc4 - b4 - 30.0, z["T4"] + 6.0]),
                 np.array([16.0, yc4 - b4 - 8.0, z["T5"]])]
    for n in ("T6", "T8", "T10", "T12"):
        ycn, an, bn = float(outline.spine(z[n])), dims[n][0], dims[n][1]
        frac = {"T6": 1.0, "T8": 0.8, "T10": 0.5, "T12": 0.15}[n]
        aorta_pts.append(np.array([8.0 + frac * (an + 12.0 - 8.0), ycn - bn * (1 - frac) - 12.0 * (1 - frac) + frac * (-0.2 * bn), z[n]]))
    aorta_pts.append(l1f.point(8.0, -vl1.b - 14.0, 40.0))
    aorta_pts = _densify(np.array(aorta_pts), 6.0)
    ar = np.interp(np.arange(len(aorta_pts)), [0, len(aorta_pts) - 1], [14.5, 10.5]) * rng.uniform(0.9, 1.1)
    aorta = ClippedPart("blood_vessel", C["blood_vessel"], tube_segments(aorta_pts, ar), partial_volume=False,
                        allowed=_CHEST + _ABDO + (C["heart"],))
    ivc_pts = _densify(np.array([l1f.point(-18.0, -vl1.b - 15.0, 40.0),
                                 np.array([-22.0, float(outline.spine(z["T10"])) - dims["T10"][1] - 22.0, z["T10"]]),
                                 hc + np.array([-35.0, 5.0, -25.0])]), 6.0)
    ivc = ClippedPart("blood_vessel", C["blood_vessel"], tube_segments(ivc_pts, np.full(len(ivc_pts), 11.0)), partial_volume=False,
                      allowed=_CHEST + _ABDO + (C["liver"], C["heart"]))
    background += [aorta, ivc]
    # trachea and main bronchi (air)
    yc2 = float(outline.spine(z["T2"]))
    carina = np.array([0.0, float(outline.spine(z["T5"])) - dims["T5"][1] - 14.0, z["T5"]])
    trachea = [np.array([0.0, yc2 - dims["T2"][1] - 14.0, z["T1"] + 60.0]), np.array([0.0, yc2 - dims["T2"][1] - 15.0, z["T2"]]), carina]
    air_prims = tube_segments(np.array(trachea), [8.5, 8.5, 8.0], [7.5, 7.5, 7.0])
    hila = {}
    for side, s in SIDE_SIGN.items():
        hil = carina + np.array([s * 48.0, 8.0, -22.0])
        hila[side] = hil
        air_prims += tube_segments(np.array([carina, hil]), [6.0, 4.5])
    airway = ClippedPart("airway", C["airway"], air_prims, partial_volume=False,
                         allowed=_CHEST)
    background.append(airway)
    # pulmonary vessels: branching from the hila into the lungs
    vessels = []
    z_lo, z_hi = zr - 40.0, z["T1"] + 10.0
    for side, s in SIDE_SIGN.items():
        for _ in range(int(rng.integers(22, 34))):
            zt = float(rng.uniform(z_lo, z_hi))
            cy, irx, iry = (float(v[0]) - (12.0 if i else 0.0) for i, v in enumerate(outline.cage(np.array([zt]), th.fat_mm + th.wall_mm)))
            ang = rng.uniform(0.2, np.pi - 0.2)
            tgt = np.array([s * abs(irx * np.sin(ang)), cy + iry * np.cos(ang), zt])
            tgt[0] = s * max(abs(tgt[0]), 45.0)
            t = np.linspace(0.0, 1.0, 5)[:, None]
            path = hila[side] + t * (tgt - hila[side]) + rng.normal(0.0, 5.0, (5, 3)) * np.sin(np.pi * t)
            r0 = float(rng.uniform(2.5, 4.5))
            vessels += tube_segments(path, np.linspace(r0, 0.8, 5))
            for _ in range(int(rng.integers(1, 3))):  # side branches
                j = int(rng.integers(1, 4))
                br = path[j] + rng.normal(0.0, 25.0, 3)
                vessels += tube_segments(np.array([path[j], 0.5 * (path[j] + br) + rng.normal(0, 3, 3), br]),
                                         np.array([0.6, 0.45, 0.3]) * r0)
    pv = ClippedPart("blood_vessel", C["blood_vessel"], vessels, partial_volume=False,
                     allowed=(C["lung"],))
    background.append(pv)

    bones = verts + rib_parts + [sternum] + _shoulder_girdle(outline, th, z, st_pts, st_z, rng)
    return Thorax(th, frames, dims_all, ribs, cart, st_pts, background, [epi] + disc_parts + cart_parts, bones, [dura])


def _shoulder_girdle(outline, th: ThoraxSettings, z: dict, st_pts: np.ndarray, st_z: np.ndarray,
                     rng: np.random.Generator) -> list[Part]:
    """Scapulae (thin curved blades 14 mm outside the posterior chest cavity, T2-T7, with a thick
    lateral border, the neck and glenoid, the spine and acromion) and clavicles (manubrium to
    acromion, S-curved), both bone."""
    inset = th.fat_mm + th.wall_mm

    def on_back(phi_deg, zz, off, s):
        cy, rx, ry = (float(v[0]) for v in outline.cage(np.array([zz]), inset))
        ph = np.radians(phi_deg)
        e = 2.0 / BACK_POWER
        return np.array([s * (rx + off) * np.sin(ph) ** e, cy + (ry + off) * np.cos(ph) ** e, zz])

    parts = []
    for side, s in SIDE_SIGN.items():
        k = float(rng.uniform(0.9, 1.1))
        top, bottom = z["T2"] - 4.0, z["T7"] - 12.0 * k
        prims = []
        inferior = on_back(46.0, bottom - 8.0, 14.0, s)
        for phi, z0, z1 in ((36.0, z["T3"], bottom), (48.0, top - 4.0, bottom - 4.0), (60.0, top - 8.0, 0.5 * (top + bottom))):
            pts = np.array([on_back(phi, zz, 14.0, s) for zz in np.linspace(z0, z1, 5)] + [inferior])
            tangent = (s * np.cos(np.radians(phi)), -np.sin(np.radians(phi)), 0.0)
            prims += tube_segments(pts, np.full(len(pts), 11.0), np.full(len(pts), 2.0), lateral=tangent)
        neck = on_back(72.0, top - 6.0, 10.0, s)
        prims += tube_segments(np.array([inferior, on_back(62.0, 0.5 * (top + bottom), 13.0, s), neck]),
                               [4.0, 5.0, 7.0], [3.0, 4.0, 6.0])
        prims.append(Ellipsoid(neck + np.array([s * 6.0, -4.0, 0.0]), np.eye(3), radii=np.array([9.0, 13.0, 17.0])))
        acromion = on_back(66.0, z["T1"] + 8.0, 34.0, s)
        prims += tube_segments(np.array([on_back(38.0, z["T3"] + 4.0, 16.0, s), on_back(55.0, top + 2.0, 24.0, s), acromion]),
                               [3.0, 4.0, 7.0], [5.0, 6.0, 4.0])
        parts.append(Part("scapula", C["scapula"], prims, smooth_mm=2.0, cortex_mm=1.0))
        st_y = float(np.interp(st_z[0], st_z[::-1], st_pts[::-1, 1]))
        clav = np.array([[s * 26.0, st_y - 4.0, st_z[0] + 4.0], [s * 60.0, st_y - 10.0, st_z[0] + 14.0],
                         [s * 105.0, st_y + 2.0, st_z[0] + 22.0], acromion + np.array([0.0, -10.0, 4.0])])
        clav = _densify(clav, 6.0)
        parts.append(Part("clavicle", C["clavicle"], tube_segments(clav, np.full(len(clav), 7.0 * k), np.full(len(clav), 5.5 * k),
                                                                  lateral=(0.0, 0.0, 1.0)), cortex_mm=1.2))
    return parts


class _PrimitiveRaw(Part):
    """A primitive bone as a cutter (``raw`` of a :class:`Part`: same shape, no cutters)."""

    def __init__(self, part: Part):
        super().__init__(part.name + "_raw", 0, part.primitives, part.subtract, [], part.smooth_mm)

    def raw(self, name):
        return self


def attach_thorax(anatomy, thorax: Thorax) -> None:
    """Put the thorax's parts into ``anatomy`` (in place): its soft tissue after the abdomen and
    organs and before the muscles, its soft foreground before the bones, its bones after the
    lumbosacral bones (the surroundings' 11th and 12th ribs are replaced) and the dural sac last."""
    bg = anatomy.background
    first_muscle = next((i for i, p in enumerate(bg) if p.name.startswith(("psoas", "paraspinal"))), len(bg))
    anatomy.background = bg[:first_muscle] + thorax.background + bg[first_muscle:]
    fg = [p for p in anatomy.foreground if p.name not in ("rib_left", "rib_right")]
    first_bone = next(i for i, p in enumerate(fg) if p.name == "L1")
    first_nerve = next(i for i, p in enumerate(fg) if p.code == C["dural_sac"])
    anatomy.foreground = (fg[:first_bone] + thorax.soft_foreground + fg[first_bone:first_nerve] + thorax.bones
                          + fg[first_nerve:] + thorax.nerves)
    anatomy.thorax = thorax


def thorax_values(rng: np.random.Generator, iv_contrast: bool, table: np.ndarray) -> dict[str, float]:
    """HU of the thorax's own classes for one case, written into ``table`` (code -> HU)."""
    r = THORAX_HU_RANGES
    vals = {"costal_cartilage": float(rng.uniform(*r["cartilage"])),
            "heart": float(rng.uniform(*r["myocardium_contrast" if iv_contrast else "myocardium"]))}
    table[C["costal_cartilage"]] = vals["costal_cartilage"]
    table[C["heart"]] = vals["heart"]
    if iv_contrast:
        vals["heart_chamber"] = float(rng.uniform(*r["heart_blood_contrast"]))
        table[C["heart_chamber"]] = vals["heart_chamber"]
    table[C["mediastinal_fat"]] = table[C["subcutaneous_fat"]]
    return vals
