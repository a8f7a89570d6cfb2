"""Kambin and safe triangles: projected free windows, bounding modes and the best oblique view.

Depends only on numpy, scipy, scikit-image and SimpleITK (no torch, no Slicer). World
coordinates are LPS mm; every reported number carries its definition, its viewing direction and
whether it is projected or true 3D (docs/triangles.md).

* :mod:`~spinect.geometry.frame`: endplate frame, viewing direction d(θ, φ), image axes.
* :mod:`~spinect.geometry.distance`: signed distance maps (voxel and sub-voxel surface).
* :mod:`~spinect.geometry.projection`: obstacle fields and the projected clearance along d.
* :mod:`~spinect.geometry.polygons`: shoelace area, contours, clipping, inscribed circle.
* :mod:`~spinect.geometry.window`: a clearance image with its bounds (triangle, lines).
* :mod:`~spinect.geometry.triangles`: three points / one seed bounding modes.
* :mod:`~spinect.geometry.landmarks`: automatic vertices from a level map.
* :mod:`~spinect.geometry.endplate`: the endplate frame from labels.
* :mod:`~spinect.geometry.trajectory`: best-view search and the needle path.
* :mod:`~spinect.geometry.session`: :class:`TriangleSession`, a segmentation opened once and
  measured in many views (the interactive path).
* :mod:`~spinect.geometry.measure`: the one call behind ``spinect triangles`` (open + measure).
* :mod:`~spinect.geometry.plot`: heat map and window pictures.
"""

from spinect.geometry.frame import EndplateFrame, View, fit_plane, frame_from_endplate_points, frame_from_plane
from spinect.geometry.polygons import inscribed_circle, shoelace_area_mm2, triangle_inradius_mm
from spinect.geometry.projection import ObstacleFields, ProjectedWindow, project_window
from spinect.geometry.results import Quantity, TriangleMeasurement
from spinect.geometry.trajectory import PathCheck, SearchSettings, TrajectoryResult, search_trajectory
from spinect.geometry.triangles import LEVELS, TRIANGLES, measure_points, measure_seed
from spinect.geometry.window import WindowSettings

__all__ = [
    "EndplateFrame",
    "View",
    "fit_plane",
    "frame_from_plane",
    "frame_from_endplate_points",
    "ObstacleFields",
    "ProjectedWindow",
    "project_window",
    "shoelace_area_mm2",
    "inscribed_circle",
    "triangle_inradius_mm",
    "WindowSettings",
    "Quantity",
    "TriangleMeasurement",
    "measure_points",
    "measure_seed",
    "TRIANGLES",
    "LEVELS",
    "SearchSettings",
    "TrajectoryResult",
    "PathCheck",
    "search_trajectory",
    "TrianglesResult",
    "measure_triangle",
    "TriangleSession",
]


def __getattr__(name: str):
    # the file-level entry point reads images with SimpleITK: import it only when asked for, so
    # the geometry core stays numpy/scipy/skimage
    if name in ("measure_triangle", "TrianglesResult"):
        from spinect.geometry import measure

        return getattr(measure, name)
    if name == "TriangleSession":
        from spinect.geometry.session import TriangleSession

        return TriangleSession
    raise AttributeError(f"module 'spinect.geometry' has no attribute {name!r}")
