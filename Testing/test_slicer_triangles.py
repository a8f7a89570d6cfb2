"""The module's Triangles section without Slicer's GUI: markups -> real ``spinect triangles`` -> nodes.

Runs on Slicer's real MRML classes from the ``slicer-core`` wheel (skipped if missing). Truth:
a phantom case (``spinect.phantom``) whose truth JSON gives the Kambin landmarks in LPS, the
backend's own JSON and Python API, and its ``EndplateFrame`` for the view conventions.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "SpineCTSegmentation"
sys.path.insert(0, str(MODULE_DIR))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from SpineCTSegmentationLib.process import build_triangles_command  # noqa: E402
from SpineCTSegmentationLib.view import camera_for_view, lps_to_ras, ras_to_lps, view_direction_lps, view_up_lps  # noqa: E402

phantom = pytest.importorskip("spinect.phantom")
LEVEL, SIDE, THETA, PHI = "L5S1", "left", 30.0, 0.0


@pytest.fixture(scope="module")
def case(triangle_case):
    return triangle_case


def _truth_points_lps(case) -> np.ndarray:
    entry = case.truth["levels"][LEVEL][SIDE]["kambin"]
    return np.array(list(entry["points_lps_mm"].values()), float)  # A, B, C


@pytest.fixture(scope="module")
def measured(slicer, case, tmp_path_factory):
    """Phantom nodes, a point list at the truth landmarks, and one real backend run."""
    from test_slicer_logic import volume_node_from_image

    from SpineCTSegmentationLib.mrml_io import import_labelmap_segments
    from SpineCTSegmentationLib.triangles import TriangleInputs, TrianglesJob, control_points_ras

    folder = tmp_path_factory.mktemp("slicer_triangles")
    scene = slicer.vtkMRMLScene()
    ct = volume_node_from_image(slicer, scene, case.ct, "phantom CT")
    labels = volume_node_from_image(slicer, scene, case.labels, "labels", "vtkMRMLLabelMapVolumeNode")
    structures = volume_node_from_image(slicer, scene, case.structures, "levels", "vtkMRMLLabelMapVolumeNode")
    segmentation = import_labelmap_segments(labels, None, reference_volume=ct, closed_surfaces=False)
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Kambin ABC")
    for label, p in zip("ABC", lps_to_ras(_truth_points_lps(case))):
        points.AddControlPoint(*p, label)

    inputs = TriangleInputs(segmentation, ct, structures_volume=structures, work_dir=folder)
    job = TrianglesJob(inputs, python_executable=sys.executable, base_env=dict(os.environ), level=LEVEL, side=SIDE,
                       points_ras=control_points_ras(points), theta_deg=THETA, phi_deg=PHI, backend_dir=MODULE_DIR)
    job.start()
    events = job.wait(timeout_s=120)
    assert job.process.returncode == 0, "\n".join(e.line for e in events)
    report = job.finish()
    job.cleanup()
    assert not job.folder.exists() and inputs.seg_path.is_file()  # the inputs stay for the next view
    return dict(scene=scene, ct=ct, report=report, events=events, inputs=inputs, folder=folder)


def test_command_is_accepted_by_the_backend_parser(tmp_path):
    from spinect.cli import build_parser

    points = [[1.5, -2.0, 3.0], [4.0, 5.0, -6.25], [7.0, 8.0, 9.0]]
    command = build_triangles_command("PythonSlicer", tmp_path / "seg.nrrd", tmp_path / "out.json", level="L4L5",
                                      side="right", points_ras=points, theta_deg=12.5, phi_deg=-5)
    args = build_parser().parse_args(command[3:])
    assert command[:4] == ["PythonSlicer", "-m", "spinect", "triangles"]
    assert (args.level, args.side, args.ras, args.theta, args.phi, args.progress_lines) == ("L4L5", "right", True, 12.5, -5.0, True)
    assert args.points == [v for p in points for v in p] and args.seed is None and not args.auto
    auto = build_parser().parse_args(build_triangles_command(
        "py", "s.nrrd", "o.json", level="L5S1", side="left", structures_path="lv.nrrd", ct_path="ct.nrrd",
        optimize=True, heatmap_path="h.png")[3:])
    assert auto.auto and auto.optimize and (str(auto.structures), str(auto.ct), str(auto.heatmap)) == ("lv.nrrd", "ct.nrrd", "h.png")
    seed = build_parser().parse_args(build_triangles_command("py", "s", "o", level="L5S1", side="left", seed_ras=[1, 2, 3])[3:])
    assert seed.seed == [1.0, 2.0, 3.0] and seed.ras
    with pytest.raises(ValueError, match="level map"):
        build_triangles_command("py", "s", "o", level="L5S1", side="left")
    with pytest.raises(ValueError, match="three points"):
        build_triangles_command("py", "s", "o", level="L5S1", side="left", points_ras=points[:2])


def test_markups_reach_the_backend_in_lps(measured, case):
    """RAS control points + ``--ras`` give the truth's LPS landmarks; the run reports progress."""
    m = measured["report"]["measurement"]
    np.testing.assert_allclose(m["triangle_lps_mm"], _truth_points_lps(case), atol=1e-3)
    truth = case.truth["levels"][LEVEL][SIDE]["kambin"]
    assert m["quantities"]["true_triangle_area_mm2"]["value"] == pytest.approx(truth["area_3d_mm2"], rel=1e-4)
    assert (m["level"], m["side"], m["mode"], m["view"]["theta_deg"], m["view"]["phi_deg"]) == (LEVEL, SIDE, "points", THETA, PHI)
    stages = [e.progress.stage for e in measured["events"] if e.progress]
    assert stages[0] == "read" and stages[-1] == "done"


