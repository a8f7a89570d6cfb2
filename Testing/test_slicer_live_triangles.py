"""Live triangle interaction (issue 16, item 4) without Slicer's GUI.

* :class:`LiveMeasureScheduler`, the widget's debounce/queue logic, driven with a fake clock;
* :func:`placement_plan`: "Place points" never deletes points unasked;
* a point drag on Slicer's real MRML point list (``slicer-core``) reaches the scheduler through
  ``PointModifiedEvent`` and a real ``spinect triangles`` run gives the new readout;
* requirements.txt (and ``TRIANGLE_REQUIREMENTS``, what the widget checks before measuring)
  covers every third-party package that a real triangles run (with the search and heat map)
  imports from spinect, apart from what Slicer ships.

Truth: the phantom's landmarks and the backend's own Python API on the moved points.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "SpineCTSegmentation"
sys.path.insert(0, str(MODULE_DIR))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from SpineCTSegmentationLib import dependencies  # noqa: E402
from SpineCTSegmentationLib.triangles import LiveMeasureScheduler, placement_plan  # noqa: E402
from SpineCTSegmentationLib.view import lps_to_ras, ras_to_lps  # noqa: E402

phantom = pytest.importorskip("spinect.phantom")
LEVEL, SIDE = "L5S1", "left"


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _abc(offset: float = 0.0) -> np.ndarray:
    return np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 10.0]]) + offset


# --------------------------------------------------------------------------- scheduler


def test_a_drag_measures_once_after_the_points_rest():
    clock = FakeClock()
    s = LiveMeasureScheduler(delay_s=0.3, clock=clock)
    s.started(_abc())
    s.finished()
    assert not s.points_changed(_abc())  # the event without a move (label, selection, hover)
    for step in range(10):  # a drag: 10 events, 50 ms apart
        assert s.points_changed(_abc(0.1 * (step + 1)))
        clock.now += 0.05
        assert s.due() is None  # never while the points still move
    clock.now += 0.2  # 0.25 s after the last move
    assert s.due() is None and s.waiting and s.seconds_until_due() == pytest.approx(0.05, abs=1e-9)
    clock.now += 0.06
    assert s.due() == "measure"
    assert s.due() is None and not s.waiting  # once


def test_incomplete_lists_and_placing_do_not_measure():
    clock = FakeClock()
    s = LiveMeasureScheduler(clock=clock)
    assert not s.points_changed(_abc()[:2])  # B and C not placed yet
    s.placing = True
    assert not s.points_changed(_abc())
    s.placing = False
    assert s.points_changed(_abc())
    seed = LiveMeasureScheduler(required_points=1, clock=clock)
    assert not seed.points_changed(_abc()) and seed.points_changed(_abc()[:1])


def test_moves_during_a_run_give_one_more_run_with_the_latest_points():
    clock = FakeClock()
    s = LiveMeasureScheduler(delay_s=0.3, clock=clock)
    s.started(_abc())
    for k in range(5):
        assert s.points_changed(_abc(k + 1.0))
    clock.now += 5.0
    assert s.due() is None  # a run is going on
    s.finished()
    assert s.due() == "measure"
    s.started(_abc(5.0))  # the widget starts it with the latest positions
    s.finished()
    assert s.due() is None
    assert not s.points_changed(_abc(5.0))  # those are measured


def test_optimize_clicked_during_a_run_is_queued_not_dropped():
    clock = FakeClock()
    s = LiveMeasureScheduler(clock=clock)
    s.started(_abc())
    s.request_optimize()
    s.points_changed(_abc(1.0))  # a drag after the click
    assert s.due() is None
    s.finished()
    assert s.due() == "optimize"  # the search measures the current points too
    s.started(_abc(1.0))
    s.finished()
    assert s.due() is None
    s.view_changed()
    clock.now += 1.0
    assert s.due() == "measure"


def test_place_points_never_deletes_points_unasked():
    kept = placement_plan(3, 3)
    assert (kept.remove_existing, kept.to_place, kept.measure_now) == (False, 0, True)
    appended = placement_plan(1, 3)
    assert (appended.remove_existing, appended.to_place) == (False, 2)
    assert placement_plan(0, 3).to_place == 3
    replaced = placement_plan(3, 3, replace=True)
    assert (replaced.remove_existing, replaced.to_place) == (True, 3)
    extra = placement_plan(4, 3)
    assert (extra.remove_existing, extra.to_place, extra.measure_now) == (False, 0, False) and "extra" in extra.message
    assert placement_plan(0, 1, replace=True).remove_existing is False  # nothing to replace
    with pytest.raises(ValueError):
        placement_plan(-1, 3)


def test_the_widget_uses_the_plan_and_observes_point_moves():
    """The widget cannot run here (Qt); its source must route "Place points" through the plan
    (removing points only when the plan says so) and observe PointModifiedEvent."""
    import ast

    tree = ast.parse((MODULE_DIR / "SpineCTSegmentation.py").read_text(encoding="utf-8"))
    start = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "startPlacing")
    removes = [n for n in ast.walk(start) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "RemoveAllControlPoints"]
    assert len(removes) == 1
    guarded = [n for n in ast.walk(start) if isinstance(n, ast.If) and "remove_existing" in ast.unparse(n.test)]
    assert guarded and any(removes[0] in list(ast.walk(g)) for g in guarded)
    source = ast.unparse(tree)
    assert "PointModifiedEvent" in source and "points_changed" in source and "request_optimize" in source


# --------------------------------------------------------------------------- MRML + backend


@pytest.fixture(scope="module")
def case(triangle_case):
    return triangle_case


def test_a_point_drag_in_mrml_reaches_a_new_readout(slicer, case, tmp_path):
    from test_slicer_logic import volume_node_from_image

    from SpineCTSegmentationLib.mrml_io import import_labelmap_segments
    from SpineCTSegmentationLib.triangles import (
        TriangleInputs,
        TrianglesJob,
        control_points_ras,
        measurement_rows,
        update_measurement_table,
    )
    from spinect.geometry.measure import measure_triangle

    scene = slicer.vtkMRMLScene()
    ct = volume_node_from_image(slicer, scene, case.ct, "phantom CT")
    labels = volume_node_from_image(slicer, scene, case.labels, "labels", "vtkMRMLLabelMapVolumeNode")
    segmentation = import_labelmap_segments(labels, None, reference_volume=ct, closed_surfaces=False)
    truth = np.array(list(case.truth["levels"][LEVEL][SIDE]["kambin"]["points_lps_mm"].values()), float)
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Kambin ABC")
    for label, p in zip("ABC", lps_to_ras(truth)):
        points.AddControlPoint(*p, label)

    clock = FakeClock()
    scheduler = LiveMeasureScheduler(delay_s=0.3, clock=clock)
    scheduled = []
    # what the widget's observer does (VTKObservationMixin.addObserver on the same event)
    points.AddObserver(points.PointModifiedEvent,
                       lambda caller, event: scheduled.append(scheduler.points_changed(control_points_ras(caller))))
    scheduler.started(control_points_ras(points))  # the first measurement ran with these
    scheduler.finished()

    points.SetNthControlPointLabel(0, "A (root meets SAP)")  # an event without a move
    assert scheduled and not any(scheduled) and scheduler.due() is None
    moved_ras = lps_to_ras(truth[1]) + np.array([-1.2, 0.8, 0.6])  # drag B by 1.6 mm
    points.SetNthControlPointPosition(1, *moved_ras)
    assert scheduled[-1] is True
    clock.now += 0.31
    assert scheduler.due() == "measure"

    inputs = TriangleInputs(segmentation, ct, work_dir=tmp_path)
    try:
        dragged = control_points_ras(points)
        job = TrianglesJob(inputs, python_executable=sys.executable, base_env=dict(os.environ), level=LEVEL, side=SIDE,
                           points_ras=dragged, theta_deg=30.0, backend_dir=MODULE_DIR)
        scheduler.started(dragged)
        job.start()
        events = job.wait(timeout_s=180)
        assert job.process.returncode == 0, "\n".join(e.line for e in events)
        report = job.finish()
        job.cleanup()
        scheduler.finished()
    finally:
        inputs.cleanup()
    expected_lps = truth.copy()
    expected_lps[1] = ras_to_lps(moved_ras)
    m = report["measurement"]
    np.testing.assert_allclose(m["triangle_lps_mm"], expected_lps, atol=1e-3)
    direct = measure_triangle(case.labels, level=LEVEL, side=SIDE, points_lps_mm=expected_lps, theta_deg=30.0)
    before = measure_triangle(case.labels, level=LEVEL, side=SIDE, points_lps_mm=truth, theta_deg=30.0)
    table = update_measurement_table(report, scene)
    rows = {r["quantity"]: r["value"] for r in measurement_rows(report)}
    for name in ("true_triangle_area_mm2", "projected_triangle_area_mm2", "free_area_mm2"):
        assert rows[name] == pytest.approx(direct.measurement.value(name), rel=1e-6, abs=1e-9)
    assert rows["true_triangle_area_mm2"] != pytest.approx(before.measurement.value("true_triangle_area_mm2"), rel=1e-3)
    assert table.GetNumberOfRows() == len(rows)
    assert scheduler.due() is None and not scheduler.points_changed(control_points_ras(points))


# --------------------------------------------------------------------------- requirements


@pytest.mark.parametrize("path", ["worker", "one-process"])
def test_requirements_cover_what_a_triangles_run_imports(case, tmp_path, path):
    """A real Optimize (search + heat map) as the module runs it: on the ``spinect serve`` worker
    (open_triangles + optimize requests), and as one ``spinect triangles --optimize`` process (the
    fallback). Imports are profiled like the segment check in test_slicer_logic: every third-party
    package a spinect module imports is shipped with Slicer (numpy, scipy, SimpleITK) or in
    TRIANGLE_REQUIREMENTS, and those are in requirements.txt. PyTorch is not imported at all."""
    import json

    import SimpleITK as sitk
    from test_slicer_logic import _import_tree, _requirement_name, _source_imports

    from spinect.geometry.measure import crop_around

    truth = np.array(list(case.truth["levels"][LEVEL][SIDE]["kambin"]["points_lps_mm"].values()), float)
    seg = tmp_path / "labels.nrrd"
    sitk.WriteImage(crop_around(case.labels, truth.mean(axis=0), 40.0), str(seg))
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1", PYTHONPATH=str(MODULE_DIR))
    if path == "worker":
        requests = [{"id": 1, "verb": "open_triangles", "session": "s", "args": {"seg": str(seg), "level": LEVEL, "side": SIDE}},
                    {"id": 2, "verb": "optimize", "session": "s",
                     "args": {"points": truth.tolist(), "step_deg": 30, "heatmap": str(tmp_path / "t_heatmap.png")}},
                    {"id": 3, "verb": "shutdown"}]
        run = subprocess.run([sys.executable, "-m", "spinect", "serve"], input="".join(json.dumps(r) + "\n" for r in requests),
                             env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        answers = [json.loads(line) for line in run.stdout.splitlines()]
        assert [a.get("ok") for a in answers if "progress" not in a and a.get("id")] == [True, True, True], run.stdout[-2000:]
    else:
        command = [sys.executable, "-m", "spinect", "triangles", str(seg), "--level", LEVEL, "--side", SIDE,
                   "--points", *map(str, truth.ravel()), "--optimize", "--step", "30", "--json", str(tmp_path / "t.json"),
                   "--progress-lines"]
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "t_heatmap.png").is_file()
    entries = _import_tree(run.stderr.splitlines())
    names = {name for _, name in entries}
    assert "spinect.geometry.session" in names and "skimage" in names and "matplotlib" in names
    assert "torch" not in names and "monai" not in names
    spinect_imports = _source_imports(sorted(n for n in names if n.split(".")[0] == "spinect"))
    needed = set()
    for i, (depth, name) in enumerate(entries):
        parent = next((n for d, n in entries[i + 1:] if d == depth - 1), None) if depth else None
        top = name.split(".")[0]
        if (parent or "").split(".")[0] == "spinect" or (depth == 0 and top in spinect_imports):
            needed.add(top)
    needed -= set(sys.stdlib_module_names) | {"spinect", "__future__"}
    assert {"skimage", "matplotlib", "scipy", "numpy", "SimpleITK"} <= needed
    owners = importlib.metadata.packages_distributions()
    shipped = {"numpy", "scipy", "simpleitk"}
    triangle = {_requirement_name(r) for r in dependencies.TRIANGLE_REQUIREMENTS}
    unlisted = sorted(n for n in needed if not {d.lower() for d in owners.get(n, [n])} & (shipped | triangle))
    assert unlisted == [], f"add to TRIANGLE_REQUIREMENTS and requirements.txt: {unlisted}"
    listed = {_requirement_name(r) for r in dependencies.read_requirements()}
    assert triangle <= listed, f"TRIANGLE_REQUIREMENTS missing from requirements.txt: {sorted(triangle - listed)}"


# --------------------------------------------------------------------------- parameter node state


class _StoredParams:
    """The parameter node wrapper's two string fields on a real ``vtkMRMLScriptedModuleNode``
    (the wrapper keeps a ``str`` field as the node's parameter of the same name)."""

    def __init__(self, node):
        object.__setattr__(self, "node", node)

    def __getattr__(self, name):
        return self.node.GetParameter(name)

    def __setattr__(self, name, value):
        self.node.SetParameter(name, value)


def _reopened(slicer, scene):
    """The scene saved to MRML and read back, as Save + reopen does; returns the new scene."""
    scene.SetSaveToXMLString(1)
    scene.Commit()
    reopened = slicer.vtkMRMLScene()
    reopened.SetLoadFromXMLString(1)
    reopened.SetSceneXMLString(scene.GetSceneXMLString())
    reopened.Import()
    return reopened


def test_mode_and_last_result_live_in_the_parameter_node_and_restore_the_readout(slicer, case):
    import json

    from SpineCTSegmentationLib.options import TriangleMode
    from SpineCTSegmentationLib.triangles import TriangleState, control_points_ras, readout_html
    from spinect.geometry.measure import measure_triangle

    truth = np.array(list(case.truth["levels"][LEVEL][SIDE]["kambin"]["points_lps_mm"].values()), float)
    report = json.loads(json.dumps(measure_triangle(case.labels, level=LEVEL, side=SIDE, points_lps_mm=truth,
                                                    theta_deg=30.0).to_dict()))
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "SpineCTSegmentation")
    node.SetAttribute("ModuleName", "SpineCTSegmentation")
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Kambin A-B-C")
    for label, p in zip("ABC", lps_to_ras(truth)):
        points.AddControlPoint(*p, label)

    widget_state = TriangleState()  # what the widget holds: no mode or report of its own
    params = _StoredParams(node)
    assert widget_state.mode(params) is None and widget_state.report(params) is None
    assert widget_state.restore(params, LiveMeasureScheduler(), points) == ""
    widget_state.set_mode(params, TriangleMode.POINTS)  # "Place points" clicked
    widget_state.set_report(params, report)  # the measurement finished
    assert widget_state.report(params) == report and node.GetParameter("triangleMode") == "points"

    # the module is reloaded (new widget, same scene), or the scene is saved and reopened
    for reloaded_node in (node, _reopened(slicer, scene).GetFirstNodeByClass("vtkMRMLScriptedModuleNode")):
        state, stored = TriangleState(), _StoredParams(reloaded_node)
        assert state.mode(stored) == TriangleMode.POINTS
        assert state.report(stored) == report
        scheduler = LiveMeasureScheduler(clock=FakeClock())
        readout = state.restore(stored, scheduler, points)
        assert readout == readout_html(report) and "free_area_mm2" in readout and "θ=30.0°" in readout
        assert scheduler.required_points == 3 and not scheduler.waiting
        assert not scheduler.points_changed(control_points_ras(points))  # the stored report measured these
        moved = control_points_ras(points)
        moved[1] += 1.0
        assert scheduler.points_changed(moved)  # a drag after the reload measures again

    seed = TriangleState()
    seed.set_mode(params, TriangleMode.SEED)
    scheduler = LiveMeasureScheduler()
    assert seed.restore(params, scheduler, None) == readout_html(report) and scheduler.required_points == 1
    seed.set_mode(params, None)
    assert seed.mode(params) is None and node.GetParameter("triangleMode") == ""
    params.triangleMode = "sideways"  # a scene edited by hand: ignored, not an error
    assert seed.mode(params) is None
    params.triangleReport = "{not json"
    assert seed.report(params) is None and seed.restore(params, LiveMeasureScheduler(), points) == ""
    seed.set_report(params, None)
    assert node.GetParameter("triangleReport") == ""


def test_the_widget_keeps_the_triangle_state_in_the_parameter_node():
    """The widget cannot run here (Qt); its source must keep mode and report in the parameter
    node (string fields of the wrapper), read them from there, and restore them on a new node."""
    import ast

    tree = ast.parse((MODULE_DIR / "SpineCTSegmentation.py").read_text(encoding="utf-8"))
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SpineCTSegmentationParameterNode")
    fields = {n.target.id: ast.unparse(n.annotation) for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    assert fields["triangleMode"] == "str" and fields["triangleReport"] == "str"
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SpineCTSegmentationWidget")
    attributes = {n.attr for n in ast.walk(widget) if isinstance(n, ast.Attribute) and ast.unparse(n.value) == "self"}
    assert not attributes & {"_triangleMode", "_triangleReport"}  # no copy of the state outside the node
    methods = {n.name: ast.unparse(n) for n in widget.body if isinstance(n, ast.FunctionDef)}
    assert "self.restoreTriangles()" in methods["setParameterNode"]
    assert "self.setTriangleReport(report)" in methods["onPollTriangles"]
    assert "self.setTriangleMode(mode)" in methods["startPlacing"]
    assert "self.setTriangleMode(TriangleMode.AUTO)" in methods["onAuto"]
