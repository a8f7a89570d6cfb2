"""Bones and discs: vertebrae L1-L5, S1 (with alae), lower sacrum, ilia, intervertebral discs.

Each vertebra is a smooth union of a body (elliptic cylinder between its two endplates),
pedicles, laminae, a spinous process, transverse processes, pars and the articular processes.
Superior and inferior articular processes are placed from one facet joint per level and side
(joint centre, joint normal, joint space), so a facet joint is always a thin gap between the
upper vertebra's inferior process and the lower one's superior process. All positions are in
the vertebra's frame (lateral, posterior, cranial; mm) and converted to body coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spinect.phantom.params import VertebraParams
from spinect.phantom.primitives import Ellipsoid, Primitive, RoundBox, VertebralBody, frame_from_vectors, tube_segments
from spinect.phantom.skeleton import VertebraFrame

__all__ = ["Pedicle", "FacetJoint", "pedicle", "facet_joint", "vertebral_body", "disc_body", "lumbar_primitives",
           "s1_primitives", "lower_sacrum", "sacral_canal", "ilium_primitives", "SIDE_SIGN"]

SIDE_SIGN = {"left": 1.0, "right": -1.0}
_JOINT_GAP_MM = 1.6
_SAP_THICK_MM = 5.5


@dataclass(frozen=True)
class Pedicle:
    """A pedicle: elliptic cross-section around an antero-posterior axis.

    Attributes:
        mid: (3,) centre at mid-length (body mm); axis: (3,) unit, anterior -> posterior.
        up: (3,) unit cranial direction of the cross-section; lateral: (3,) unit, pointing away
            from the midline.
        half_width, half_height, length: mm.
        local_mid: (lateral, posterior, cranial) of ``mid`` in the vertebra frame (unsigned lateral).
    """

    mid: np.ndarray
    axis: np.ndarray
    up: np.ndarray
    lateral: np.ndarray
    half_width: float
    half_height: float
    length: float
    local_mid: tuple[float, float, float]

    def inferior_margin(self) -> np.ndarray:
        """Lowest point of the pedicle's cross-section at mid-length (body mm)."""
        return self.mid - self.half_height * self.up

    def primitives(self) -> list[Primitive]:
        ends = np.array([self.mid - 0.5 * self.length * self.axis, self.mid + 0.5 * self.length * self.axis])
        return tube_segments(ends, [self.half_width] * 2, [self.half_height] * 2, lateral=self.lateral)


@dataclass(frozen=True)
class FacetJoint:
    """One facet joint between an upper vertebra's IAP and a lower vertebra's SAP.

    Attributes:
        centre: (3,) joint centre (body mm); normal: (3,) unit, from the IAP towards the SAP
            (antero-lateral); up: (3,) the lower vertebra's cranial axis.
        sap, iap: the two articular processes.
        sap_face_centre: (3,) centre of the SAP's anterior (foraminal) face.
    """

    centre: np.ndarray
    normal: np.ndarray
    up: np.ndarray
    sap: RoundBox
    iap: RoundBox
    sap_face_centre: np.ndarray


def pedicle(frame: VertebraFrame, vp: VertebraParams, side: str) -> Pedicle:
    """The pedicle of one side: top 1.5 mm below the superior endplate, axis converging medially."""
    s = SIDE_SIGN[side]
    w, h = vp.ped_w[side], vp.ped_h
    z = 0.5 * vp.h_post - 1.5 - 0.5 * h
    x = vp.canal_half + 0.5 * w
    length = 17.0
    y = vp.b + 0.5 * length - 4.0  # from 4 mm inside the body to the articular pillar
    measured = getattr(vp, "ped_mid", None)  # mesh vertebrae: the measured pedicle centre
    if measured is not None:
        x, y, z = measured[side]
    ang = np.radians(vp.ped_angle)
    axis = frame.direction(s * np.sin(ang), np.cos(ang), 0.0)
    up = frame.axes[2]
    lateral = np.cross(up, axis) * s
    lateral = lateral if lateral @ frame.axes[0] * s > 0 else -lateral
    return Pedicle(frame.point(s * x, y, z), axis, up, lateral, 0.5 * w, 0.5 * h, length, (x, y, z))


def facet_joint(lower: VertebraFrame, lower_vp: VertebraParams, side: str, disc_post: float, *, sap_extra_mm: float = 0.0) -> FacetJoint:
    """Facet joint above ``lower``: centre posterior to the foramen at about disc level."""
    s = SIDE_SIGN[side]
    gamma = np.radians(lower_vp.facet_angle[side])
    x = lower_vp.canal_half + 0.5 * lower_vp.ped_w[side] + 2.5
    centre = lower.point(s * x, lower_vp.b + 17.0, 0.5 * lower_vp.h_post + 0.5 * disc_post + 1.0)
    normal = lower.direction(s * np.cos(gamma), -np.sin(gamma), 0.0)
    up = lower.axes[2]
    width_axis = np.cross(up, normal)
    thick = _SAP_THICK_MM + sap_extra_mm
    sap_centre = centre + normal * (0.5 * _JOINT_GAP_MM + 0.5 * thick) - 4.0 * up
    iap_centre = centre - normal * (0.5 * _JOINT_GAP_MM + 3.0) - 5.0 * up
    axes = frame_from_vectors(up, width_axis, primary_axis=2)
    sap = RoundBox(sap_centre, axes, half=np.array([6.0, 0.5 * thick, 9.0]), radius=2.2)
    iap = RoundBox(iap_centre, axes, half=np.array([6.0, 3.0, 10.0]), radius=2.2)
    face = centre + normal * (0.5 * _JOINT_GAP_MM + thick)
    return FacetJoint(centre, normal, up, sap, iap, face)