def test_subprocess_measures_what_the_python_api_measures(measured, case):
    """The label map written from the segmentation node is the phantom's: same numbers in-process."""
    from spinect.geometry.measure import measure_triangle

    direct = measure_triangle(case.labels, structures=case.structures, level=LEVEL, side=SIDE,
                              points_lps_mm=_truth_points_lps(case), theta_deg=THETA, phi_deg=PHI)
    got = measured["report"]["measurement"]["quantities"]
    for name, quantity in direct.measurement.quantities.items():
        assert got[name]["value"] == pytest.approx(quantity.value, rel=1e-3, abs=1e-3), name


def test_table_curves_plane_and_line_show_the_backend_json(slicer, measured, tmp_path):
    from SpineCTSegmentationLib.triangles import update_window_nodes, write_table_csv

    report, scene = measured["report"], measured["scene"]
    m = report["measurement"]
    nodes = update_window_nodes(report, scene)

    # Table: every quantity with the JSON's value, unit, kind and definition; CSV the same.
    table = nodes.table.GetTable()
    rows = {table.GetValueByName(r, "quantity").ToString(): r for r in range(table.GetNumberOfRows())}
    assert set(rows) == set(m["quantities"])
    for name, q in m["quantities"].items():
        r = rows[name]
        assert table.GetValueByName(r, "value").ToDouble() == pytest.approx(q["value"], rel=1e-12)
        assert [table.GetValueByName(r, c).ToString() for c in ("unit", "kind", "definition")] == [q["unit"], q["kind"], q["definition"]]
        assert ("theta=30" in table.GetValueByName(r, "view").ToString()) == (q["kind"] == "projected")
    written = write_table_csv(nodes.table, tmp_path / "triangle.csv")
    with written.open(newline="", encoding="utf-8") as f:
        csv_rows = {row["quantity"]: row for row in csv.DictReader(f)}
    for name, q in m["quantities"].items():
        assert float(csv_rows[name]["value"]) == pytest.approx(q["value"], rel=5e-6)  # 6 significant digits

    # Outlines and the projected triangle as closed curves, LPS -> RAS; Slicer's own area is off.
    assert len(nodes.outlines) == len(m["outlines_lps_mm"]) >= 1
    for curve, outline in zip(nodes.outlines, m["outlines_lps_mm"]):
        np.testing.assert_allclose(slicer.util.arrayFromMarkupsControlPoints(curve, world=True), lps_to_ras(outline), atol=1e-6)
        assert curve.GetMeasurement("area").GetEnabled() == 0 and curve.GetLocked()
    np.testing.assert_allclose(slicer.util.arrayFromMarkupsControlPoints(nodes.triangle, world=True),
                               lps_to_ras(m["triangle_projected_lps_mm"]), atol=1e-6)

    # The plane is perpendicular to the view through the window's origin; the outlines lie on it.
    d_ras = lps_to_ras(m["view"]["direction_lps"])
    normal, centre = [0.0] * 3, [0.0] * 3
    nodes.plane.GetNormalWorld(normal)
    nodes.plane.GetCenterWorld(centre)
    assert abs(np.dot(normal, d_ras)) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(centre, lps_to_ras(m["plane_origin_lps_mm"]), atol=1e-6)
    on_plane = (lps_to_ras(np.concatenate(m["outlines_lps_mm"])) - centre) @ d_ras
    assert np.abs(on_plane).max() < 1e-3

    # Without a search the line runs along the view and ends at the needle tip.
    line = slicer.util.arrayFromMarkupsControlPoints(nodes.path, world=True)
    np.testing.assert_allclose(line[1], lps_to_ras(m["target_lps_mm"]), atol=1e-6)
    np.testing.assert_allclose((line[1] - line[0]) / np.linalg.norm(line[1] - line[0]), d_ras, atol=1e-6)

    # A second measurement updates the same nodes rather than adding new ones.
    count = scene.GetNumberOfNodes()
    again = update_window_nodes(report, scene)
    assert scene.GetNumberOfNodes() == count and again.table is nodes.table and again.path is nodes.path


