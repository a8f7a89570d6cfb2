"""Measurement results: every number with its unit, its definition, and whether it is projected.

A :class:`TriangleMeasurement` is what each bounding mode returns; :meth:`TriangleMeasurement.to_dict`
gives a JSON-ready dict (the CLI's ``--json`` output, and what a Slicer Logic reads). Polygons
are given in LPS mm on the projection plane (normal d, through ``plane_origin_lps_mm``), so a
viewer can draw them as closed curves in an orthographic view along d.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spinect.geometry.frame import EndplateFrame, View
from spinect.geometry.window import WindowSettings

__all__ = ["Quantity", "TriangleMeasurement", "DEFINITIONS", "TRIANGLE_DEFINITIONS"]

#: Anatomical definitions (docs/triangles.md has the references).
TRIANGLE_DEFINITIONS: dict[str, str] = {
    "kambin": (
        "Kambin triangle: exiting nerve root (hypotenuse), superior articular process / traversing "
        "root (height), superior endplate of the lower vertebra (base) [Fan et al. 2019 (SPINECT), after Kambin]"
    ),
    "safe": (
        "Safe (subpedicular) triangle: inferior margin of the pedicle (base), lateral border of the "
        "vertebral body (height), exiting nerve root (hypotenuse) [Fan et al. 2019 (SPINECT), after Bogduk/ISIS]"
    ),
}

#: name -> (unit, kind, definition). kind: "projected" (in the image plane of the view) or "true_3d".
DEFINITIONS: dict[str, tuple[str, str, str]] = {
    "projected_triangle_area_mm2": (
        "mm2", "projected",
        "area of the triangle A, B, C projected orthographically along the view direction d "
        "(= true area x |n_triangle . d|)",
    ),
    "true_triangle_area_mm2": ("mm2", "true_3d", "area 1/2 |(B - A) x (C - A)| of the 3D triangle A, B, C"),
    "triangle_inradius_mm": (
        "mm", "projected", "radius of the circle inscribed in the projected triangle (bone and nerve ignored)"
    ),
    "free_area_mm2": (
        "mm2", "projected",
        "area of the free window: rays along d that cross no bone and no nerve within the depth range, "
        "inside the bounds (projected triangle, or the bounding lines around the seed)",
    ),
    "usable_area_mm2": (
        "mm2", "projected",
        "area where the centre of an instrument of radius rho can pass: the free window eroded by rho",
    ),
    "inscribed_radius_mm": (
        "mm", "projected",
        "r*: radius of the largest circle inside the free window = the widest needle or cannula "
        "along d that touches neither bone nor nerve within the depth range",
    ),
}


@dataclass(frozen=True)
class Quantity:
    """One reported number: value (None = not defined, e.g. unbounded), unit, kind, definition."""

    value: float | None
    unit: str
    kind: str
    definition: str

    @classmethod
    def of(cls, name: str, value: float | None) -> Quantity:
        unit, kind, definition = DEFINITIONS[name]
        return cls(None if value is None else float(value), unit, kind, definition)


@dataclass(frozen=True)
class TriangleMeasurement:
    """One triangle measured in one view.

    Attributes:
        triangle: ``"kambin"`` or ``"safe"``; level: ``"L4L5"`` or ``"L5S1"``; side.
        mode: ``"points"``, ``"seed"`` or ``"auto"``.
        view: viewing direction (θ, φ) and image axes; frame: the endplate frame.
        settings: window sampling (depth range, pixel size, instrument radius).
        plane_origin_lps_mm: (3,) origin of the projection plane (normal = view.direction).
        bounded: False when a seed region leaks past the guard radius (areas are then None).
        quantities: name -> :class:`Quantity`.
        outlines_lps_mm: free-window outlines, each (N, 3) on the projection plane; outer
            outlines run counter-clockwise seen along d, holes clockwise.
        triangle_lps_mm: (3, 3) vertices A, B, C (3D) or None.
        triangle_projected_lps_mm: (3, 3) the vertices moved along d onto the plane, or None.
        inscribed_centre_lps_mm: (3,) centre of the r* circle on the plane, or None.
        target_lps_mm: (3,) that centre moved along d to the target depth (the needle tip), or None.
        notes: warnings for the user (unbounded, seed moved...).
    """

    triangle: str
    level: str
    side: str
    mode: str
    view: View
    frame: EndplateFrame
    settings: WindowSettings
    plane_origin_lps_mm: np.ndarray
    bounded: bool
    quantities: dict[str, Quantity]
    outlines_lps_mm: list[np.ndarray] = field(default_factory=list)
    triangle_lps_mm: np.ndarray | None = None
    triangle_projected_lps_mm: np.ndarray | None = None
    inscribed_centre_lps_mm: np.ndarray | None = None
    target_lps_mm: np.ndarray | None = None
    notes: tuple[str, ...] = ()

    def value(self, name: str) -> float | None:
        """The value of a quantity (None if absent or undefined)."""
        q = self.quantities.get(name)
        return None if q is None else q.value

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict; arrays become lists, every number keeps its definition."""
        view = {"theta_deg": self.view.theta_deg, "phi_deg": self.view.phi_deg, "side": self.view.side}
        s = self.settings
        return {
            "triangle": self.triangle,
            "triangle_definition": TRIANGLE_DEFINITIONS.get(self.triangle, ""),
            "level": self.level,
            "side": self.side,
            "mode": self.mode,
            "bounded": self.bounded,
            "view": self.view.to_dict(),
            "frame": self.frame.to_dict(),
            "window": {
                "kind": s.window_kind,
                "depth_before_target_mm": s.depth_before_mm,
                "depth_after_target_mm": s.depth_after_mm,
                "pixel_mm": s.pixel_mm,
                "depth_step_mm": s.depth_step_mm,
                "instrument_radius_mm": s.instrument_radius_mm,
                "guard_radius_mm": s.guard_radius_mm,
            },
            "quantities": {
                name: {
                    "value": q.value,
                    "unit": q.unit,
                    "kind": q.kind,
                    "view": view if q.kind == "projected" else None,
                    "definition": q.definition,
                }
                for name, q in self.quantities.items()
            },
            "plane_origin_lps_mm": _list(self.plane_origin_lps_mm),
            "plane_normal_lps": _list(self.view.direction),
            "outlines_lps_mm": [_list(p) for p in self.outlines_lps_mm],
            "triangle_lps_mm": _list(self.triangle_lps_mm),
            "triangle_projected_lps_mm": _list(self.triangle_projected_lps_mm),
            "inscribed_centre_lps_mm": _list(self.inscribed_centre_lps_mm),
            "target_lps_mm": _list(self.target_lps_mm),
            "notes": list(self.notes),
        }


def _list(array: np.ndarray | None) -> list | None:
    return None if array is None else np.round(np.asarray(array, float), 4).tolist()