def vertebral_body(frame: VertebraFrame, vp: VertebraParams, *, waist: float = 0.06) -> VertebralBody:
    """Body between the frame's endplates (planes written in the frame's local coordinates)."""
    planes = []
    for plate in (frame.inferior, frame.superior):
        n_local = frame.axes @ plate.normal
        planes.append((n_local, float(n_local @ (frame.axes @ (plate.centre - frame.centre)))))
    half_h = 0.25 * (vp.h_post + vp.h_ant)
    return VertebralBody(frame.centre.copy(), frame.axes.copy(), a=vp.a, b=vp.b, half_height=half_h, waist=waist,
                         posterior_flat=1.0, plane_low=planes[0], plane_high=planes[1])


def disc_body(lower: VertebraFrame, upper: VertebraFrame, a: float, b: float, *, bulge_mm: float = 0.6) -> VertebralBody:
    """Disc filling the space between ``lower``'s superior and ``upper``'s inferior endplate."""
    centre = 0.5 * (lower.superior.centre + upper.inferior.centre)
    axes = 0.5 * (lower.axes + upper.axes)
    axes = frame_from_vectors(axes[2], axes[0], primary_axis=2)
    planes = []
    for plate in (lower.superior, upper.inferior):
        n = -plate.normal  # inside the disc is outside the bodies
        n_local = axes @ n
        planes.append((n_local, float(n_local @ (axes @ (plate.centre - centre)))))
    half_h = 0.5 * float(np.linalg.norm(upper.inferior.centre - lower.superior.centre)) + 3.0
    return VertebralBody(centre, axes, a=a + bulge_mm, b=b + bulge_mm, half_height=half_h, posterior_flat=1.0,
                         plane_low=planes[0], plane_high=planes[1])


def _box(frame: VertebraFrame, centre_local, half, *, x_axis=(1.0, 0.0, 0.0), z_axis=(0.0, 0.0, 1.0), radius=2.0) -> RoundBox:
    axes = frame_from_vectors(frame.direction(*z_axis), frame.direction(*x_axis), primary_axis=2)
    return RoundBox(frame.point(*centre_local), axes, half=np.asarray(half, float), radius=radius)


def lumbar_primitives(frame: VertebraFrame, vp: VertebraParams, name: str, sap_above: dict[str, FacetJoint],
                      iap_below: dict[str, FacetJoint]) -> list[Primitive]:
    """All primitives of a lumbar vertebra."""
    prims: list[Primitive] = [vertebral_body(frame, vp)]
    b, l5 = vp.b, name == "L5"
    for side, s in SIDE_SIGN.items():
        ped = pedicle(frame, vp, side)
        prims += ped.primitives()
        x_pm, _, zp = ped.local_mid
        x_pil = x_pm + 1.0
        prims.append(_box(frame, (s * x_pil, b + 16.0, zp - 8.0), (5.0, 5.0, 11.0), radius=3.0))  # pars / pillar
        # lamina: from the pillar to the midline, sloping back caudally
        lat = np.array([s * x_pil, b + 14.5])
        med = np.array([0.0, b + 21.0])
        d = med - lat
        prims.append(_box(frame, ((lat[0] + med[0]) / 2, (lat[1] + med[1]) / 2, -4.0),
                          (0.5 * np.hypot(*d) + 3.0, 3.5, 12.0), x_axis=(d[0], d[1], 0.0), z_axis=(0.0, 0.35, 1.0), radius=3.0))
        tp_half_ap, tp_half_h = (5.5, 8.0) if l5 else (3.5, 5.0)
        tp_start = x_pm + 0.5 * vp.ped_w[side] + 1.0
        prims.append(_box(frame, (s * (tp_start + 0.5 * vp.tp_len), b + 15.0, zp - 1.5),
                          (0.5 * vp.tp_len + 3.0, tp_half_ap, tp_half_h), x_axis=(s, 0.12, -0.1), radius=3.0))
        prims.append(sap_above[side].sap)
        prims.append(iap_below[side].iap)
    sp_half_h = 6.5 if l5 else 8.0
    prims.append(_box(frame, (0.0, b + 19.0 + 0.5 * vp.sp_len, -6.0), (4.0, 0.5 * vp.sp_len + 2.0, sp_half_h),
                      x_axis=(1.0, 0.0, 0.0), z_axis=(0.0, 0.25, 1.0), radius=3.0))
    return prims