def test_search_result_shows_the_best_view_and_skin_entry(slicer, measured, case):
    """A report with a trajectory (made by the backend's own classes): best-view rows and E -> T line."""
    from spinect.geometry.measure import measure_triangle
    from spinect.geometry.trajectory import PathCheck, TrajectoryResult, carm_angles

    from SpineCTSegmentationLib.triangles import measurement_rows, update_window_nodes

    best = measure_triangle(case.labels, structures=case.structures, level=LEVEL, side=SIDE,
                            points_lps_mm=_truth_points_lps(case), theta_deg=40.0, phi_deg=-5.0).measurement
    entry = best.target_lps_mm - 45.0 * best.view.direction
    path = PathCheck(best.target_lps_mm, entry, 45.0, 3.5, 4.0, True)
    trajectory = TrajectoryResult(40.0, -5.0, "radius", 3.9, 3.8, np.zeros(1), np.zeros(1), np.zeros((1, 1)),
                                  np.zeros((1, 1)), best, path, carm_angles(best.view.direction, SIDE))
    report = dict(measured["report"], trajectory=trajectory.to_dict())
    rows = {r["quantity"]: r for r in measurement_rows(report)}
    assert rows["best_view_theta_deg"]["value"] == 40.0 and rows["best_view_phi_deg"]["value"] == -5.0
    assert rows["free_area_mm2"]["value"] == pytest.approx(best.value("free_area_mm2"), rel=1e-12)
    assert rows["path_length_mm"]["value"] == 45.0 and "theta=40" in rows["free_area_mm2"]["view"]
    nodes = update_window_nodes(report, measured["scene"])
    line = slicer.util.arrayFromMarkupsControlPoints(nodes.path, world=True)
    shown = report["trajectory"]["path"]
    np.testing.assert_allclose(line, lps_to_ras([shown["skin_entry_lps_mm"], shown["target_lps_mm"]]), atol=1e-9)
    np.testing.assert_allclose(line, lps_to_ras([entry, best.target_lps_mm]), atol=1e-3)  # JSON rounding
    assert nodes.path.GetName().startswith("Needle path")


