"""Sub-voxel surfaces and the automatic Kambin vertices against analytic truth (fast, synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from spinect.geometry.distance import subvoxel_surface_mm
from spinect.geometry.endplate import _subvoxel_plane
from spinect.geometry.frame import EndplateFrame
from spinect.geometry.landmarks import LocalSurface, _nearest_to_line, lower_border_crossing

SHAPE = (40, 40, 40)
ALPHA = np.radians(40.0)  # the root's descent against the endplate plane
RADIUS = 2.5
AXIS = np.array([np.cos(ALPHA), 0.0, -np.sin(ALPHA)])  # LPS (x, y, z); passes (20, 20, 20)


def _grid_lps() -> np.ndarray:
    """(Z, Y, X, 3) LPS positions of the voxel centres (1 mm, identity, origin 0)."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in SHAPE), indexing="ij")
    return np.stack([x, y, z], axis=-1)


def _root_mask() -> np.ndarray:
    rel = _grid_lps() - 20.0
    across = rel - (rel @ AXIS)[..., None] * AXIS
    return np.linalg.norm(across, axis=-1) <= RADIUS


def _frame() -> EndplateFrame:
    return EndplateFrame(np.full(3, 20.0), np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0]),
                         np.array([0.0, -1.0, 0.0]))


def test_subvoxel_surface_of_a_voxelised_sphere():
    rel = _grid_lps() - np.array([19.7, 20.2, 20.4])
    mask = np.linalg.norm(rel, axis=-1) <= 6.0
    verts, normals = subvoxel_surface_mm(mask, (1.0, 1.0, 1.0))
    radii = np.linalg.norm(verts[:, ::-1] - np.array([19.7, 20.2, 20.4]), axis=1)
    assert abs(radii.mean() - 6.0) < 0.05 and np.quantile(np.abs(radii - 6.0), 0.95) < 0.3
    outward = verts[:, ::-1] - np.array([19.7, 20.2, 20.4])
    assert np.all(np.einsum("ij,ij->i", normals[:, ::-1], outward) > 0)  # normals point out


def test_subvoxel_endplate_plane_of_a_tilted_slab():
    normal = np.array([0.1, -0.6, 0.79])
    normal /= np.linalg.norm(normal)
    rel = _grid_lps() - np.array([20.0, 20.0, 20.3])
    mask = (rel @ normal <= 0) & (np.linalg.norm(rel - (rel @ normal)[..., None] * normal, axis=-1) <= 12.0)
    mask &= rel @ normal >= -10.0
    idx = np.argwhere(mask & (rel @ normal > -1.0))[:, ::-1].astype(float)
    tilted = normal + np.array([0.03, 0.02, 0.0])  # a RANSAC guess a few degrees off
    guess = EndplateFrame(np.array([20.0, 20.0, 19.8]), tilted / np.linalg.norm(tilted), np.array([1.0, 0.0, 0.0]),
                          np.array([0.0, -1.0, 0.0]))
    point, fitted = _subvoxel_plane(mask, np.eye(4), guess, idx)
    assert np.degrees(np.arccos(min(fitted @ normal, 1.0))) < 1.0
    assert abs((point - np.array([20.0, 20.0, 20.3])) @ normal) < 0.1


def test_root_point_nearest_the_face_line():
    mask = _root_mask()
    root = np.argwhere(mask)[:, ::-1].astype(float)
    nerve = LocalSurface.of(mask, np.eye(4), root, margin_mm=4.0)
    origin, direction = np.array([17.0, 25.0, 20.0]), np.array([0.0, 0.0, 1.0])  # a cranial line beside the root
    found = _nearest_to_line(nerve, root, origin, direction, _frame())
    expected = np.array([17.0, 20.0 + RADIUS, 20.0 + 3.0 * np.tan(ALPHA)])  # axis point at x = 17, + r towards it
    assert np.linalg.norm(found - expected) < 0.3


def test_lower_border_crossing_of_a_tilted_root():
    mask = _root_mask()
    root = np.argwhere(mask)[:, ::-1].astype(float)
    nerve = LocalSurface.of(mask, np.eye(4), root, margin_mm=4.0)
    a = np.array([17.0, 20.0 + RADIUS, 22.5])
    found = lower_border_crossing(nerve, root, a, _frame())
    # the axis is at height r where x = 20 - r cot(alpha); the lower border lies r below it
    expected = np.array([20.0 - RADIUS / np.tan(ALPHA), 20.0, 20.0])
    assert np.linalg.norm(found - expected) < 0.3


@pytest.mark.parametrize("tilt_deg", [25.0, 60.0])
def test_lower_border_crossing_other_tilts(tilt_deg):
    alpha = np.radians(tilt_deg)
    axis = np.array([np.cos(alpha), 0.0, -np.sin(alpha)])
    rel = _grid_lps() - 20.0
    mask = np.linalg.norm(rel - (rel @ axis)[..., None] * axis, axis=-1) <= RADIUS
    root = np.argwhere(mask)[:, ::-1].astype(float)
    nerve = LocalSurface.of(mask, np.eye(4), root, margin_mm=4.0)
    found = lower_border_crossing(nerve, root, np.array([15.0, 20.0, 25.0]), _frame())
    expected = np.array([20.0 - RADIUS / np.tan(alpha), 20.0, 20.0])
    assert np.linalg.norm(found - expected) < 0.3


# --- exact inscribed circle of outline polygons --------------------------------------------------


def test_inscribed_circle_of_a_triangle_is_its_incircle():
    from spinect.geometry.polygons import outlines_inscribed_circle, triangle_inradius_mm

    tri = np.array([[0.0, 0.0], [9.0, 1.0], [2.0, 7.0]])
    circle = outlines_inscribed_circle([tri])
    sides = np.linalg.norm(np.roll(tri, -1, axis=0) - np.roll(tri, 1, axis=0), axis=1)  # side opposite each vertex
    incentre = sides @ tri / sides.sum()
    assert abs(circle.radius_mm - triangle_inradius_mm(*tri)) < 0.01
    assert np.linalg.norm(circle.centre_uv_mm - incentre) < 0.05


def test_inscribed_circle_avoids_a_hole():
    from spinect.geometry.polygons import outlines_inscribed_circle

    square = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])  # counter-clockwise
    t = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    hole = np.stack([5.0 + 2.0 * np.cos(-t), 5.0 + 2.0 * np.sin(-t)], 1)  # clockwise, radius 2
    circle = outlines_inscribed_circle([square, hole])
    # the best circles sit in the corners' diagonal gaps: r = (5√2 − 2) / (1 + √2)
    expected = (5.0 * np.sqrt(2.0) - 2.0) / (1.0 + np.sqrt(2.0))
    assert abs(circle.radius_mm - expected) < 0.02


def test_inscribed_circle_of_a_rasterised_window_is_sub_pixel():
    """A disc of radius 3.1 mm sampled as a clearance image on a 0.25 mm grid: the outline-based r*
    is within 0.02 mm although a pixel distance transform is quantised to 0.25 mm."""
    from spinect.geometry.polygons import field_contours_mm, outlines_inscribed_circle

    axis = np.arange(-5.0, 5.0 + 1e-9, 0.25)
    uu, vv = np.meshgrid(axis, axis)
    clearance = 3.1 - np.hypot(uu - 0.37, vv + 0.21)
    circle = outlines_inscribed_circle(field_contours_mm(clearance, axis, axis))
    assert abs(circle.radius_mm - 3.1) < 0.02
    assert np.linalg.norm(circle.centre_uv_mm - [0.37, -0.21]) < 0.05