def s1_primitives(frame: VertebraFrame, vp: VertebraParams, sap_above: dict[str, FacetJoint]) -> list[Primitive]:
    """S1: body, pedicles, pillars with the superior articular processes, alae and the arch."""
    prims: list[Primitive] = [vertebral_body(frame, vp, waist=0.0)]
    b = vp.b
    for side, s in SIDE_SIGN.items():
        ped = pedicle(frame, vp, side)
        prims += ped.primitives()
        x_pm, _, zp = ped.local_mid
        prims.append(_box(frame, (s * (x_pm + 1.5), b + 13.0, zp - 4.0), (6.0, 7.0, 11.0), radius=3.0))
        prims.append(sap_above[side].sap)
        prims.append(_box(frame, (s * (vp.a + 8.0), 3.0, -0.5 * vp.h_post - 4.0), (22.0, 17.0, 14.0),
                          x_axis=(s, 0.0, -0.15 * s * s), radius=7.0))  # ala
    half_w = vp.canal_half + 0.5 * max(vp.ped_w.values()) + 3.0
    prims.append(_box(frame, (0.0, b + 17.5, -14.0), (half_w, 4.0, 13.0), radius=3.0))  # fused laminae
    prims.append(_box(frame, (0.0, b + 23.0, -15.0), (3.5, 4.5, 11.0), radius=2.5))  # median crest
    return prims


def lower_sacrum(frame: VertebraFrame, vp: VertebraParams) -> list[Primitive]:
    """S2 and below: a tapering plate along the (anteriorly concave) sacral curve, S1 frame."""
    local = np.array([[0, 6, -vp.h_post - 4], [0, 5, -50], [0, 0, -72], [0, -8, -92], [0, -20, -106]], float)
    pts = np.array([frame.point(*p) for p in local])
    semi_lat = np.array([52.0, 42.0, 30.0, 20.0, 10.0]) * vp.a / 25.0
    semi_ap = np.array([22.0, 21.0, 15.0, 10.0, 6.0])
    return tube_segments(pts, semi_lat, semi_ap, lateral=frame.axes[0])


def sacral_canal(frame: VertebraFrame, vp: VertebraParams) -> list[Primitive]:
    """Sacral canal (subtracted from S1 and the sacrum), S1 frame."""
    local = np.array([[0, vp.b + 7.0, -8], [0, 24, -28], [0, 17, -50], [0, 7, -72], [0, -6, -92]], float)
    pts = np.array([frame.point(*p) for p in local])
    return tube_segments(pts, [vp.canal_half + 0.5, 13.0, 10.0, 7.0, 4.0], [7.0, 5.5, 4.5, 3.5, 2.5], lateral=frame.axes[0])


def ilium_primitives(s1: VertebraFrame, s1p: VertebraParams, side: str, crest_z: float) -> list[Primitive]:
    """One ilium: auricular part beside the sacrum, posterior spine, wing (plates along an arc
    in the axial plane, flaring laterally upwards) and the thick crest, whose top is at body
    z = ``crest_z`` (mm)."""
    s = SIDE_SIGN[side]
    prims: list[Primitive] = []
    joint_x = s1p.a + 33.0  # lateral end of the ala + joint space
    prims.append(_box(s1, (s * (joint_x + 9.0), 6.0, -32.0), (9.0, 17.0, 27.0), radius=5.0))  # auricular part
    psis = s1.point(s * (joint_x - 2.0), 30.0, -22.0)
    prims.append(Ellipsoid(psis, np.eye(3), radii=np.array([12.0, 13.0, 26.0])))
    base = s1.point(s * (joint_x + 3.0), 12.0, -30.0)
    centre = np.array([base[0] + s * 2.0, base[1] - 38.0])
    rx, ry = 64.0, 72.0
    angles = np.radians(np.linspace(100.0, 5.0, 6))
    arc = np.stack([centre[0] + s * rx * np.cos(angles), centre[1] + ry * np.sin(angles)], axis=1)
    z_bottom = base[2] - 45.0
    crest = []
    for i in range(len(angles) - 1):
        p, q = arc[i], arc[i + 1]
        mid_angle = np.degrees(0.5 * (angles[i] + angles[i + 1]))
        top = crest_z - 14.0 * ((mid_angle - 50.0) / 70.0) ** 2
        tangent = np.array([q[0] - p[0], q[1] - p[1], 0.0])
        outward = np.array([s * np.cos(np.radians(mid_angle)), np.sin(np.radians(mid_angle)), 0.0])
        axes = frame_from_vectors(np.array([0.0, 0.0, 1.0]) + 0.35 * outward, tangent, primary_axis=2)
        half_h = 0.5 * (top - z_bottom) / axes[2, 2]
        mid = np.array([0.5 * (p[0] + q[0]), 0.5 * (p[1] + q[1]), 0.0])
        mid[2] = z_bottom + half_h * axes[2, 2]
        prims.append(RoundBox(mid, axes, half=np.array([0.5 * np.hypot(*(q - p)) + 4.0, 3.5, half_h]), radius=3.0))
        crest.append(mid + (half_h - 3.0) * axes[2])
    prims += tube_segments(np.array(crest), np.full(len(crest), 6.5))
    return prims