@pytest.mark.parametrize("side", ["left", "right"])
def test_camera_looks_along_the_backends_view_direction(measured, side):
    """Pure camera maths against the backend's EndplateFrame.view and the report's own view."""
    from spinect.geometry.frame import EndplateFrame

    m = measured["report"]["measurement"]
    f = m["frame"]
    frame = EndplateFrame(*(np.asarray(f[k], float) for k in ("centre_lps_mm", "normal_lps", "left_lps", "anterior_lps")))
    focal = lps_to_ras(m["target_lps_mm"])
    for theta, phi in [(0.0, 0.0), (30.0, 0.0), (45.0, -12.5), (60.0, 25.0)]:
        view = frame.view(theta, phi, side)
        camera = camera_for_view(f, theta, phi, side, focal_point_ras=focal, distance_mm=250.0, parallel_scale_mm=30.0)
        np.testing.assert_allclose(ras_to_lps(camera.direction_ras), view.direction, atol=1e-12)
        np.testing.assert_allclose(ras_to_lps(camera.view_up_ras), view.v, atol=1e-12)
        np.testing.assert_allclose(camera.position_ras, focal - 250.0 * lps_to_ras(view.direction), atol=1e-9)
        assert camera.parallel_scale_mm == 30.0
    if side == SIDE:  # the measured view itself
        np.testing.assert_allclose(view_direction_lps(f, THETA, PHI, side), m["view"]["direction_lps"], atol=1e-9)
        np.testing.assert_allclose(view_up_lps(f, np.asarray(m["view"]["direction_lps"])), m["view"]["image_v_lps"], atol=1e-9)


def test_camera_node_becomes_orthographic_along_the_view(slicer, measured):
    from SpineCTSegmentationLib.triangles import apply_camera

    m = measured["report"]["measurement"]
    scene = measured["scene"]
    view_node = scene.AddNewNodeByClass("vtkMRMLViewNode")
    camera_node = scene.AddNewNodeByClass("vtkMRMLCameraNode")
    camera = camera_for_view(m["frame"], THETA, PHI, SIDE, focal_point_ras=lps_to_ras(m["target_lps_mm"]))
    apply_camera(camera_node, view_node, camera)
    assert view_node.GetRenderMode() == view_node.Orthographic and camera_node.GetParallelProjection()
    vtk_camera = camera_node.GetCamera()
    np.testing.assert_allclose(vtk_camera.GetDirectionOfProjection(), lps_to_ras(m["view"]["direction_lps"]), atol=1e-9)
    np.testing.assert_allclose(vtk_camera.GetFocalPoint(), camera.focal_point_ras, atol=1e-9)
    assert np.dot(vtk_camera.GetViewUp(), lps_to_ras(m["view"]["image_v_lps"])) == pytest.approx(1.0, abs=1e-9)
    assert camera_node.GetParallelScale() == pytest.approx(camera.parallel_scale_mm)


def test_backend_error_reaches_the_caller_and_no_report_is_kept(slicer, measured):
    """Points far from any bone: the backend's one-line error is what the user sees."""
    from SpineCTSegmentationLib.triangles import TrianglesFailed, TrianglesJob

    far = [[500.0, 500.0, 500.0], [510.0, 500.0, 500.0], [500.0, 510.0, 500.0]]
    job = TrianglesJob(measured["inputs"], python_executable=sys.executable, base_env=dict(os.environ), level=LEVEL,
                       side=SIDE, points_ras=far, backend_dir=MODULE_DIR)
    job.start()
    job.wait(timeout_s=60)
    with pytest.raises(TrianglesFailed, match=r"^spinect triangles: error: "):
        job.finish()
    job.cleanup()
    assert not job.folder.exists()
