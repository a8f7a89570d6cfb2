"""Kambin/safe triangles in Slicer: markups in, ``spinect triangles`` in a subprocess, nodes out.

The backend's JSON report is the source of truth for every number shown. This module only moves
data: the segmentation is written as a label map (and the CT / level map when needed), the
markups' RAS positions go on the command line (``--ras``), and the report's LPS geometry comes
back as markups (window outlines as closed curves on a plane perpendicular to the view, the
needle path as a line) and a table node. Slicer's own closed-curve area is turned off: it fits a
soap-bubble surface through points at different depths, which is not the triangle's area.

Only Slicer's MRML classes are used (no ``slicer.app``), so this runs under pytest with the
``slicer-core`` wheel.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import vtk

from SpineCTSegmentationLib.mrml_io import write_segment_labels, write_volume
from SpineCTSegmentationLib.process import BackendProcess, Progress, ProcessEvent, backend_environment, build_triangles_command
from SpineCTSegmentationLib.view import CameraParameters, lps_to_ras

__all__ = [
    "ROLE_ATTRIBUTE",
    "TriangleInputs",
    "TrianglesJob",
    "TrianglesFailed",
    "control_points_ras",
    "displayed_measurement",
    "measurement_rows",
    "update_measurement_table",
    "update_window_nodes",
    "WindowNodes",
    "apply_camera",
    "write_table_csv",
    "LiveMeasureScheduler",
    "PlacementPlan",
    "placement_plan",
    "REMEASURE_DELAY_S",
    "readout_html",
    "TriangleState",
]

#: Node attribute naming what a node shows, so a new measurement updates the same nodes.
ROLE_ATTRIBUTE = "SpineCTSegmentation.role"
#: Length of the line drawn along the view when the skin entry is unknown (no optimize/CT), mm.
VIEW_AXIS_LENGTH_MM = 60.0


#: Quiet time after the last point drag / slider move before measuring again, seconds.
REMEASURE_DELAY_S = 0.3


class TrianglesFailed(RuntimeError):
    """The backend exited with an error (message: the CLI's one-line error, if any)."""


def control_points_ras(markups_node) -> np.ndarray:
    """Defined control point positions (N, 3), RAS mm, world (parent transforms applied)."""
    points = []
    for i in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(i) != markups_node.PositionDefined:
            continue
        position = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(i, position)
        points.append(position)
    return np.asarray(points, float).reshape(-1, 3)


class TriangleInputs:
    """Files the backend reads, written once and reused while only the view (θ, φ) changes.

    Args:
        segmentation_node: segmentation with ``bone`` and ``nerve`` segments.
        reference_volume: the CT; the label map is written on its grid.
        structures_volume: optional level/structure map volume (automatic mode, endplate frame).
        with_ct: also write the CT (skin entry point of the path: needed by the view search).
        work_dir: parent of the private temporary folder.
    """

    def __init__(self, segmentation_node, reference_volume, *, structures_volume=None, with_ct: bool = False,
                 work_dir: str | os.PathLike | None = None):
        if reference_volume is None or reference_volume.GetImageData() is None:
            raise ValueError("select the CT volume (its grid is used for the label map)")
        if segmentation_node is None:
            raise ValueError("select the segmentation with the 'bone' and 'nerve' segments")
        self.segmentation_node = segmentation_node
        self.reference_volume = reference_volume
        self.structures_volume = structures_volume
        self.folder = Path(tempfile.mkdtemp(prefix="SpineCTTriangles-", dir=work_dir))
        self.seg_path = self.folder / "labels.nrrd"
        self.ct_path: Path | None = None
        self.structures_path: Path | None = None
        try:
            write_segment_labels(segmentation_node, reference_volume, self.seg_path)
            if structures_volume is not None:
                self.structures_path = write_volume(structures_volume, self.folder / "structures.nrrd")
            if with_ct:
                self.add_ct()
        except BaseException:
            self.cleanup()
            raise

    def add_ct(self) -> Path:
        """Write the CT if not written yet; returns its path."""
        if self.ct_path is None:
            self.ct_path = write_volume(self.reference_volume, self.folder / "ct.nrrd")
        return self.ct_path

    def matches(self, segmentation_node, reference_volume, structures_volume) -> bool:
        """True if these files were written from these nodes."""
        return (self.segmentation_node, self.reference_volume, self.structures_volume) == (
            segmentation_node, reference_volume, structures_volume)

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class TrianglesJob:
    """One ``spinect triangles`` run without blocking the caller (poll it from a timer).

    Args:
        inputs: the written files.
        python_executable: ``PythonSlicer`` in Slicer.
        base_env: environment of the child.
        level: ``L4L5``/``L5S1``; side: ``left``/``right``.
        points_ras: (3, 3) A, B, C (RAS mm), or seed_ras: (3,), or neither (automatic).
        theta_deg, phi_deg: the view measured.
        optimize: also search the best view (writes the CT first: the path needs the skin).
        backend_dir: folder containing the ``spinect`` package.
    """

    def __init__(self, inputs: TriangleInputs, *, python_executable: str, base_env: Mapping[str, str], level: str,
                 side: str, points_ras: Sequence[Sequence[float]] | None = None, seed_ras: Sequence[float] | None = None,
                 theta_deg: float = 0.0, phi_deg: float = 0.0, optimize: bool = False,
                 backend_dir: str | os.PathLike | None = None):
        from SpineCTSegmentationLib.pipeline import BACKEND_DIR

        self.inputs = inputs
        self.folder = Path(tempfile.mkdtemp(prefix="run-", dir=inputs.folder))
        self.json_path = self.folder / "triangles.json"
        self.heatmap_path = self.folder / "heatmap.png" if optimize else None
        self.level, self.side = level, side
        ct_path = inputs.add_ct() if optimize else inputs.ct_path
        command = build_triangles_command(
            python_executable, inputs.seg_path, self.json_path, level=level, side=side, points_ras=points_ras,
            seed_ras=seed_ras, structures_path=inputs.structures_path, ct_path=ct_path, theta_deg=theta_deg,
            phi_deg=phi_deg, optimize=optimize, heatmap_path=self.heatmap_path,
        )
        env = backend_environment(base_env, backend_dir=backend_dir or BACKEND_DIR, device="cpu")
        self.process = BackendProcess(command, env=env, cwd=str(self.folder))
        self.progress = Progress("read", 0.0, "")

    def start(self) -> None:
        self.process.start()

    def poll(self) -> list[ProcessEvent]:
        events = self.process.poll()
        for event in events:
            if event.progress is not None:
                self.progress = event.progress
        return events

    def wait(self, timeout_s: float | None = None) -> list[ProcessEvent]:
        events = self.process.wait(timeout_s)
        for event in events:
            if event.progress is not None:
                self.progress = event.progress
        return events

    @property
    def running(self) -> bool:
        return self.process.running

    def cancel(self) -> None:
        self.process.cancel()

    def finish(self) -> dict:
        """The backend's JSON report.

        Raises:
            TrianglesFailed: the backend failed, was cancelled, or wrote no report.
        """
        if self.running:
            raise RuntimeError("the backend is still running; wait for it or cancel it first")
        if self.process.cancelled:
            raise TrianglesFailed("the measurement was cancelled")
        if self.process.returncode != 0 or not self.json_path.is_file():
            raise TrianglesFailed(self.process.error_line or f"spinect triangles exited with code {self.process.returncode}; see the log")
        return json.loads(self.json_path.read_text(encoding="utf-8"))

    def cleanup(self) -> None:
        """Stop the backend if needed and remove this run's folder (the inputs stay)."""
        if self.process.running and self.process.pid is not None:
            self.process.cancel()
        shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------- live interaction


class LiveMeasureScheduler:
    """When to measure again while the user drags control points or moves the view sliders.

    Qt-free, so tests drive it with their own clock; the module widget feeds it Slicer's events
    and runs a single-shot ``QTimer`` on its answers:

    * :meth:`points_changed` on every ``PointModifiedEvent`` of the point list (a drag sends many),
      with the list's defined positions: only a real move of a complete list counts (labels,
      selection, locking and the 3D view's hover send the event too, without a move);
    * :meth:`view_changed` when θ or φ moves;
    * :meth:`request_optimize` for the Optimize button: queued while a run goes on, never dropped;
    * :meth:`due` when the timer fires: ``"optimize"``, ``"measure"`` or None; the caller starts
      that run and reports it with :meth:`started`, and its end with :meth:`finished`.

    A measurement starts once no change came for ``delay_s`` and no run is going on; changes
    during a run make one more run after it, with the latest positions (the latest supersedes).

    Args:
        delay_s: the quiet time (debounce).
        required_points: points a complete list has (3: A, B, C; 1: a seed).
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, *, delay_s: float = REMEASURE_DELAY_S, required_points: int = 3, clock=time.monotonic):
        self.delay_s = float(delay_s)
        self.required_points = int(required_points)
        self.clock = clock
        self.running = False
        self.placing = False
        self._measure_pending = False
        self._optimize_pending = False
        self._quiet_until = -math.inf
        self._measured: np.ndarray | None = None  # positions of the last run started

    def reset(self, *, required_points: int | None = None) -> None:
        """Forget pending work and the last positions (a new mode or point list)."""
        if required_points is not None:
            self.required_points = int(required_points)
        self._measure_pending = self._optimize_pending = False
        self._measured = None

    def points_changed(self, positions) -> bool:
        """A ``PointModifiedEvent``: True when a measurement is now scheduled (start the timer).

        Ignored while points are being placed, when the list is incomplete (the run would be
        refused), and when no point moved since the last run started.
        """
        pts = np.asarray(positions, float).reshape(-1, 3)
        if self.placing or len(pts) != self.required_points:
            return False
        if self._measured is not None and self._measured.shape == pts.shape and np.allclose(pts, self._measured, rtol=0.0, atol=1e-6):
            return False
        return self._schedule()

    def view_changed(self) -> bool:
        """θ or φ moved: True (a measurement is scheduled; start the timer)."""
        return self._schedule()

    def request_optimize(self) -> None:
        """Optimize was clicked: the search runs as soon as no run is going on (it measures too)."""
        self._optimize_pending = True
        self._measure_pending = False

    def due(self) -> str | None:
        """What to start now: ``"optimize"``, ``"measure"`` or None (nothing, or not yet)."""
        if self.running:
            return None
        if self._optimize_pending:
            self._optimize_pending = False
            return "optimize"
        if self._measure_pending and self.clock() >= self._quiet_until:
            self._measure_pending = False
            return "measure"
        return None

    @property
    def waiting(self) -> bool:
        """Something is pending (the caller keeps its timer running until :meth:`due` answers)."""
        return self._measure_pending or self._optimize_pending

    def seconds_until_due(self) -> float:
        """How long the caller's timer should wait before asking :meth:`due` again."""
        return max(self._quiet_until - self.clock(), 0.0)

    def started(self, positions=None) -> None:
        """A run started, with these point positions (None in automatic mode)."""
        self.running = True
        self._measure_pending = False
        self._measured = None if positions is None else np.array(positions, float).reshape(-1, 3)

    def finished(self) -> None:
        """The run ended (measured, failed or cancelled)."""
        self.running = False

    def mark_measured(self, positions) -> None:
        """A measurement of these positions exists already (restored from the parameter node):
        events without a move do not measure again, a drag does."""
        self._measured = None if positions is None else np.array(positions, float).reshape(-1, 3)

    def _schedule(self) -> bool:
        self._measure_pending = True
        self._quiet_until = self.clock() + self.delay_s
        return True


@dataclass(frozen=True)
class PlacementPlan:
    """What "Place points" does to a point list.

    Attributes:
        remove_existing: delete the list's points first (only when the user asked to replace them).
        to_place: clicks still needed.
        measure_now: the list is already complete and kept: measure it as it is.
        message: what to tell the user.
    """

    remove_existing: bool
    to_place: int
    measure_now: bool
    message: str


def placement_plan(defined: int, needed: int, *, replace: bool = False) -> PlacementPlan:
    """Placing ``needed`` points in a list that has ``defined`` points: never deletes unasked.

    * fewer than needed: keep them and place the missing ones (appended);
    * complete or more, ``replace``: delete them and place all ``needed`` again;
    * complete, not ``replace``: keep them (moved points stay where the user dragged them) and
      measure them;
    * more than needed, not ``replace``: keep them, measure nothing, and say why.
    """
    if defined < 0 or needed <= 0:
        raise ValueError(f"invalid point counts: {defined} defined, {needed} needed")
    if replace and defined > 0:
        return PlacementPlan(True, needed, False, f"replacing the {defined} point(s) with {needed} new click(s)")
    if defined < needed:
        return PlacementPlan(False, needed - defined, False,
                             f"keeping {defined} point(s); click {needed - defined} more" if defined else f"click {needed} point(s)")
    if defined == needed:
        return PlacementPlan(False, 0, True, f"the {needed} point(s) are kept (drag them to move); measuring them")
    return PlacementPlan(False, 0, False,
                         f"the list has {defined} points but {needed} are used: delete the extra ones or replace them all")


# --------------------------------------------------------------------------- report -> nodes


def displayed_measurement(report: Mapping) -> Mapping:
    """The measurement to show: the best view's after a search, else the requested view's."""
    trajectory = report.get("trajectory")
    return trajectory["measurement"] if trajectory else report["measurement"]


def readout_html(report: Mapping, *, stale: bool = False) -> str:
    """The report's numbers as the panel's readout shows them (always the backend's, never
    Slicer's curve area); ``stale``: the view or points changed and a new measurement is due."""
    m = displayed_measurement(report)
    view = m["view"]
    head = (f"<b>{m['triangle']} {m['level']} {m['side']}</b> ({m['mode']}), measured at "
            f"θ={view['theta_deg']:.1f}°, φ={view['phi_deg']:.1f}°")
    if stale:
        head += " <i>(view changed: measuring again...)</i>"
    lines = [head]
    for row in measurement_rows(report):
        value = "undefined" if row["value"] is None else f"{row['value']:.2f} {row['unit']}"
        lines.append(f"{row['quantity']}: <b>{value}</b> [{row['kind']}]")
    lines += [f"<i>note: {note}</i>" for note in m.get("notes", [])]
    return "<br>".join(lines)


class TriangleState:
    """The triangle panel's state kept in the parameter node, so that it is saved with the scene.

    The parameter node has two string parameters: ``triangleMode`` (``points``, ``seed``,
    ``auto``, or empty before the first choice) and ``triangleReport`` (the last measurement's
    JSON report, as the backend wrote it; empty when there is none). The widget reads both from
    the node (never from attributes of its own), so reloading the module or reopening a saved
    scene restores the mode, the readout and what Optimize/Export need.

    ``params`` is the parameter node wrapper (or anything with those two string attributes). The
    report is parsed once per stored text (the widget asks on every parameter change).
    """

    def __init__(self):
        self._parsed: tuple[str, dict | None] = ("", None)

    @staticmethod
    def mode(params):
        """The stored :class:`TriangleMode`, or None (no parameter node, nothing chosen, unknown text)."""
        from SpineCTSegmentationLib.options import TriangleMode

        text = getattr(params, "triangleMode", "") if params is not None else ""
        try:
            return TriangleMode(text) if text else None
        except ValueError:
            return None

    @staticmethod
    def set_mode(params, mode) -> None:
        if params is not None:
            params.triangleMode = "" if mode is None else mode.value

    def report(self, params) -> dict | None:
        """The stored report, or None (none, or text that is not a JSON report)."""
        text = getattr(params, "triangleReport", "") if params is not None else ""
        if not text:
            return None
        if self._parsed[0] != text:
            try:
                report = json.loads(text)
                displayed_measurement(report)["view"]  # noqa: B018 - what the readout needs
            except (ValueError, TypeError, KeyError):
                report = None
            self._parsed = (text, report if isinstance(report, dict) else None)
        return self._parsed[1]

    def restore(self, params, scheduler: LiveMeasureScheduler, point_list=None) -> str:
        """Set up the live scheduler for the stored mode after a module reload or a reopened scene;
        returns the readout HTML of the stored report ("" when there is none).

        ``point_list``: the markups list the stored mode measures (None in automatic mode): its
        current positions count as measured, so a drag re-measures and other events do not.
        """
        from SpineCTSegmentationLib.options import TriangleMode

        mode = self.mode(params)
        scheduler.reset(required_points=1 if mode == TriangleMode.SEED else 3)
        report = self.report(params)
        if report is not None and point_list is not None:
            scheduler.mark_measured(control_points_ras(point_list))
        return readout_html(report) if report is not None else ""

    def set_report(self, params, report: Mapping | None) -> None:
        if params is None:
            return
        text = "" if report is None else json.dumps(report, separators=(",", ":"))
        params.triangleReport = text  # read back (and parsed) as a reopened scene would be


def _view_text(view: Mapping | None) -> str:
    if not view:
        return ""
    return f"theta={view['theta_deg']:g} phi={view['phi_deg']:g} {view['side']}"


def measurement_rows(report: Mapping) -> list[dict]:
    """Rows (quantity, value, unit, kind, view, definition) of the report, as the table shows them.

    The displayed measurement's quantities first (None = undefined, e.g. an unbounded seed
    window), then the best view and path of a search, if any.
    """
    measurement = displayed_measurement(report)
    rows = [
        dict(quantity=name, value=q["value"], unit=q["unit"], kind=q["kind"], view=_view_text(q.get("view")),
             definition=q["definition"])
        for name, q in measurement["quantities"].items()
    ]
    trajectory = report.get("trajectory")
    if trajectory:
        view = _view_text(measurement["view"])
        rows += [
            dict(quantity="best_view_theta_deg", value=trajectory["theta_deg"], unit="deg", kind="view", view=view,
                 definition=trajectory["angles_definition"]),
            dict(quantity="best_view_phi_deg", value=trajectory["phi_deg"], unit="deg", kind="view", view=view,
                 definition=trajectory["angles_definition"]),
            dict(quantity="robust_objective_value", value=trajectory["robust_objective_value"], unit="", kind="view",
                 view=view, definition=f"{trajectory['objective']}: {trajectory['robust_definition']}"),
        ]
        path = trajectory["path"]
        rows += [
            dict(quantity=name, value=path[name], unit="mm", kind="true_3d", view=view, definition=definition)
            for name, definition in (
                ("path_length_mm", "distance from the skin entry to the needle tip; " + path["skin_entry_definition"]),
                ("min_nerve_clearance_mm", path["clearance_definition"]),
                ("min_bone_clearance_mm", path["clearance_definition"]),
            )
        ]
    return rows


def _role_node(scene, class_name: str, role: str, name: str):
    """The scene's node with this role (created if missing, with display nodes)."""
    for node in _role_nodes(scene, class_name, role):
        return node
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    if hasattr(node, "CreateDefaultDisplayNodes"):
        node.CreateDefaultDisplayNodes()
    return node


def _role_nodes(scene, class_name: str, role_prefix: str) -> list:
    found = []
    for i in range(scene.GetNumberOfNodesByClass(class_name)):
        node = scene.GetNthNodeByClass(i, class_name)
        role = node.GetAttribute(ROLE_ATTRIBUTE) or ""
        if role == role_prefix or role.startswith(role_prefix + "-"):
            found.append(node)
    return sorted(found, key=lambda n: n.GetAttribute(ROLE_ATTRIBUTE))


def update_measurement_table(report: Mapping, scene, table_node=None):
    """Fill a table node (created if None) with :func:`measurement_rows`; returns it.

    Columns: quantity, value (double; NaN = undefined), unit, kind (projected / true_3d / view),
    view (θ, φ, side of a projected number), definition.
    """
    rows = measurement_rows(report)
    if table_node is None:
        table_node = _role_node(scene, "vtkMRMLTableNode", "triangle-table", "Triangle measurements")
    was = table_node.StartModify()
    table_node.RemoveAllColumns()
    columns = {}
    for name in ("quantity", "value", "unit", "kind", "view", "definition"):
        array = vtk.vtkDoubleArray() if name == "value" else vtk.vtkStringArray()
        array.SetName(name)
        columns[name] = array
    for row in rows:
        for name, array in columns.items():
            if name == "value":
                array.InsertNextValue(math.nan if row["value"] is None else float(row["value"]))
            else:
                array.InsertNextValue(str(row[name]))
    for array in columns.values():
        table_node.AddColumn(array)
    table_node.SetColumnDescription("value", "the backend's number (spinect triangles JSON); empty/NaN = undefined")
    measurement = displayed_measurement(report)
    table_node.SetAttribute("SpineCTSegmentation.triangle", f"{measurement['triangle']} {measurement['level']} {measurement['side']}")
    table_node.SetAttribute("SpineCTSegmentation.frameSource", str(report.get("frame_source", "")))
    table_node.EndModify(was)
    return table_node


def write_table_csv(table_node, path: str | os.PathLike) -> Path:
    """Write a table node as CSV with Slicer's table storage node (a ``.schema.csv`` goes beside it).

    Numbers are written with 6 significant digits (VTK's text writer), e.g. 178.211 mm².
    """
    path = Path(path)
    scene = table_node.GetScene()
    storage = scene.AddNewNodeByClass("vtkMRMLTableStorageNode")
    try:
        storage.SetFileName(str(path))
        if not storage.WriteData(table_node) or not path.is_file():
            raise OSError(f"could not write table '{table_node.GetName()}' to {path}")
    finally:
        scene.RemoveNode(storage)
    return path


@dataclass
class WindowNodes:
    """Markups showing one measurement (RAS).

    Attributes:
        outlines: closed curves of the free window (outer outlines and holes), on the plane.
        triangle: closed curve of the triangle A, B, C projected onto the plane (or None).
        plane: markups plane through the window, perpendicular to the view direction.
        path: line from the skin entry (or, without a search, a point 60 mm back along the view)
            to the needle tip.
        table: the measurement table.
    """

    outlines: list
    triangle: object
    plane: object
    path: object
    table: object


def _points(array_lps: Sequence[Sequence[float]]) -> vtk.vtkPoints:
    points = vtk.vtkPoints()
    points.SetDataTypeToDouble()  # keep the report's precision
    for p in lps_to_ras(np.asarray(array_lps, float).reshape(-1, 3)):
        points.InsertNextPoint(*p)
    return points


def _static_curve(node, points_lps, color: tuple[float, float, float]) -> None:
    """A locked, linear closed curve without its own area/length measurements or point glyphs."""
    node.SetCurveTypeToLinear()  # the outline is a polygon: no spline rounding
    node.SetControlPointPositionsWorld(_points(points_lps))
    node.SetLocked(True)
    for i in range(node.GetNumberOfMeasurements()):
        node.GetNthMeasurement(i).SetEnabled(False)  # Slicer's soap-bubble "area" is not the window's
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(color)
        display.SetColor(color)
        display.SetPointLabelsVisibility(False)
        display.SetPropertiesLabelVisibility(False)
        display.SetGlyphScale(0.5)
        display.SetFillVisibility(False)


def update_window_nodes(report: Mapping, scene, *, table_node=None) -> WindowNodes:
    """Show a report's window, triangle, plane and path as markups, and its numbers in a table.

    Nodes are found by :data:`ROLE_ATTRIBUTE` and updated in place, so a new measurement (slider,
    search) replaces the previous one's geometry.
    """
    m = displayed_measurement(report)
    outlines = m["outlines_lps_mm"] or []
    curves = _role_nodes(scene, "vtkMRMLMarkupsClosedCurveNode", "triangle-window")
    for extra in curves[len(outlines):]:
        scene.RemoveNode(extra)
    curves = curves[:len(outlines)]
    for i, outline in enumerate(outlines):
        if i >= len(curves):
            curves.append(_role_node(scene, "vtkMRMLMarkupsClosedCurveNode", f"triangle-window-{i:03d}", "Free window"))
        _static_curve(curves[i], outline, (0.2, 1.0, 0.2))

    triangle = None
    old = _role_nodes(scene, "vtkMRMLMarkupsClosedCurveNode", "triangle-projected")
    if m.get("triangle_projected_lps_mm"):
        triangle = old[0] if old else _role_node(scene, "vtkMRMLMarkupsClosedCurveNode", "triangle-projected", "Triangle (projected)")
        _static_curve(triangle, m["triangle_projected_lps_mm"], (1.0, 0.8, 0.1))
    else:
        for node in old:
            scene.RemoveNode(node)

    plane = _role_node(scene, "vtkMRMLMarkupsPlaneNode", "triangle-plane", "Window plane")
    _update_plane(plane, m, outlines)
    path = _role_node(scene, "vtkMRMLMarkupsLineNode", "triangle-path", "Needle path")
    _update_path(path, report, m)
    table = update_measurement_table(report, scene, table_node)
    return WindowNodes(curves, triangle, plane, path, table)


def _update_plane(plane, m: Mapping, outlines) -> None:
    view = m["view"]
    u, v, d = (lps_to_ras(view[k]) for k in ("image_u_lps", "image_v_lps", "direction_lps"))
    origin = lps_to_ras(m["plane_origin_lps_mm"])
    pts = [lps_to_ras(np.asarray(o, float)) for o in outlines] + (
        [lps_to_ras(np.asarray(m["triangle_projected_lps_mm"], float))] if m.get("triangle_projected_lps_mm") else [])
    extent = 20.0
    if pts:
        rel = np.concatenate(pts) - origin
        extent = max(10.0, 2.2 * float(np.abs(np.stack([rel @ u, rel @ v])).max()))
    plane.SetLocked(True)
    plane.SetSizeMode(plane.SizeModeAbsolute)
    plane.SetCenterWorld(*origin)
    plane.SetAxesWorld(-u, v, d)  # right-handed (u x v = -d); normal = the line of sight
    plane.SetSizeWorld(extent, extent)
    display = plane.GetDisplayNode()
    if display is not None:
        display.SetOpacity(0.25)
        display.SetPropertiesLabelVisibility(False)
        display.SetHandlesInteractive(False)


def _update_path(line, report: Mapping, m: Mapping) -> None:
    trajectory = report.get("trajectory")
    target = m.get("target_lps_mm") or m.get("inscribed_centre_lps_mm") or m["plane_origin_lps_mm"]
    entry = trajectory["path"].get("skin_entry_lps_mm") if trajectory else None
    if entry is not None:
        target = trajectory["path"]["target_lps_mm"]  # the path E -> T the clearances were measured on
    d = np.asarray(m["view"]["direction_lps"], float)
    if entry is None:
        entry = np.asarray(target, float) - VIEW_AXIS_LENGTH_MM * d  # along the view, entry unknown
        line.SetName("View axis (skin entry not computed)")
    else:
        line.SetName("Needle path (skin entry to target)")
    line.SetControlPointPositionsWorld(_points([entry, target]))
    line.SetNthControlPointLabel(0, "entry")
    line.SetNthControlPointLabel(1, "target")
    line.SetLocked(True)


def apply_camera(camera_node, view_node, camera: CameraParameters) -> None:
    """Point a 3D view's camera along the view, orthographic (areas must not depend on depth)."""
    if view_node is not None:
        view_node.SetRenderMode(view_node.Orthographic)
    camera_node.SetParallelProjection(True)
    camera_node.SetFocalPoint(*camera.focal_point_ras)
    camera_node.SetPosition(*camera.position_ras)
    camera_node.SetViewUp(*camera.view_up_ras)
    camera_node.SetParallelScale(camera.parallel_scale_mm)
    camera_node.ResetClippingRange()
