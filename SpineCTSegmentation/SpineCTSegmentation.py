"""SpineCTSegmentation: lumbosacral bone and nerve segmentation of CT (SPINECT 3D U-Net).

Module, parameter node, widget, logic and test. The widget only wires the GUI to the logic;
the logic takes MRML nodes and returns MRML nodes. Inference and triangle measurements run in
``PythonSlicer`` subprocesses: two long-lived ``spinect serve`` workers (one for segmentation,
one for measurements; ``SpineCTSegmentationLib/backend.py``), or one ``spinect segment`` /
``spinect triangles`` process per request if a worker cannot start. So torch, MONAI and
scikit-image are never imported into Slicer. The subprocess runners, file I/O, terminology,
triangle display and uncertainty display live in ``SpineCTSegmentationLib``.
"""

import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SpineCTSegmentationLib import dependencies
from SpineCTSegmentationLib.mrml_io import conflicting_segment_ids
from SpineCTSegmentationLib.options import DEFAULT_SMOOTHING_MM, Device, ExistingSegments, Level, Side, TriangleMode
from SpineCTSegmentationLib.backend import BackendRunner
from SpineCTSegmentationLib.terminology import LEVEL_SEGMENTS, SEGMENTS
from SpineCTSegmentationLib.triangles import (
    REMEASURE_DELAY_S,
    LiveMeasureScheduler,
    TriangleInputs,
    TriangleState,
    apply_camera,
    control_points_ras,
    placement_plan,
    readout_html,
    update_measurement_table,
    update_window_nodes,
    write_table_csv,
)
from SpineCTSegmentationLib.uncertainty import review_row_centroid_ras
from SpineCTSegmentationLib.view import camera_for_view, lps_to_ras

#
# SpineCTSegmentation
#


class SpineCTSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Spine CT Segmentation")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SpineCTSegmentation developers"]
        self.parent.helpText = _(
            "Segments lumbosacral bone and nerves on CT with the SPINECT 3D U-Net. Pick the CT, click "
            "Segment, then correct the 'bone' and 'nerve' segments with the Segment Editor. "
            'See the <a href="https://github.com/spinect/SpineCTSegmentation#readme">documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "Based on SPINECT (3D U-Net segmentation of lumbosacral bone and nerves on CT). "
            "Inference uses PyTorch and MONAI in a separate process."
        )


#
# SpineCTSegmentationParameterNode
#


@parameterNodeWrapper
class SpineCTSegmentationParameterNode:
    """GUI state, saved with the scene.

    inputVolume - the CT (HU).
    outputSegmentation - where segments go; none = a new segmentation node.
    device - where the network runs.
    modelPath - a user's model file; empty = the default model.
    smoothingMm - median smoothing kernel (mm); 0 = off.
    existingSegments - what to do when the output already has bone/nerve segments.
    uncertainty - flip test-time augmentation with an uncertainty map and review list.
    keepIslands - keep isolated false-positive islands (removed and reported by default).
    wholeVolume - run the network on every window in the body, not only within 30 mm of bone.
    mirrorOnCpu - mirror every window left-right on the CPU too (on a GPU always): slower, more accurate.
    vertebralLevels - also label L1-L5 and sacrum (a level model, else counted up from the sacrum).
    levelsFromLastRib - with vertebralLevels, count down from the last rib too when the sacrum is not in view.
    trainingFolder, caseId - where "Export for training" writes.
    triangleLevel, triangleSide - the Kambin triangle measured.
    structuresVolume - optional level/structure map (automatic mode and endplate frame).
    trianglePoints - the point list A, B, C (RAS).
    thetaDeg, phiDeg - the view: obliquity and cranio-caudal tilt relative to the endplate.
    triangleMode - how the window is bounded: "points", "seed", "auto"; empty before the first choice.
    triangleReport - the last measurement's JSON report (the readout's source); empty when none.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    device: Device = Device.AUTO
    modelPath: pathlib.Path = pathlib.Path()
    smoothingMm: Annotated[float, WithinRange(0.0, 5.0)] = DEFAULT_SMOOTHING_MM
    existingSegments: ExistingSegments = ExistingSegments.ASK
    uncertainty: bool = False
    keepIslands: bool = False
    wholeVolume: bool = False
    mirrorOnCpu: bool = False
    vertebralLevels: bool = False
    levelsFromLastRib: bool = False
    trainingFolder: pathlib.Path = pathlib.Path()
    caseId: str = ""
    triangleLevel: Level = Level.L5S1
    triangleSide: Side = Side.LEFT
    structuresVolume: vtkMRMLScalarVolumeNode
    trianglePoints: vtkMRMLMarkupsFiducialNode
    thetaDeg: Annotated[float, WithinRange(0.0, 80.0)] = 0.0
    phiDeg: Annotated[float, WithinRange(-40.0, 40.0)] = 0.0
    triangleMode: str = ""
    triangleReport: str = ""


def modelPathOrNone(path: pathlib.Path) -> Optional[pathlib.Path]:
    """The user's model file, or None when the field is empty (default model)."""
    return None if str(path) in ("", ".") else path


#
# SpineCTSegmentationWidget
#


class SpineCTSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_INTERVAL_MS = 200
    REMEASURE_DELAY_MS = int(REMEASURE_DELAY_S * 1000)

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._jobOutput = None
        self._jobExisting = ExistingSegments.ASK
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPollJob)
        # Triangles: one backend run at a time; point drags and slider moves re-measure after a
        # pause (LiveMeasureScheduler decides; the QTimers only wake it up). The mode and the
        # last report live in the parameter node (TriangleState reads and writes them).
        self._triangleJob = None
        self._triangleState = TriangleState()
        self._triangleTable = None
        self._liveScheduler = LiveMeasureScheduler()
        self._observedPointList = None
        self._placingNode = None
        self._placingCount = 0
        self._triangleTimer = qt.QTimer()
        self._triangleTimer.setInterval(self.POLL_INTERVAL_MS)
        self._triangleTimer.connect("timeout()", self.onPollTriangles)
        self._remeasureTimer = qt.QTimer()
        self._remeasureTimer.setSingleShot(True)
        self._remeasureTimer.setInterval(self.REMEASURE_DELAY_MS)
        self._remeasureTimer.connect("timeout()", self.onRemeasure)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SpineCTSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SpineCTSegmentationLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.progressBar.setVisible(False)
        self.ui.placePointsButton.connect("clicked(bool)", self.onPlacePoints)
        self.ui.seedButton.connect("clicked(bool)", self.onPlaceSeed)
        self.ui.autoButton.connect("clicked(bool)", self.onAuto)
        self.ui.squareEndplateButton.connect("clicked(bool)", self.onSquareEndplate)
        self.ui.optimizeButton.connect("clicked(bool)", self.onOptimize)
        self.ui.exportTableButton.connect("clicked(bool)", self.onExportTable)
        self.ui.reportButton.connect("clicked(bool)", self.onWriteReport)
        self.ui.thetaSliderWidget.connect("valueChanged(double)", self.onViewAngleChanged)
        self.ui.phiSliderWidget.connect("valueChanged(double)", self.onViewAngleChanged)
        reviewView = self.ui.reviewTableView  # a QTableView: Qt's connect/selectionModel are inherited
        reviewView.setMRMLScene(slicer.mrmlScene)
        reviewView.connect("selectionChanged()", self.onReviewSelection)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        self._triangleTimer.stop()
        self._remeasureTimer.stop()
        if self._job is not None:
            self._job.cleanup()
            self._job = None
        if self._triangleJob is not None:
            self._triangleJob.cleanup()
            self._triangleJob = None
        if self.logic is not None:
            self.logic.cleanupTriangles()
            self.logic.stopWorkers()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        # The nodes of a running job are about to go: stop it and drop its result.
        self._timer.stop()
        self._triangleTimer.stop()
        self._remeasureTimer.stop()
        if self._job is not None:
            self._job.cleanup()
            self._job = None
            self.setStatus(_("Cancelled: the scene was closed."))
            self.ui.progressBar.setVisible(False)
        if self._triangleJob is not None:
            self._triangleJob.cleanup()
            self._triangleJob = None
        self.stopPlacing()
        self.observePointList(None)
        self._liveScheduler.finished()
        self._liveScheduler.reset()
        self.logic.cleanupTriangles()
        self._triangleTable = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self.restoreTriangles()
        self.updateButtons()

    def triangleMode(self):
        """The triangle mode stored in the parameter node (None before the first choice)."""
        return self._triangleState.mode(self._parameterNode)

    def setTriangleMode(self, mode) -> None:
        self._triangleState.set_mode(self._parameterNode, mode)

    def triangleReport(self):
        """The last measurement's report, from the parameter node (None when there is none)."""
        return self._triangleState.report(self._parameterNode)

    def setTriangleReport(self, report) -> None:
        self._triangleState.set_report(self._parameterNode, report)

    def modePointList(self, mode):
        """The existing point list that ``mode`` measures (None for auto, or when there is none)."""
        if mode == TriangleMode.POINTS:
            return self._parameterNode.trianglePoints if self._parameterNode else None
        if mode == TriangleMode.SEED:
            return slicer.mrmlScene.GetFirstNode("Kambin seed", "vtkMRMLMarkupsFiducialNode")
        return None

    def restoreTriangles(self) -> None:
        """Show the parameter node's triangle state (after a module reload or reopening a saved
        scene): its readout, and drags of its mode's points re-measure. Not while a measurement
        runs: its end shows the new state."""
        if self._triangleJob is not None:
            return
        self._triangleTable = None
        node = self.modePointList(self.triangleMode()) if self._parameterNode else None
        self.observePointList(node)
        self.ui.trianglesReadoutLabel.text = self._triangleState.restore(self._parameterNode, self._liveScheduler, node)

    def updateButtons(self, caller=None, event=None) -> None:
        running = self._job is not None
        params = self._parameterNode
        hasInput = bool(params and params.inputVolume)
        self.ui.segmentButton.enabled = hasInput and not running
        self.ui.segmentButton.toolTip = _("Segment bone and nerves") if hasInput else _("Select the input CT volume")
        self.ui.cancelButton.enabled = running
        canExport = bool(params and params.inputVolume and params.outputSegmentation and params.caseId)
        self.ui.exportButton.enabled = canExport and not running
        self.ui.exportButton.toolTip = (
            _("Write the CT and the bone/nerve segments as a training case")
            if canExport else _("Select the CT, the segmentation, a folder and a case ID")
        )
        canMeasure = bool(params and params.inputVolume and params.outputSegmentation) and not running
        for button in (self.ui.placePointsButton, self.ui.seedButton):
            button.enabled = canMeasure
        self.ui.autoButton.enabled = canMeasure and bool(params and params.structuresVolume)
        hasReport = self.triangleReport() is not None
        self.ui.optimizeButton.enabled = canMeasure and self.triangleMode() is not None
        self.ui.squareEndplateButton.enabled = hasReport
        self.ui.exportTableButton.enabled = hasReport
        self.ui.reportButton.enabled = self._parameterNode is not None and self._parameterNode.outputSegmentation is not None

    # Segmentation

    def onSegmentButton(self) -> None:
        params = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start segmentation."), waitCursor=True):
            existing = self.chooseExistingSegmentsPolicy(params.outputSegmentation, params.existingSegments)
            if existing is None:
                return
            if not self.logic.ensureDependencies(confirm=slicer.util.confirmOkCancelDisplay):
                self.setStatus(_("Python packages were not installed; nothing was done."))
                return
            self.ui.logTextEdit.clear()
            self._jobOutput = params.outputSegmentation
            self._jobExisting = existing
            self._job = self.logic.startSegmentation(
                params.inputVolume, device=params.device,
                modelPath=modelPathOrNone(params.modelPath), smoothingMm=params.smoothingMm,
                uncertainty=params.uncertainty, keepIslands=params.keepIslands, wholeVolume=params.wholeVolume,
                levels=params.vertebralLevels, mirror="lr" if params.mirrorOnCpu else "auto",
                levelsBy="counting" if params.vertebralLevels and params.levelsFromLastRib else "auto",
            )
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.setVisible(True)
            self.setStatus(_("Segmenting..."))
            self._timer.start()
        self.updateButtons()

    def chooseExistingSegmentsPolicy(self, segmentationNode, policy):
        """The policy to use, asking the user if needed; None if the user cancelled."""
        conflicts = conflicting_segment_ids(segmentationNode)
        if not conflicts or policy != ExistingSegments.ASK:
            return policy
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle(_("Segments already exist"))
        box.setText(
            _("Segmentation '{name}' already has segment(s) {ids}, possibly with your corrections.").format(
                name=segmentationNode.GetName(), ids=", ".join(conflicts))
        )
        box.setInformativeText(_("Other segments are never changed. What should happen to bone and nerve?"))
        replaceButton = box.addButton(_("Replace bone and nerve"), qt.QMessageBox.DestructiveRole)
        newButton = box.addButton(_("Write to a new segmentation"), qt.QMessageBox.AcceptRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.setDefaultButton(newButton)
        box.exec_()
        if box.clickedButton() == replaceButton:
            return ExistingSegments.REPLACE
        if box.clickedButton() == newButton:
            return ExistingSegments.NEW_NODE
        return None

    def onPollJob(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        for event in job.poll():
            self.ui.logTextEdit.appendPlainText(event.line)
            if event.progress is not None:
                self.ui.progressBar.setValue(int(round(100 * event.progress.fraction)))
                self.ui.statusLabel.text = f"{event.progress.stage}: {event.progress.message}"
        if job.running:
            return
        self._timer.stop()
        self._job = None
        finished = False
        try:
            with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
                if job.cancelled:
                    self.setStatus(_("Cancelled; nothing was changed."))
                    finished = True
                    return
                segmentationNode = self.logic.finishSegmentation(job, self._jobOutput, existing=self._jobExisting)
                self._parameterNode.outputSegmentation = segmentationNode
                self.logic.showResult(self._parameterNode.inputVolume, segmentationNode)
                _, reviewTable = self.logic.loadUncertainty(job)
                if reviewTable is not None:
                    self.ui.reviewTableView.setMRMLTableNode(reviewTable)
                    self.ui.uncertaintyCollapsibleButton.collapsed = False
                self.setStatus(_("Done: segments 'bone' and 'nerve' in '{name}'.").format(name=segmentationNode.GetName()))
                finished = True
        finally:
            job.cleanup()
            if not finished:
                self.setStatus(_("Segmentation failed; see the log."))
            self.ui.progressBar.setVisible(False)
            self.updateButtons()

    def onCancelButton(self) -> None:
        if self._job is not None:
            self.setStatus(_("Cancelling..."))
            self._job.cancel()  # onPollJob sees the exit, reports and cleans up

    def setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text
        logging.info(text)

    # Uncertainty review

    def onReviewSelection(self) -> None:
        reviewView = self.ui.reviewTableView
        tableNode = reviewView.mrmlTableNode()
        indexes = reviewView.selectionModel().selectedIndexes()
        if tableNode is None or not indexes:
            return
        row = reviewView.sortFilterProxyModel().mapToSource(indexes[0]).row()  # view may be sorted
        with slicer.util.tryWithErrorDisplay(_("Could not jump to the region."), waitCursor=False):
            self.logic.jumpToReviewRegion(tableNode, row)

    # Triangles

    def trianglePointList(self, name: str, role: str):
        """The point list of the parameter node (A, B, C) or the seed list; created if missing."""
        params = self._parameterNode
        if role == "points" and params.trianglePoints is not None:
            return params.trianglePoints
        node = slicer.mrmlScene.GetFirstNode(name, "vtkMRMLMarkupsFiducialNode")
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
            node.CreateDefaultDisplayNodes()
        if role == "points":
            params.trianglePoints = node
        return node

    def startPlacing(self, node, count: int, mode: TriangleMode) -> None:
        """Place ``count`` points in ``node`` (3D view clicks snap to the visible surface).

        Points already in the list are kept (a list with some points gets the missing ones
        appended); a complete list is replaced only when the user says so, else it is measured
        as it is (dragged points stay where they were dragged).
        """
        self.stopPlacing()
        defined = node.GetNumberOfDefinedControlPoints()
        replace = defined >= count and slicer.util.confirmYesNoDisplay(
            _("'{name}' already has {defined} point(s). Replace them with {count} new click(s)?\n\n"
              "No keeps them: drag them in the 3D view to move them.").format(name=node.GetName(), defined=defined, count=count))
        plan = placement_plan(defined, count, replace=replace)
        self.setTriangleMode(mode)
        self._liveScheduler.reset(required_points=count)
        if plan.remove_existing:
            node.RemoveAllControlPoints()
        if plan.to_place == 0:
            self.setStatus(plan.message)
            if plan.measure_now:
                self.measureTriangles()
            return
        self._placingNode, self._placingCount = node, count
        self._liveScheduler.placing = True
        self.addObserver(node, node.PointPositionDefinedEvent, self.onPointPlaced)
        markupsLogic = slicer.util.getModuleLogic("Markups")
        markupsLogic.SetActiveList(node)
        markupsLogic.StartPlaceMode(True)
        labels = "A (root meets SAP), B (SAP meets endplate), C (root crosses endplate)" if count == 3 else _("one point inside the window")
        self.setStatus(_("Click {count} point(s) on the bone/nerve surfaces in the 3D view: {labels}").format(count=count, labels=labels))

    def stopPlacing(self) -> None:
        self._liveScheduler.placing = False
        if self._placingNode is not None:
            self.removeObserver(self._placingNode, self._placingNode.PointPositionDefinedEvent, self.onPointPlaced)
            self._placingNode = None
            slicer.app.applicationLogic().GetInteractionNode().SwitchToViewTransformMode()

    def observePointList(self, node) -> None:
        """Re-measure when a point of ``node`` (the list being measured) is dragged; None: stop."""
        old = self._observedPointList
        if old is node:
            return
        if old is not None:
            self.removeObserver(old, old.PointModifiedEvent, self.onTrianglePointModified)
            self.removeObserver(old, old.PointRemovedEvent, self.onTrianglePointModified)
        self._observedPointList = node
        if node is not None:
            self.addObserver(node, node.PointModifiedEvent, self.onTrianglePointModified)
            self.addObserver(node, node.PointRemovedEvent, self.onTrianglePointModified)

    def onTrianglePointModified(self, caller, event) -> None:
        """A point was dragged (Slicer sends many events per drag): measure once it rests."""
        if self.triangleMode() not in (TriangleMode.POINTS, TriangleMode.SEED):
            return
        if self._liveScheduler.points_changed(control_points_ras(caller)):
            report = self.triangleReport()
            if report is not None:
                self.ui.trianglesReadoutLabel.text = self.logic.readoutHtml(report, stale=True)
            self._remeasureTimer.start()

    def onPointPlaced(self, caller, event) -> None:
        node = caller
        if self._placingCount == 3:
            for i, label in enumerate("ABC"[: node.GetNumberOfControlPoints()]):
                node.SetNthControlPointLabel(i, label)
        if node.GetNumberOfDefinedControlPoints() >= self._placingCount:
            self.stopPlacing()
            self.measureTriangles()

    def onPlacePoints(self) -> None:
        self.startPlacing(self.trianglePointList("Kambin A-B-C", "points"), 3, TriangleMode.POINTS)

    def onPlaceSeed(self) -> None:
        self.startPlacing(self.trianglePointList("Kambin seed", "seed"), 1, TriangleMode.SEED)

    def onAuto(self) -> None:
        self.stopPlacing()
        self.setTriangleMode(TriangleMode.AUTO)
        self._liveScheduler.reset()
        self.measureTriangles()

    def measureTriangles(self, optimize: bool = False) -> None:
        """Run the backend for the current mode and view (queued if a run is going on)."""
        mode = self.triangleMode()
        if mode is None:
            return
        if self._triangleJob is not None:  # queued (Optimize too), run with the latest points after this one
            if optimize:
                self._liveScheduler.request_optimize()
            else:
                self._liveScheduler.view_changed()
            return
        params = self._parameterNode
        if mode == TriangleMode.POINTS:
            node = self.trianglePointList("Kambin A-B-C", "points")
        elif mode == TriangleMode.SEED:
            node = self.trianglePointList("Kambin seed", "seed")
        else:
            node = None
        self.observePointList(node)
        with slicer.util.tryWithErrorDisplay(_("Could not start the triangle measurement."), waitCursor=True):
            if not self.logic.ensureDependencies(confirm=slicer.util.confirmOkCancelDisplay,
                                                 requirements=dependencies.TRIANGLE_REQUIREMENTS, includeTorch=False):
                self.setStatus(_("Python packages were not installed; nothing was measured."))
                return
            positions = control_points_ras(node) if node is not None else None
            self._triangleJob = self.logic.startTriangles(
                params.outputSegmentation, params.inputVolume, level=params.triangleLevel, side=params.triangleSide,
                mode=mode, pointsNode=node, structuresVolume=params.structuresVolume,
                thetaDeg=params.thetaDeg, phiDeg=params.phiDeg, optimize=optimize,
            )
            self._liveScheduler.started(positions)
            self.setStatus(_("Searching the best view (about 10 s)...") if optimize else _("Measuring..."))
            self._triangleTimer.start()
        self.updateButtons()

    def onPollTriangles(self) -> None:
        job = self._triangleJob
        if job is None:
            self._triangleTimer.stop()
            return
        for event in job.poll():
            self.ui.logTextEdit.appendPlainText(event.line)
            if event.progress is not None:
                self.ui.statusLabel.text = f"{event.progress.stage}: {event.progress.message}"
        if job.running:
            return
        self._triangleTimer.stop()
        self._triangleJob = None
        try:
            with slicer.util.tryWithErrorDisplay(_("Triangle measurement failed."), waitCursor=False):
                report = job.finish()
                self.setTriangleReport(report)  # saved with the scene; the readout's source
                self._triangleTable = self.logic.showTriangles(report).table
                trajectory = report.get("trajectory")
                if trajectory:  # move the sliders to the best view without measuring again
                    params = self._parameterNode
                    wasBlocked = [s.blockSignals(True) for s in (self.ui.thetaSliderWidget, self.ui.phiSliderWidget)]
                    params.thetaDeg, params.phiDeg = trajectory["theta_deg"], trajectory["phi_deg"]
                    for slider, was in zip((self.ui.thetaSliderWidget, self.ui.phiSliderWidget), wasBlocked):
                        slider.blockSignals(was)
                    self.logic.lookAlongView(report, trajectory["theta_deg"], trajectory["phi_deg"])
                else:
                    self.logic.lookAlongView(report, self._parameterNode.thetaDeg, self._parameterNode.phiDeg)
                self.ui.trianglesReadoutLabel.text = self.logic.readoutHtml(report)
                self.setStatus(_("Triangle measured."))
        finally:
            job.cleanup()
            self._liveScheduler.finished()
            self.updateButtons()
            if self._liveScheduler.waiting:  # points moved or Optimize clicked during the run
                self._remeasureTimer.start()

    def onViewAngleChanged(self, value) -> None:
        """Move the camera now; measure again once the slider rests."""
        report = self.triangleReport()
        if report is None:
            return
        # The sliders' values, not the parameter node's: it may be updated after this slot runs.
        theta, phi = self.ui.thetaSliderWidget.value, self.ui.phiSliderWidget.value
        with slicer.util.tryWithErrorDisplay(_("Could not move the 3D view."), waitCursor=False):
            self.logic.lookAlongView(report, theta, phi)
        self.ui.trianglesReadoutLabel.text = self.logic.readoutHtml(report, stale=True)
        self._liveScheduler.view_changed()
        self._remeasureTimer.start()

    def onRemeasure(self) -> None:
        """The quiet time after a drag or slider move passed, or a run ended: start what is due."""
        action = self._liveScheduler.due()
        if action is not None:
            self.measureTriangles(optimize=action == "optimize")
        elif self._liveScheduler.waiting and self._triangleJob is None:
            self._remeasureTimer.start()  # woke up early: wait out the rest of the quiet time

    def onSquareEndplate(self) -> None:
        self._parameterNode.phiDeg = 0.0  # the endplate projects to a line

    def onOptimize(self) -> None:
        self.measureTriangles(optimize=True)  # queued, not dropped, while a measurement runs

    def onExportTable(self) -> None:
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Export triangle measurements"),
                                              "triangle_measurements.csv", _("CSV files (*.csv)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            if self._triangleTable is None:  # restored from the parameter node: the stored report's table
                self._triangleTable = update_measurement_table(self.triangleReport(), slicer.mrmlScene)
            written = self.logic.exportTableCsv(self._triangleTable, path)
            self.setStatus(_("Wrote {path}").format(path=written))

    def onWriteReport(self) -> None:
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Write case report"),
                                              "spinect_report.html", _("HTML pages (*.html)"))
        if not path:
            return
        params = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not write the report."), waitCursor=True):
            report = self.triangleReport()
            measurements = [report] if report is not None else []
            written = self.logic.writeReport(params.outputSegmentation, params.inputVolume, path, measurements=measurements)
            self.setStatus(_("Wrote {path}").format(path=written))

    # Export for training

    def onExportButton(self) -> None:
        params = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Export for training failed."), waitCursor=True):
            manifest = self.logic.exportForTraining(
                params.inputVolume, params.outputSegmentation, params.trainingFolder, params.caseId
            )
            self.setStatus(_("Exported case '{case}' to {path}").format(case=params.caseId, path=manifest))


#
# SpineCTSegmentationLogic
#


class SpineCTSegmentationLogic(ScriptedLoadableModuleLogic):
    """Scripting API: MRML nodes in, MRML nodes out. Needs no widget.

    Example (Slicer Python console)::

        logic = slicer.util.getModuleLogic("SpineCTSegmentation")
        segmentation = logic.segment(slicer.util.getNode("CT"), device=Device.CPU)
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._triangleInputs = None
        # Two long-lived ``spinect serve`` workers, one for segmentation and one for triangle
        # measurements, each started by its first request (BackendRunner); useWorker is False
        # after a worker failed to start: one process per request then.
        self._backend = None
        self._useWorker = True
        self.workerIdleExitS = 600.0

    @property
    def useWorker(self) -> bool:
        """Run requests on the long-lived workers (False: one process per request)."""
        return self._backend.use_worker if self._backend is not None else self._useWorker

    @useWorker.setter
    def useWorker(self, value: bool) -> None:
        self._useWorker = bool(value)
        if self._backend is not None:
            self._backend.use_worker = bool(value)

    def backend(self) -> BackendRunner:
        """Where segmentations and measurements run (created here; its workers start on demand)."""
        if self._backend is None:
            self._backend = BackendRunner(python_executable=self.pythonSlicerExecutable(),
                                          base_env=slicer.util.startupEnvironment(), work_dir=slicer.app.temporaryPath,
                                          idle_exit_s=self.workerIdleExitS, use_worker=self._useWorker)
        return self._backend

    def stopWorkers(self) -> None:
        """Stop both workers (module cleanup, application exit); the next request starts them again."""
        if self._backend is not None:
            self._useWorker = self._backend.use_worker
            self._backend.stop()
            self._backend = None

    def getParameterNode(self):
        return SpineCTSegmentationParameterNode(super().getParameterNode())

    @staticmethod
    def pythonSlicerExecutable() -> str:
        """``PythonSlicer`` (Slicer puts it on PATH), else the one next to Slicer's Python."""
        found = shutil.which("PythonSlicer")
        if found:
            return found
        candidate = os.path.join(os.path.dirname(sys.executable), "PythonSlicer" + (".exe" if os.name == "nt" else ""))
        if os.path.isfile(candidate):
            return candidate
        raise RuntimeError("PythonSlicer executable not found; reinstall Slicer")

    def ensureDependencies(self, confirm=slicer.util.confirmOkCancelDisplay, *, requirements=None,
                           includeTorch: bool = True) -> bool:
        """Install PyTorch, MONAI and the other backend packages after ``confirm(message)``.

        ``requirements``/``includeTorch``: a subset, e.g. ``dependencies.TRIANGLE_REQUIREMENTS``
        without PyTorch for the triangle tool (which never imports torch).
        """
        return dependencies.ensure_dependencies(confirm=confirm, requirements=requirements, include_torch=includeTorch)

    def startSegmentation(self, inputVolume, *, device=Device.AUTO, modelPath=None, smoothingMm=DEFAULT_SMOOTHING_MM,
                          uncertainty=False, keepIslands=False, wholeVolume=False, levels=False, mirror="auto",
                          levelsBy="auto"):
        """Export ``inputVolume`` and start the backend; returns a running job.

        The job runs on the segmentation worker (``WorkerSegmentationJob``: the network stays
        loaded for the next run), or in its own ``spinect segment`` process (``SegmentationJob``)
        if the worker cannot start; both have the same interface and outputs.
        ``uncertainty`` adds flip TTA with an uncertainty map and review list (``loadUncertainty``);
        ``keepIslands`` keeps isolated false-positive islands; ``wholeVolume`` runs every window in
        the body (by default windows more than 30 mm from bone-dense tissue are skipped); ``levels``
        adds segments L1-L5 and sacrum (from a level model, ``modelPath``, else counted up from the
        sacrum: refused when it is not in view); ``mirror`` is the mirroring test-time augmentation
        (auto = left-right on a GPU, none on the CPU; "lr" = left-right everywhere; "none");
        ``levelsBy`` = "counting" counts the levels without a level model, down from the last rib
        too when the sacrum is not in view ("auto": a level model, else up from the sacrum only).
        """
        return self.backend().start_segmentation(
            inputVolume, device=device, model_path=modelPath, smoothing_mm=smoothingMm, uncertainty=uncertainty,
            keep_islands=keepIslands, whole_volume=wholeVolume, levels=levels, mirror=mirror, levels_by=levelsBy,
        )

    def finishSegmentation(self, job, outputSegmentation=None, *, existing=ExistingSegments.ASK):
        """Load the finished job's result into ``bone``/``nerve`` segments; returns the node."""
        segmentationNode = job.finish(outputSegmentation, existing=existing)
        self.placeInSubjectHierarchy(job.volume_node, segmentationNode)
        return segmentationNode

    @staticmethod
    def loadUncertainty(job):
        """After a run with ``uncertainty``: (uncertainty volume overlaid in the slice views, review
        table node); (None, None) otherwise."""
        return job.load_uncertainty()

    @staticmethod
    def jumpToReviewRegion(tableNode, row: int) -> None:
        """Centre the slice views on the centroid of a review table row."""
        r, a, s = review_row_centroid_ras(tableNode, row)
        slicer.util.getModuleLogic("Markups").JumpSlicesToLocation(r, a, s, True)

    def segment(self, inputVolume, outputSegmentation=None, *, device=Device.AUTO, modelPath=None,
                smoothingMm=DEFAULT_SMOOTHING_MM, existing=ExistingSegments.ASK, timeoutS=None, uncertainty=False,
                keepIslands=False, wholeVolume=False, levels=False, mirror="auto", levelsBy="auto"):
        """Blocking segmentation (scripts and tests); returns the segmentation node.

        With ``uncertainty`` the uncertainty map is also loaded as a colour overlay and the review
        list as a table node (named after the CT).
        """
        conflicts = conflicting_segment_ids(outputSegmentation, SEGMENTS + (LEVEL_SEGMENTS if levels else ()))
        if conflicts and existing == ExistingSegments.ASK:
            raise ValueError(f"segments {conflicts} exist; pass existing=ExistingSegments.REPLACE or NEW_NODE")
        job = self.startSegmentation(inputVolume, device=device, modelPath=modelPath, smoothingMm=smoothingMm,
                                     uncertainty=uncertainty, keepIslands=keepIslands, wholeVolume=wholeVolume,
                                     levels=levels, mirror=mirror, levelsBy=levelsBy)
        try:
            start = time.monotonic()
            while job.running:
                for event in job.poll():
                    logging.info(event.line)
                slicer.app.processEvents()
                if timeoutS is not None and time.monotonic() - start > timeoutS:
                    job.cancel()
                    raise TimeoutError(f"segmentation took longer than {timeoutS} s and was cancelled")
                time.sleep(0.1)
            for event in job.poll():
                logging.info(event.line)
            segmentationNode = self.finishSegmentation(job, outputSegmentation, existing=existing)
            self.loadUncertainty(job)
            return segmentationNode
        finally:
            job.cleanup()

    # Triangles

    def startTriangles(self, segmentationNode, ctVolume, *, level=Level.L5S1, side=Side.LEFT, mode=TriangleMode.POINTS,
                       pointsNode=None, structuresVolume=None, thetaDeg=0.0, phiDeg=0.0, optimize=False):
        """Start a triangle measurement on the segmentation; returns the running job.

        The job is one request to the measurement worker (``WorkerTrianglesJob``), or one
        ``spinect triangles`` process (``TrianglesJob``) if the worker cannot start. The label map
        (and level map, CT) files are written once and reused while only the view changes; a
        different segmentation, CT or level map writes them again.
        """
        if mode == TriangleMode.AUTO and structuresVolume is None:
            raise ValueError("automatic mode needs a level/structure map volume")
        points = control_points_ras(pointsNode) if pointsNode is not None and mode != TriangleMode.AUTO else None
        need = 3 if mode == TriangleMode.POINTS else 1
        if mode != TriangleMode.AUTO and points is None:
            raise ValueError(f"{mode.value} mode needs a point list")
        if points is not None and len(points) != need:
            raise ValueError(f"place {need} point(s) in '{pointsNode.GetName()}' first ({len(points)} placed)")
        inputs = self._triangleInputs
        if inputs is None or not inputs.matches(segmentationNode, ctVolume, structuresVolume):
            self.cleanupTriangles()
            inputs = self._triangleInputs = TriangleInputs(
                segmentationNode, ctVolume, structures_volume=structuresVolume, work_dir=slicer.app.temporaryPath)
        return self.backend().start_triangles(
            inputs, level=level.value, side=side.value, points_ras=points if mode == TriangleMode.POINTS else None,
            seed_ras=points[0] if mode == TriangleMode.SEED else None, theta_deg=thetaDeg, phi_deg=phiDeg,
            optimize=optimize)

    def measureTriangles(self, segmentationNode, ctVolume, *, timeoutS=None, **kwargs) -> dict:
        """Blocking measurement (scripts and tests): returns the backend's JSON report and shows it."""
        job = self.startTriangles(segmentationNode, ctVolume, **kwargs)
        try:
            for event in job.wait(timeoutS):
                logging.info(event.line)
            report = job.finish()
        finally:
            job.cleanup()
        self.showTriangles(report)
        return report

    def cleanupTriangles(self) -> None:
        """Remove the triangle input files."""
        if self._triangleInputs is not None:
            self._triangleInputs.cleanup()
            self._triangleInputs = None

    @staticmethod
    def showTriangles(report):
        """Window outlines, projected triangle, plane, path and table of a report; returns the nodes."""
        return update_window_nodes(report, slicer.mrmlScene)

    @staticmethod
    def exportTableCsv(tableNode, path) -> pathlib.Path:
        return write_table_csv(tableNode, path)

    def writeReport(self, segmentationNode, volumeNode, path, *, measurements=(), pdfPath=None) -> pathlib.Path:
        """One HTML page for the case (``spinect report``): segment volumes, the given triangle
        measurements (the backend's JSON reports), provenance and the synthetic-training notice."""
        from SpineCTSegmentationLib.report import write_case_report

        return write_case_report(segmentationNode, volumeNode, path, python_executable=self.pythonSlicerExecutable(),
                                 base_env=slicer.util.startupEnvironment(), measurements=measurements,
                                 pdf_path=pdfPath, work_dir=slicer.app.temporaryPath)

    @staticmethod
    def lookAlongView(report, thetaDeg: float, phiDeg: float, *, parallelScaleMm: float = 40.0) -> None:
        """Turn the first 3D view to look along d(θ, φ) at the target, orthographic, cranial up."""
        from SpineCTSegmentationLib.triangles import displayed_measurement

        m = displayed_measurement(report)
        target = m.get("target_lps_mm") or m["plane_origin_lps_mm"]
        camera = camera_for_view(m["frame"], thetaDeg, phiDeg, m["side"], focal_point_ras=lps_to_ras(target),
                                 parallel_scale_mm=parallelScaleMm)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None or layoutManager.threeDWidget(0) is None:
            return
        view = layoutManager.threeDWidget(0).threeDView()
        apply_camera(view.cameraNode(), view.mrmlViewNode(), camera)

    @staticmethod
    def readoutHtml(report, *, stale: bool = False) -> str:
        """The report's numbers as the readout shows them (always the backend's, never Slicer's curve area)."""
        return readout_html(report, stale=stale)

    @staticmethod
    def placeInSubjectHierarchy(volumeNode, segmentationNode) -> None:
        """Put the segmentation in the same study as the CT."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        volumeItem = shNode.GetItemByDataNode(volumeNode)
        segmentationItem = shNode.GetItemByDataNode(segmentationNode)
        if volumeItem and segmentationItem:
            shNode.SetItemParent(segmentationItem, shNode.GetItemParent(volumeItem))

    @staticmethod
    def showResult(volumeNode, segmentationNode) -> None:
        """Show the CT with the segments in slice views and the surfaces in 3D."""
        slicer.util.setSliceViewerLayers(background=volumeNode)
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetVisibility(True)
            displayNode.SetPreferredDisplayRepresentationName3D(
                slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
            )
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None and layoutManager.threeDWidget(0) is not None:
            layoutManager.threeDWidget(0).threeDView().resetFocalPoint()

    @staticmethod
    def exportForTraining(volumeNode, segmentationNode, folder, caseId,
                          confirm=slicer.util.confirmOkCancelDisplay) -> pathlib.Path:
        """Write the CT and its bone/nerve segments as a training case; returns the manifest path."""
        if str(folder) in ("", "."):
            raise ValueError("choose a folder for the training dataset")
        if not dependencies.ensure_dependencies(
            confirm=confirm, requirements=dependencies.EXPORT_REQUIREMENTS, include_torch=False
        ):
            raise RuntimeError("export for training needs the Python package(s) " + ", ".join(dependencies.EXPORT_REQUIREMENTS))
        from SpineCTSegmentationLib.mrml_io import export_for_training

        return export_for_training(volumeNode, segmentationNode, folder, caseId)


#
# SpineCTSegmentationTest
#


class SpineCTSegmentationTest(ScriptedLoadableModuleTest):
    """Runs in Slicer only (Reload and Test, or ``Slicer --testing``); needs PyTorch and MONAI.

    The phantom is made by the backend in a PythonSlicer subprocess, so this process still never
    imports torch.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentPhantom()

    def _makePhantom(self, folder):
        """Write a small phantom CT and a tiny test-only model with the backend; return their paths."""
        import subprocess

        ctPath = os.path.join(folder, "phantom_ct.nii.gz")
        modelPath = os.path.join(folder, "tiny_model.pt")
        code = (
            "import sys, SimpleITK as sitk\n"
            "from spinect.phantom import generate_case\n"
            "from spinect.nets import build_network\n"
            "from spinect.model_file import save_model\n"
            "from spinect.plan import ModelPlan\n"
            "case = generate_case(0, shape_zyx=(32, 64, 64), spacing_zyx_mm=(1.5, 1.0, 1.0))\n"
            "sitk.WriteImage(case.ct, sys.argv[1])\n"
            "plan = ModelPlan(architecture={'name': 'spinect_unet', 'base_width': 4}, training_status='test-only')\n"
            "save_model(sys.argv[2], build_network(base_width=4), plan)\n"
        )
        env = dict(slicer.util.startupEnvironment())
        backendDir = os.path.dirname(os.path.abspath(__file__))
        env["PYTHONPATH"] = os.pathsep.join([backendDir, env.get("PYTHONPATH", "")])
        subprocess.run([SpineCTSegmentationLogic.pythonSlicerExecutable(), "-c", code, ctPath, modelPath],
                       env=env, check=True, capture_output=True, text=True)
        return ctPath, modelPath

    def test_SegmentPhantom(self):
        self.delayDisplay("Installing dependencies if needed")
        logic = SpineCTSegmentationLogic()
        self.assertTrue(logic.ensureDependencies(confirm=lambda message: True))

        folder = slicer.util.tempDirectory("SpineCTSegmentationTest")
        ctPath, modelPath = self._makePhantom(folder)
        volumeNode = slicer.util.loadVolume(ctPath)
        self.delayDisplay("Loaded phantom")

        # A user's segment must survive.
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "annotations")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        userId = segmentationNode.GetSegmentation().AddEmptySegment("my_landmark")

        result = logic.segment(volumeNode, segmentationNode, device=Device.CPU, modelPath=modelPath, timeoutS=300)
        self.assertEqual(result, segmentationNode)
        segmentation = result.GetSegmentation()
        for segmentId in ("bone", "nerve"):
            segment = segmentation.GetSegment(segmentId)
            self.assertIsNotNone(segment)
            self.assertTrue(segment.HasTerminology())
        self.assertIsNotNone(segmentation.GetSegment(userId))
        self.assertTrue(result.GetSegmentation().ContainsRepresentation(
            slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()))

        # Segmenting again must not overwrite without an explicit choice.
        with self.assertRaises(ValueError):
            logic.segment(volumeNode, segmentationNode, device=Device.CPU, modelPath=modelPath)
        newNode = logic.segment(volumeNode, segmentationNode, device=Device.CPU, modelPath=modelPath,
                                existing=ExistingSegments.NEW_NODE, timeoutS=300)
        self.assertNotEqual(newNode, segmentationNode)

        manifest = logic.exportForTraining(volumeNode, segmentationNode, os.path.join(folder, "dataset"), "phantom_000",
                                           confirm=lambda message: True)
        self.assertTrue(os.path.isfile(manifest))
        shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Test passed")
