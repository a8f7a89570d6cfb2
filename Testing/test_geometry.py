"""Triangle geometry against analytic truth: polygons, frames, projection, windows, search, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from spinect.errors import InputError
from spinect.geometry.frame import fit_plane, frame_from_endplate_points, frame_from_plane
from spinect.geometry.polygons import (
    clip_polygon_convex,
    contours_area_mm2,
    field_contours_mm,
    inscribed_circle,
    polygon_signed_distance_mm,
    shoelace_area_mm2,
    triangle_inradius_mm,
)
from spinect.geometry.projection import ObstacleFields
from spinect.geometry.trajectory import SearchSettings, carm_angles, check_path, search_trajectory
from spinect.geometry.triangles import measure_points, measure_seed
from spinect.geometry.window import WindowSettings

AXIAL = frame_from_plane(np.zeros(3), [0.0, 0.0, 1.0])  # endplate = axial plane through the origin


def _grid(spacing: float, half_mm: float):
    """(z, y, x) LPS coordinate arrays of a cube of voxel centres, and the SimpleITK origin."""
    n = int(round(2 * half_mm / spacing))
    axis = (np.arange(n) - (n - 1) / 2) * spacing
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    return z, y, x, (axis[0],) * 3


def _fields(labels: np.ndarray, spacing: float, origin, **kw) -> ObstacleFields:
    return ObstacleFields.from_arrays(labels, (spacing,) * 3, origin_lps_mm=origin, **kw)


# --- polygons ---------------------------------------------------------------------------------


def test_shoelace_signed_area_of_known_polygons():
    square = np.array([[0, 0], [2, 0], [2, 2], [0, 2]], float)
    assert shoelace_area_mm2(square) == pytest.approx(4.0)
    assert shoelace_area_mm2(square[::-1]) == pytest.approx(-4.0)
    assert shoelace_area_mm2(np.vstack([square, square[:1]])) == pytest.approx(4.0)  # closed form too
    triangle = np.array([[1, 1], [7, 1], [1, 5]], float)
    assert shoelace_area_mm2(triangle) == pytest.approx(12.0)


def test_contours_of_an_annulus_subtract_the_hole():
    axis = np.arange(-8, 8.001, 0.25)
    uu, vv = np.meshgrid(axis, axis)
    r = np.hypot(uu, vv)
    contours = field_contours_mm(np.minimum(5.0 - r, r - 2.0), axis, axis)
    # marching squares on a distance field: within 0.5 % of pi (5^2 - 2^2)
    assert contours_area_mm2(contours) == pytest.approx(np.pi * 21, rel=5e-3)
    assert sorted(np.sign([shoelace_area_mm2(c) for c in contours])) == [-1.0, 1.0]


def test_clip_to_convex_keeps_the_exact_intersection():
    square = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float)
    triangle = np.array([[2, -2], [6, 2], [2, 2]], float)  # area 8; the 2 x 2 square x in [2, 4], y in [0, 2] is inside
    clipped = clip_polygon_convex(triangle, square)
    assert shoelace_area_mm2(clipped) == pytest.approx(4.0)
    inset = clip_polygon_convex(square, square, inset_mm=1.0)
    assert shoelace_area_mm2(inset) == pytest.approx(4.0)


@pytest.mark.parametrize(
    "polygon, radius, centre",
    [
        (np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float), 2.0, (2.0, 2.0)),
        (np.array([[0, 0], [4, 0], [0, 3]], float), 1.0, (1.0, 1.0)),  # 3-4-5 triangle: r = 1
    ],
)
def test_inscribed_circle_of_known_polygons(polygon, radius, centre):
    axis = np.arange(-1, 6.001, 0.25)
    uu, vv = np.meshgrid(axis, axis)
    field = polygon_signed_distance_mm(np.stack([uu, vv], -1), polygon)
    circle = inscribed_circle(field, axis, axis, exact=lambda p: polygon_signed_distance_mm(p, polygon))
    assert circle.radius_mm == pytest.approx(radius, abs=5e-3)
    assert np.allclose(circle.centre_uv_mm, centre, atol=0.05)
    # first three vertices: the 3-4-5 triangle (r = 1) or half the square (r = 2A/P = 16 / (8 + 4 sqrt 2))
    assert triangle_inradius_mm(*polygon[:3]) == pytest.approx(1.0 if len(polygon) == 3 else 16 / (8 + np.sqrt(32)))


def test_polygon_signed_distance_sign_and_value():
    square = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float)
    values = polygon_signed_distance_mm(np.array([[2, 2], [5, 2], [2, -3]], float), square)
    assert np.allclose(values, [2.0, -1.0, -3.0])


# --- frame ------------------------------------------------------------------------------------


def test_frame_from_a_known_tilted_plane_with_outliers():
    rng = np.random.default_rng(1)
    tilt = np.radians(12.0)
    normal = np.array([0.0, np.sin(tilt), np.cos(tilt)])  # endplate tilted about the left-right axis
    centre = np.array([3.0, -20.0, 40.0])
    basis = np.linalg.svd(normal[None, :])[2][1:]  # two in-plane directions
    coords = rng.uniform(-20, 20, (400, 2))
    points = centre + coords @ basis + rng.normal(0, 0.2, (400, 1)) * normal
    outliers = centre + rng.uniform(-20, 20, (60, 3)) + np.array([0, 0, 10.0])
    frame = frame_from_endplate_points(np.vstack([points, outliers]))
    assert np.degrees(np.arccos(abs(frame.normal @ normal))) < 0.5
    assert abs((frame.centre_lps_mm - centre) @ normal) < 0.2
    assert frame.normal[2] > 0  # cranial
    _, fitted, rms = fit_plane(points)
    assert abs(fitted @ normal) == pytest.approx(1.0, abs=1e-3) and rms < 0.3


def test_view_direction_conventions():
    frame = frame_from_plane(np.zeros(3), [0.0, 0.0, 1.0])
    assert np.allclose(frame.direction(0, 0, "left"), [0, -1, 0])  # PA: posterior → anterior (−y in LPS)
    left, right = frame.direction(30, 0, "left"), frame.direction(30, 0, "right")
    assert left[0] < 0 < right[0]  # a left target is approached from the left, aiming to the right
    d = frame.direction(20, 10, "left")
    assert d @ frame.normal == pytest.approx(np.sin(np.radians(10)))  # φ > 0: runs cranially
    assert frame.angles_of(d, "left") == pytest.approx((20.0, 10.0))
    view = frame.view(0, 0, "left")
    assert np.allclose(view.v, [0, 0, 1]) and np.allclose(view.u, [-1, 0, 0])  # u = viewer's right = patient right
    assert carm_angles(d, "left")["oblique_deg"] == pytest.approx(20.0, abs=1e-6)


def test_frame_rejects_bad_normals():
    with pytest.raises(InputError, match="not a direction"):
        frame_from_plane(np.zeros(3), [0, 0, 0])
    with pytest.raises(InputError, match="left-right"):
        frame_from_plane(np.zeros(3), [1, 0, 0])
    with pytest.raises(InputError, match="side"):
        AXIAL.direction(0, 0, "up")


# --- projection and measurement --------------------------------------------------------------


@pytest.fixture(scope="module")
def empty_fields() -> ObstacleFields:
    return _fields(np.zeros((20, 20, 20), np.uint8), 2.0, (-19.0, -19.0, -19.0))


@pytest.mark.parametrize("theta, phi", [(0.0, 0.0), (35.0, 0.0), (20.0, -15.0), (50.0, 20.0)])
def test_projected_triangle_area_is_area_times_cosine(empty_fields, theta, phi):
    pts = np.array([[0.0, 2.0, 0.0], [8.0, -1.0, 1.0], [1.0, 0.0, 7.0]])
    normal = np.cross(pts[1] - pts[0], pts[2] - pts[0])
    area = 0.5 * np.linalg.norm(normal)
    m = measure_points(empty_fields, AXIAL, pts, theta_deg=theta, phi_deg=phi, settings=WindowSettings(pixel_mm=0.25))
    d = AXIAL.direction(theta, phi, "left")
    expected = area * abs(normal @ d) / np.linalg.norm(normal)
    assert m.value("true_triangle_area_mm2") == pytest.approx(area)
    assert m.value("projected_triangle_area_mm2") == pytest.approx(expected, rel=1e-9)
    # nothing in the way: the free window is the projected triangle, its r* the triangle's inradius
    assert m.value("free_area_mm2") == pytest.approx(expected, rel=1e-6)
    assert m.value("inscribed_radius_mm") == pytest.approx(m.value("triangle_inradius_mm"), abs=0.02)
    assert m.quantities["true_triangle_area_mm2"].kind == "true_3d"
    assert m.quantities["free_area_mm2"].kind == "projected"


def _slab_with_triangular_hole(spacing: float):
    """Bone slab (|y| < 4 mm) pierced along y by a triangular prism hole, A = 48 mm², r = 2.79 mm."""
    z, y, x, origin = _grid(spacing, 16.0)
    hole = np.array([[-4.0, 0.0], [8.0, 0.0], [-4.0, 8.0]])  # (x, z)
    inside = polygon_signed_distance_mm(np.stack([x, z], -1), hole) > 0
    labels = ((np.abs(y) < 4.0) & ~inside).astype(np.uint8)
    points = np.array([[p[0], 0.0, p[1]] for p in hole])
    return labels, origin, points


@pytest.mark.parametrize("subvoxel", [False, True])
def test_free_window_of_a_triangular_hole(subvoxel):
    labels, origin, hole = _slab_with_triangular_hole(0.5)
    fields = _fields(labels, 0.5, origin, subvoxel=subvoxel)
    big = (hole - hole.mean(0)) * 1.4 + hole.mean(0)  # clicked triangle larger than the hole
    m = measure_points(fields, AXIAL, big)
    assert m.value("free_area_mm2") == pytest.approx(48.0, rel=0.04)
    assert m.value("inscribed_radius_mm") == pytest.approx(triangle_inradius_mm(*hole), abs=0.2)
    seeded = measure_seed(fields, AXIAL, hole.mean(0), settings=WindowSettings(guard_radius_mm=12.0))
    assert seeded.bounded
    assert seeded.value("free_area_mm2") == pytest.approx(48.0, rel=0.04)
    assert seeded.value("inscribed_radius_mm") == pytest.approx(triangle_inradius_mm(*hole), abs=0.2)
    # outlines lie on the projection plane (normal d through the plane origin)
    outline = m.outlines_lps_mm[0]
    assert np.allclose((outline - m.plane_origin_lps_mm) @ m.view.direction, 0.0, atol=1e-9)


def test_seed_window_that_leaks_is_unbounded():
    z, y, x, origin = _grid(1.0, 16.0)
    slot = (np.abs(z - 2.0) < 2.0)  # a horizontal slot through the whole slab: no lateral bound
    labels = ((np.abs(y) < 4.0) & ~slot).astype(np.uint8)
    m = measure_seed(_fields(labels, 1.0, origin), AXIAL, np.array([0.0, 0.0, 2.0]),
                     settings=WindowSettings(guard_radius_mm=10.0))
    assert not m.bounded
    assert m.value("free_area_mm2") is None
    assert any("guard radius" in note for note in m.notes)


def _slab_with_holes(holes_xz: list[tuple[float, float, float, float]], spacing: float = 0.5):
    """Bone slab (|y| < 4 mm) pierced along y by rectangular holes (x0, x1, z0, z1 in mm).

    Voxel centres lie at odd multiples of spacing/2, so bounds at multiples of 0.5 mm fall between them.
    """
    z, y, x, origin = _grid(spacing, 16.0)
    hole = np.zeros(x.shape, bool)
    for x0, x1, z0, z1 in holes_xz:
        hole |= (x > x0) & (x < x1) & (z > z0) & (z < z1)
    return _fields(((np.abs(y) < 4.0) & ~hole).astype(np.uint8), spacing, origin)


# instrument of radius 1 mm: slots 1.5 mm wide are narrower than it, 2.5 mm holes wider
_WIDE_INSTRUMENT = WindowSettings(instrument_radius_mm=1.0, guard_radius_mm=12.0)
_SQUARE = (-3.0, 3.0, 1.0, 7.0)  # 6 x 6 mm


def test_seed_region_keeps_a_dead_end_sliver_narrower_than_the_instrument():
    # a 1.5 x 5 mm slot hangs on the square: it is part of the free window the seed sees (the
    # instrument's centre cannot enter it, but nothing else is there either)
    fields = _slab_with_holes([_SQUARE, (2.5, 8.0, 3.0, 4.5)])
    m = measure_seed(fields, AXIAL, np.array([0.0, 0.0, 4.0]), settings=_WIDE_INSTRUMENT)
    assert m.bounded
    assert m.value("free_area_mm2") == pytest.approx(36.0 + 5.0 * 1.5, rel=0.04)


def test_seed_region_splits_a_narrow_channel_at_its_narrowest_point():
    # two squares joined by a 1.5 mm channel that narrows to 1.0 mm 1 mm from the right square:
    # the seed's square gets the channel up to that neck, not the other square
    right = (7.0, 13.0, 1.0, 7.0)
    channel = [(2.5, 5.5, 3.0, 4.5), (5.5, 7.5, 3.0, 4.0)]
    fields = _slab_with_holes([_SQUARE, right, *channel])
    m = measure_seed(fields, AXIAL, np.array([0.0, 0.0, 4.0]), settings=_WIDE_INSTRUMENT)
    assert m.bounded
    expected = 36.0 + 2.5 * 1.5 + 0.5 * 1.0  # square, wide part of the channel, half the neck
    assert m.value("free_area_mm2") == pytest.approx(expected, abs=1.2)
    other = measure_seed(fields, AXIAL, np.array([10.0, 0.0, 4.0]), settings=_WIDE_INSTRUMENT)
    assert m.value("free_area_mm2") + other.value("free_area_mm2") == pytest.approx(36 + 36 + 3.0 * 1.5 + 2.0 * 1.0, rel=0.04)


def test_seed_region_leaves_out_a_crack_that_leaks_to_the_guard():
    # a 1.5 mm slot from the square out past the 12 mm guard: the window is bounded (the
    # instrument cannot pass) and its area is the square's, not the crack's
    fields = _slab_with_holes([_SQUARE, (2.5, 16.0, 3.0, 4.5)])
    m = measure_seed(fields, AXIAL, np.array([0.0, 0.0, 4.0]), settings=_WIDE_INSTRUMENT)
    assert m.bounded
    assert m.value("free_area_mm2") == pytest.approx(36.0, abs=1.5)


def test_measure_points_rejects_collinear_points(empty_fields):
    with pytest.raises(InputError, match="collinear"):
        measure_points(empty_fields, AXIAL, np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2]], float))
    with pytest.raises(InputError, match="level"):
        measure_points(empty_fields, AXIAL, np.eye(3), level="L3L4")


# --- trajectory ----------------------------------------------------------------------------------


def _tunnel(theta: float, phi: float, spacing: float = 1.0):
    """Bone slab drilled by a 3 mm-radius tunnel along d(θ, φ) (left side), ending at the target."""
    z, y, x, origin = _grid(spacing, 24.0)
    frame = frame_from_plane(np.array([0.0, 0.0, -30.0]), [0.0, 0.0, 1.0])
    d = frame.direction(theta, phi, "left")
    target = np.array([0.0, -6.0, 0.0])
    rel = np.stack([x, y, z], -1) - target
    perp = np.linalg.norm(rel - (rel @ d)[..., None] * d, axis=-1)
    labels = ((np.abs(y) < 6.0) & (perp > 3.0)).astype(np.uint8)
    return labels, origin, frame, target


def test_search_finds_the_tunnel_direction():
    labels, origin, frame, target = _tunnel(30.0, 10.0)
    fields = _fields(labels, 1.0, origin, subvoxel=False)
    search = SearchSettings(
        step_deg=5.0, robust_deg=2.5, refine_step_deg=2.5,
        window=WindowSettings(pixel_mm=0.5, depth_step_mm=1.0, guard_radius_mm=5.0, separate_structures=False),
    )
    result = search_trajectory(fields, frame, side="left", seed_lps_mm=target, search=search,
                               measure=WindowSettings(guard_radius_mm=5.0))
    assert abs(result.theta_deg - 30.0) <= 2.5 and abs(result.phi_deg - 10.0) <= 2.5
    assert result.objective_map.shape == (11, 13)
    assert result.robust_value <= result.objective_value
    assert result.path.min_bone_clearance_mm > 1.0 and result.path.clear


def test_path_entry_at_the_skin_and_length():
    z, y, x, origin = _grid(1.0, 20.0)
    labels = np.zeros(x.shape, np.uint8)
    ct = np.where(np.abs(y) <= 10.0, 40.0, -1000.0).astype(np.float32)  # body: |y| <= 10 mm
    fields = _fields(labels, 1.0, origin, ct_hu_zyx=ct)
    view = AXIAL.view(0.0, 0.0, "left")  # along −y: enters the body at y = +10
    path = check_path(fields, view, np.array([0.0, -2.0, 0.0]))
    assert path.entry_lps_mm[1] == pytest.approx(10.0, abs=0.5)
    assert path.length_mm == pytest.approx(12.0, abs=0.5)
    assert path.clear


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_points_and_optimize_write_json_and_heatmap(tmp_path):
    from spinect.cli import main

    labels, origin, hole = _slab_with_triangular_hole(1.0)
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((1.0, 1.0, 1.0))
    image.SetOrigin(origin)
    seg = tmp_path / "seg.nii.gz"
    sitk.WriteImage(image, str(seg))
    out = tmp_path / "tri.json"
    args = ["triangles", str(seg), "--level", "L5S1", "--side", "left", "--points", *map(str, hole.ravel()),
            "--endplate", "-20", "-20", "0", "20", "-20", "0", "0", "20", "0", "--json", str(out),
            "--optimize", "--step", "10", "--progress-lines", "--allow-missing-nerve"]  # bone-only phantom
    assert main(args) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["obstacles"]["nerve_checked"] is False and "no nerve" in report["warnings"][0]
    q = report["measurement"]["quantities"]
    assert q["projected_triangle_area_mm2"]["value"] == pytest.approx(48.0)
    assert q["free_area_mm2"]["kind"] == "projected" and q["free_area_mm2"]["view"]["side"] == "left"
    assert "definition" in q["inscribed_radius_mm"]
    assert report["trajectory"]["theta_deg"] == pytest.approx(0.0, abs=5.0)  # the hole is straight along y
    assert (tmp_path / "tri_heatmap.png").stat().st_size > 1000


def test_cli_bad_input_leaves_no_output(tmp_path):
    from spinect.cli import main

    out = tmp_path / "x.json"
    code = main(["triangles", str(tmp_path / "missing.nii.gz"), "--level", "L5S1", "--side", "left",
                 "--seed", "0", "0", "0", "--json", str(out), "--progress-lines"])
    assert code == InputError.exit_code and not out.exists()


def test_cli_ras_coordinates_give_the_lps_result(tmp_path):
    from spinect.cli import main

    labels, origin, hole = _slab_with_triangular_hole(1.0)
    image = sitk.GetImageFromArray(labels)
    image.SetOrigin(origin)
    seg = tmp_path / "seg.nii.gz"
    sitk.WriteImage(image, str(seg))
    seed = hole.mean(axis=0)
    plane = ["-20", "-20", "0", "20", "-20", "0", "0", "20", "0"]
    reports = []
    for name, point, extra in (("lps", seed, []), ("ras", seed * [-1, -1, 1], ["--ras"])):
        out = tmp_path / f"{name}.json"
        ras_plane = [str(-float(v)) if i % 3 < 2 else v for i, v in enumerate(plane)] if extra else plane
        assert main(["triangles", str(seg), "--level", "L4L5", "--side", "right", "--seed", *map(str, point),
                     "--endplate", *ras_plane, "--json", str(out), "--progress-lines", "--allow-missing-nerve", *extra]) == 0
        reports.append(json.loads(out.read_text())["measurement"])
    assert reports[0]["quantities"]["free_area_mm2"]["value"] == pytest.approx(
        reports[1]["quantities"]["free_area_mm2"]["value"])
    # 1 mm voxels round the hole's knife-edged 45° corners (sub-voxel smoothing σ = 0.9 voxel):
    # about 8 % of the area is lost there (docs/triangles.md §8), and rounding only removes area.
    assert 0.90 * 48.0 <= reports[0]["quantities"]["free_area_mm2"]["value"] <= 48.0


def test_points_mode_frame_is_the_endplate_below_the_clicks_not_a_local_surface():
    from spinect.geometry.measure import measure_triangle

    # Bone block below z = 0 for x in [-30, 0] mm: its top is the endplate (normal +z, LPS superior).
    z, y, x, origin = _grid(1.0, 40.0)
    labels = ((z < 0) & (z > -20) & (x > -30) & (x < 0) & (np.abs(y) < 20)).astype(np.uint8)
    image = sitk.GetImageFromArray(labels)
    image.SetOrigin(origin)
    # Kambin: B on the endplate, C 30 mm lateral over nothing (the B-C midpoint is > 12 mm from bone)
    points = np.array([[-5.0, 0.0, 15.0], [-5.0, 0.0, 0.5], [30.0, 0.0, 0.5]])
    kambin = measure_triangle(image, level="L4L5", side="left", points_lps_mm=points, allow_missing_nerve=True)
    assert "through B and C" in kambin.frame_source
    assert np.dot(kambin.measurement.frame.normal, [0.0, 0.0, 1.0]) > 0.99
    assert abs(kambin.measurement.frame.centre_lps_mm[2]) < 1.0  # on the block's top
    # safe triangle: its vertices lie on the upper vertebra, 10-15 mm above the endplate
    safe_points = np.array([[-10.0, 0.0, 22.0], [-20.0, 0.0, 22.0], [-20.0, 0.0, 12.0]])
    safe = measure_triangle(image, level="L4L5", side="left", points_lps_mm=safe_points, allow_missing_nerve=True,
                            triangle="safe")
    assert "below the clicked points" in safe.frame_source
    assert np.dot(safe.measurement.frame.normal, [0.0, 0.0, 1.0]) > 0.99
    assert abs(safe.measurement.frame.centre_lps_mm[2]) < 1.0
    # nothing below the clicks: refused with what to do, never a frame from some other surface
    with pytest.raises(InputError, match="below the safe triangle's points.*--endplate"):
        measure_triangle(image, level="L4L5", side="left", points_lps_mm=safe_points - [0.0, 0.0, 40.0],
                         allow_missing_nerve=True, triangle="safe")


def test_points_mode_frame_without_level_map_matches_the_truth_on_real_bone_shapes(triangle_case):
    """Three clicks and a bone/nerve map (no levels): the endplate within a few degrees of the truth.

    Phantom v2 (real bone shapes): a local fit near B and C was 12-19 deg off for Kambin and
    20-85 deg for the safe triangle, or refused it.
    """
    from spinect.geometry.measure import measure_triangle

    truth = triangle_case.truth["levels"]["L5S1"]
    normal = np.asarray(truth["viewing_frame"]["normal"], float)
    for side in ("left", "right"):
        for name in ("kambin", "safe"):
            entry = truth[side][name]
            pts = np.array(list(entry["points_lps_mm"].values()), float)
            result = measure_triangle(triangle_case.labels, level="L5S1", side=side, triangle=name, points_lps_mm=pts,
                                      theta_deg=30.0)
            angle = np.degrees(np.arccos(np.clip(result.measurement.frame.normal @ normal, -1.0, 1.0)))
            assert angle < 6.0, (side, name, angle)
            # the projected area follows: within 5 % of the truth's table at (30 deg, 0 deg)
            table = entry["projected_area_mm2"]
            expected = table["table"][table["theta_deg"].index(30.0)][table["phi_deg"].index(0.0)]
            assert result.measurement.value("projected_triangle_area_mm2") == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("seeded", [False, True])
def test_bounded_rays_only_leaves_the_objective_unchanged(seeded):
    """The search casts rays only near the bounds: J must be the same as with the whole image."""
    from dataclasses import replace

    from spinect.geometry.trajectory import view_objective
    from spinect.geometry.triangles import points_window, seed_window

    labels, origin, frame, target = _tunnel(30.0, 10.0)
    fields = _fields(labels, 1.0, origin)
    base = WindowSettings(pixel_mm=0.5, depth_step_mm=1.0, guard_radius_mm=6.0, separate_structures=False,
                          depth_before_mm=None)
    points = target + np.array([[0.0, 0.0, 4.0], [3.0, 0.0, -3.0], [-4.0, 1.0, -2.0]])
    seen = []
    for theta, phi in ((30.0, 10.0), (20.0, 0.0), (40.0, 15.0)):
        view = frame.view(theta, phi, "left")
        values = []
        for only in (False, True):
            settings = replace(base, bounded_rays_only=only)
            if seeded:
                window = seed_window(fields, frame, view, target, settings, upper_line_lps_mm=target + [0, 0, 4.0])
            else:
                window = points_window(fields, view, points, settings)
            values.append([view_objective(window, j, seeded=seeded) for j in ("radius", "free_area", "usable_area")])
        assert np.allclose(values[0], values[1], rtol=0, atol=1e-9), (theta, phi, values)
        seen += values[1]
    assert max(seen) > 1.0  # the windows are not empty


@pytest.mark.parametrize("radius_voxels", [0.5, 0.7, 1.0])
def test_a_nerve_thinner_than_the_smoothing_still_blocks_the_window(radius_voxels):
    """A 1-3 voxel nerve branch has no 0.5 level after the blur; it must not read as free space."""
    from spinect.geometry.distance import subvoxel_signed_distance_mm

    z, y, x = np.mgrid[0:30, 0:30, 0:30]
    tube = (y - 15.3) ** 2 + (x - 12.2) ** 2 <= radius_voxels**2
    mask = tube | (x >= 22)  # a thick structure elsewhere keeps a sub-voxel surface
    sdf, vertices = subvoxel_signed_distance_mm(mask, (1.0, 1.0, 1.0))
    assert len(vertices) > 0
    assert sdf[tube].max() < 0.0  # every labelled voxel of the thin branch is inside
    # beside it, the distance is to the branch's voxel faces, not to the far structure
    beside = (slice(None), 15, 16)
    assert np.all(sdf[beside] < 4.0)
    # the thick structure keeps its sub-voxel surface: its flat face at x = 21.5 mm
    assert np.allclose(sdf[:, 15, 20], 1.5, atol=0.1)


def test_a_one_voxel_nerve_across_a_window_narrows_it():
    """A nerve branch one voxel thick, lying across the triangular hole, must cut the free window
    (the blur erases it from the sub-voxel surface; before the fix it read as free space)."""
    labels, origin, hole = _slab_with_triangular_hole(1.0)
    z, y, x, _ = _grid(1.0, 16.0)
    centre = hole.mean(axis=0)
    # one voxel row along x at the hole's centroid height (z) and mid-slab depth (y)
    row = (np.abs(z - z.flat[np.abs(z.ravel() - centre[2]).argmin()]) < 1e-6) & (np.abs(y - 0.5) < 1e-6)
    assert row.any()
    with_nerve = labels.copy()
    with_nerve[row & (labels == 0)] = 2
    # and a thick root away from the window, so that the nerve mask has a sub-voxel surface
    with_nerve[(x + 10.0) ** 2 + y**2 + (z + 8.0) ** 2 <= 9.0] = 2
    big = (hole - centre) * 1.4 + centre
    empty = measure_points(_fields(labels, 1.0, origin), AXIAL, big)
    crossed = measure_points(_fields(with_nerve, 1.0, origin), AXIAL, big)
    # the circle cannot sit on the centroid any more: at most the larger part's inradius
    assert crossed.value("inscribed_radius_mm") < 0.75 * empty.value("inscribed_radius_mm")
    # a 1 mm wide band across the hole (chord about 8 mm here) is no longer free
    assert crossed.value("free_area_mm2") < empty.value("free_area_mm2") - 5.0


def test_missing_nerve_is_refused_unless_allowed_and_then_flagged(tmp_path):
    """Measuring against bone alone overestimates the window (a needle-planning safety defect):
    refused by default; with the override the report carries the warning."""
    from spinect.cli import main

    labels, origin, hole = _slab_with_triangular_hole(1.0)
    image = sitk.GetImageFromArray(labels)
    image.SetOrigin(origin)
    seg = tmp_path / "seg.nii.gz"
    sitk.WriteImage(image, str(seg))
    out = tmp_path / "tri.json"
    args = ["triangles", str(seg), "--level", "L5S1", "--side", "left", "--points", *map(str, hole.ravel()),
            "--endplate", "-20", "-20", "0", "20", "-20", "0", "0", "20", "0", "--json", str(out), "--progress-lines"]
    assert main(args) == InputError.exit_code and not out.exists()
    with_nerve = labels.copy()
    with_nerve[labels.shape[0] // 2, 2, :4] = 2  # a nerve 30 mm away at most: the check passes
    image2 = sitk.GetImageFromArray(with_nerve)
    image2.SetOrigin(origin)
    sitk.WriteImage(image2, str(seg))
    assert main(args) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["warnings"] == [] and report["obstacles"]["nerve_voxels_near_target"] > 0


def test_ct_that_does_not_overlap_the_labels_is_refused(tmp_path):
    from spinect.geometry.measure import measure_triangle

    labels, origin, hole = _slab_with_triangular_hole(1.0)
    labels[labels.shape[0] // 2, 2, :4] = 2
    image = sitk.GetImageFromArray(labels)
    image.SetOrigin(origin)
    ct = sitk.GetImageFromArray(np.full((10, 10, 10), -1000.0, np.float32))
    ct.SetOrigin((500.0, 500.0, 500.0))
    with pytest.raises(InputError, match="does not overlap"):
        measure_triangle(image, level="L5S1", side="left", points_lps_mm=hole, ct=ct)
