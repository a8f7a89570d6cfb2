"""SpineCTSegmentation: lumbosacral bone and nerve segmentation of CT (SPINECT 3D U-Net).

Module, parameter node, widget, logic and test. The widget only wires the GUI to the logic;
the logic takes MRML nodes and returns MRML nodes. Inference runs in a ``PythonSlicer``
subprocess (``python -m spinect segment``), so torch and MONAI are never imported into Slicer.
The subprocess runner, file I/O and terminology live in ``SpineCTSegmentationLib``.
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
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
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
from SpineCTSegmentationLib.options import DEFAULT_SMOOTHING_MM, Device, ExistingSegments
from SpineCTSegmentationLib.pipeline import SegmentationJob

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
    trainingFolder, caseId - where "Export for training" writes.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    device: Device = Device.AUTO
    modelPath: pathlib.Path = pathlib.Path()
    smoothingMm: Annotated[float, WithinRange(0.0, 5.0)] = DEFAULT_SMOOTHING_MM
    existingSegments: ExistingSegments = ExistingSegments.ASK
    trainingFolder: pathlib.Path = pathlib.Path()
    caseId: str = ""


def modelPathOrNone(path: pathlib.Path) -> Optional[pathlib.Path]:
    """The user's model file, or None when the field is empty (default model)."""
    return None if str(path) in ("", ".") else path


#
# SpineCTSegmentationWidget
#


class SpineCTSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_INTERVAL_MS = 200

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
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        if self._job is not None:
            self._job.cleanup()
            self._job = None
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
        if self._job is not None:
            self._job.cleanup()
            self._job = None
            self.setStatus(_("Cancelled: the scene was closed."))
            self.ui.progressBar.setVisible(False)
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
        self.updateButtons()

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
                if job.process.cancelled:
                    self.setStatus(_("Cancelled; nothing was changed."))
                    finished = True
                    return
                segmentationNode = self.logic.finishSegmentation(job, self._jobOutput, existing=self._jobExisting)
                self._parameterNode.outputSegmentation = segmentationNode
                self.logic.showResult(self._parameterNode.inputVolume, segmentationNode)
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

    def ensureDependencies(self, confirm=slicer.util.confirmOkCancelDisplay) -> bool:
        """Install PyTorch, MONAI and the other backend packages after ``confirm(message)``."""
        return dependencies.ensure_dependencies(confirm=confirm)

    def startSegmentation(self, inputVolume, *, device=Device.AUTO, modelPath=None, smoothingMm=DEFAULT_SMOOTHING_MM):
        """Export ``inputVolume`` and start the backend; returns a running ``SegmentationJob``."""
        job = SegmentationJob(
            inputVolume, python_executable=self.pythonSlicerExecutable(), base_env=slicer.util.startupEnvironment(),
            device=device, model_path=modelPath, smoothing_mm=smoothingMm, work_dir=slicer.app.temporaryPath,
        )
        logging.info("SpineCTSegmentation: " + " ".join(job.process.command))
        job.start()
        return job

    def finishSegmentation(self, job, outputSegmentation=None, *, existing=ExistingSegments.ASK):
        """Load the finished job's result into ``bone``/``nerve`` segments; returns the node."""
        segmentationNode = job.finish(outputSegmentation, existing=existing)
        self.placeInSubjectHierarchy(job.volume_node, segmentationNode)
        return segmentationNode

    def segment(self, inputVolume, outputSegmentation=None, *, device=Device.AUTO, modelPath=None,
                smoothingMm=DEFAULT_SMOOTHING_MM, existing=ExistingSegments.ASK, timeoutS=None):
        """Blocking segmentation (scripts and tests); returns the segmentation node."""
        conflicts = conflicting_segment_ids(outputSegmentation)
        if conflicts and existing == ExistingSegments.ASK:
            raise ValueError(f"segments {conflicts} exist; pass existing=ExistingSegments.REPLACE or NEW_NODE")
        job = self.startSegmentation(inputVolume, device=device, modelPath=modelPath, smoothingMm=smoothingMm)
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
            return self.finishSegmentation(job, outputSegmentation, existing=existing)
        finally:
            job.cleanup()

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
