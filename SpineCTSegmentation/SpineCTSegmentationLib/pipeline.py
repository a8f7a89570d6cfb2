"""One segmentation run: volume node -> temporary file -> backend -> segments.

:class:`SegmentationJob` runs one ``PythonSlicer -m spinect segment`` process;
:class:`WorkerSegmentationJob` sends the same :class:`spinect.requests.SegmentRequest` to the
module's long-lived ``spinect serve`` worker (models stay loaded between runs). Both have no Qt:
the module's widget polls them from a ``QTimer``; scripts and tests call ``wait``. Temporary
files (the CT written for the backend, the label maps it writes, partial files of an
interrupted write) live in a private folder that ``cleanup`` removes, whatever the outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

from SpineCTSegmentationLib.mrml_io import (
    ExistingSegmentsError,
    conflicting_segment_ids,
    import_labelmap_segments,
    read_labelmap,
    write_volume,
)
from SpineCTSegmentationLib.options import Device, ExistingSegments
from SpineCTSegmentationLib.terminology import LEVEL_SEGMENTS, SEGMENTS
from SpineCTSegmentationLib.process import BackendProcess, Progress, ProcessEvent, backend_environment, build_segment_command

__all__ = ["BACKEND_DIR", "SegmentationJob", "WorkerSegmentationJob", "BackendFailed"]

#: Folder holding the ``spinect`` package (the module folder: ``SpineCTSegmentation/spinect``).
BACKEND_DIR = Path(__file__).resolve().parents[1]


class BackendFailed(RuntimeError):
    """The backend exited with an error (message: the CLI's one-line error, if any)."""


class SegmentationJob:
    """Segment one volume node with the backend CLI, without blocking the caller.

    Args:
        volume_node: the CT (``vtkMRMLScalarVolumeNode``, HU).
        python_executable: ``PythonSlicer`` in Slicer.
        base_env: environment of the child (Slicer's startup environment).
        device: where the network runs; ``CPU`` also hides GPUs from the child.
        model_path: user's model file, ``None`` for the backend's default model.
        smoothing_mm: median smoothing kernel in mm (``None``: the model's default).
        work_dir: parent of the private temporary folder (default: the system temp folder).
        backend_dir: folder containing the ``spinect`` package.
        uncertainty: flip test-time augmentation with the uncertainty map and review list
            (``--tta --uncertainty U --review R.json``); :meth:`load_uncertainty` reads them.
        keep_islands: keep isolated false-positive islands (``--keep-islands``).
        whole_volume: run every window in the body, not only near bone (``--whole-volume``).
        levels: also label vertebral levels (``--levels``; needs a level model): :meth:`finish`
            adds segments ``L1`` ... ``L5``, ``sacrum`` beside ``bone`` and ``nerve``.
        mirror: mirroring test-time augmentation (``--mirror``: auto, none, lr, lr-ap; auto = lr on
            a GPU, none on the CPU).
        levels_by: ``--levels-by`` (auto, counting, model; see ``spinect segment --help``).
    """

    def __init__(
        self,
        volume_node,
        *,
        python_executable: str,
        base_env: Mapping[str, str],
        device: Device = Device.AUTO,
        model_path: str | os.PathLike | None = None,
        smoothing_mm: float | None = None,
        work_dir: str | os.PathLike | None = None,
        backend_dir: str | os.PathLike = BACKEND_DIR,
        uncertainty: bool = False,
        keep_islands: bool = False,
        whole_volume: bool = False,
        levels: bool = False,
        mirror: str = "auto",
        levels_by: str = "auto",
    ):
        self._prepare(volume_node, model_path=model_path, work_dir=work_dir, uncertainty=uncertainty, levels=levels)
        command = build_segment_command(
            python_executable, self.input_path, self.output_path,
            model_path=model_path, device=device.value, smoothing_mm=smoothing_mm,
            tta=uncertainty, uncertainty_path=self.uncertainty_path, review_path=self.review_path,
            keep_islands=keep_islands, whole_volume=whole_volume, levels=levels, mirror=mirror,
            levels_by=levels_by,
        )
        env = backend_environment(base_env, backend_dir=backend_dir, device=device.value)
        self.process = BackendProcess(command, env=env, cwd=str(self.temp_dir))
        self.command = self.process.command

    def _prepare(self, volume_node, *, model_path, work_dir, uncertainty: bool, levels: bool) -> None:
        """Check the inputs; make the private folder and name the files in it."""
        if volume_node is None or volume_node.GetImageData() is None:
            raise ValueError("select a CT volume that has image data")
        if model_path is not None and not Path(model_path).is_file():
            raise ValueError(f"model file {model_path} does not exist; choose a .pt model file or clear the field")
        self.volume_node = volume_node
        self.temp_dir = Path(tempfile.mkdtemp(prefix="SpineCTSegmentation-", dir=work_dir))
        self.input_path = self.temp_dir / "input.nrrd"
        self.output_path = self.temp_dir / "labels.nrrd"
        self.uncertainty_path = self.temp_dir / "uncertainty.nii.gz" if uncertainty else None
        self.review_path = self.temp_dir / "review.json" if uncertainty else None
        # the backend writes a label map's level map beside it (spinect.io.writing.levels_output_path)
        self.levels_path = self.temp_dir / "labels_levels.nrrd" if levels else None
        self.progress = Progress("read", 0.0, "")

    def start(self) -> None:
        """Write the volume to the temporary folder and start the backend."""
        try:
            write_volume(self.volume_node, self.input_path)
            self.process.start()
        except BaseException:
            self.cleanup()
            raise

    def poll(self) -> list[ProcessEvent]:
        """New output since the last call; updates :attr:`progress`."""
        events = self.process.poll()
        for event in events:
            if event.progress is not None:
                self.progress = event.progress
        return events

    def wait(self, timeout_s: float | None = None, *, on_event: Callable[[ProcessEvent], None] | None = None) -> int:
        """Block until the backend ends; returns its exit code."""
        for event in self.process.wait(timeout_s):
            if event.progress is not None:
                self.progress = event.progress
            if on_event is not None:
                on_event(event)
        return self.process.returncode

    @property
    def running(self) -> bool:
        return self.process.running

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` stopped the run."""
        return self.process.cancelled

    @property
    def returncode(self) -> int | None:
        """0 when the backend succeeded; None while it runs (or before it started)."""
        return self.process.returncode

    def _failure(self) -> str:
        return self.process.error_line or f"the backend exited with code {self.process.returncode}; see the log"

    @property
    def succeeded(self) -> bool:
        return not self.running and not self.cancelled and self.returncode == 0

    def cancel(self) -> None:
        """Kill the backend and its children (temporary files stay until :meth:`cleanup`)."""
        self.process.cancel()

    def finish(self, segmentation_node=None, *, existing: ExistingSegments = ExistingSegments.ASK):
        """Load the result into fixed ``bone``/``nerve`` segments (see ``import_labelmap_segments``).

        Returns:
            The segmentation node written to.

        Raises:
            BackendFailed: the backend failed or was cancelled.
            ExistingSegmentsError: conflicting segments and ``existing`` is ``ASK``.
        """
        if self.running:
            raise RuntimeError("the backend is still running; wait for it or cancel it first")
        if not self.succeeded:
            if self.cancelled:
                raise BackendFailed("segmentation was cancelled")
            raise BackendFailed(self._failure())
        scene = self.volume_node.GetScene()
        # Decide on conflicts once for every segment this run writes (levels included), before
        # anything is written: a user's own L1 ... segments are never replaced unasked.
        specs = SEGMENTS + (LEVEL_SEGMENTS if self.levels_path is not None else ())
        target = segmentation_node
        conflicts = conflicting_segment_ids(target, specs) if target is not None else []
        if conflicts and existing == ExistingSegments.ASK:
            raise ExistingSegmentsError(target.GetName(), conflicts)
        if conflicts and existing == ExistingSegments.NEW_NODE:
            target = None
        labelmap = read_labelmap(self.output_path, scene)
        try:
            node = import_labelmap_segments(
                labelmap, target, reference_volume=self.volume_node, existing=ExistingSegments.REPLACE,
                closed_surfaces=self.levels_path is None,
            )
        finally:
            scene.RemoveNode(labelmap)
        if self.levels_path is None:
            return node
        levels = read_labelmap(self.levels_path, scene, name="spinect levels")
        try:
            return import_labelmap_segments(levels, node, reference_volume=self.volume_node,
                                            existing=ExistingSegments.REPLACE, specs=LEVEL_SEGMENTS)
        finally:
            scene.RemoveNode(levels)

    def load_uncertainty(self, *, name: str | None = None):
        """Load the uncertainty map (colour overlay in the slice views) and the review table.

        Returns:
            (scalar volume node, table node), or (None, None) if the run had no uncertainty.

        Raises:
            BackendFailed: the backend has not succeeded.
        """
        if self.uncertainty_path is None:
            return None, None
        if not self.succeeded:
            raise BackendFailed("no uncertainty map: the segmentation did not finish")
        from SpineCTSegmentationLib.uncertainty import read_review, read_scalar_volume, review_table, show_uncertainty_overlay

        scene = self.volume_node.GetScene()
        base = name or self.volume_node.GetName()
        volume = read_scalar_volume(self.uncertainty_path, scene, name=f"{base} uncertainty")
        show_uncertainty_overlay(volume)
        table = review_table(read_review(self.review_path), scene, name=f"{base} uncertain regions")
        return volume, table

    def cleanup(self) -> None:
        """Stop the backend if needed and remove the temporary folder."""
        if self.running:
            self.cancel()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class WorkerSegmentationJob(SegmentationJob):
    """:class:`SegmentationJob` on the module's ``spinect serve`` worker (one ``segment`` request).

    The same files, options (one :class:`spinect.requests.SegmentRequest`, the one the command
    line is made from), outputs, progress, :meth:`finish` (never-overwrite policy) and
    :meth:`load_uncertainty`. The worker keeps the loaded network, so the next run on the same
    model file and device skips loading it. :meth:`cancel` kills the worker's process group (a
    running network cannot be stopped otherwise at once); the next request starts a fresh
    worker, and :meth:`cleanup` removes every file of the run.

    Args:
        client: the segmentation worker (:class:`SpineCTSegmentationLib.worker.WorkerClient`;
            its environment must allow ``device``: a worker started for ``cpu`` sees no GPU).
        volume_node, device, model_path, smoothing_mm, work_dir, uncertainty, keep_islands,
        whole_volume, levels, mirror, levels_by: as :class:`SegmentationJob`.
    """

    def __init__(
        self,
        client,
        volume_node,
        *,
        device: Device = Device.AUTO,
        model_path: str | os.PathLike | None = None,
        smoothing_mm: float | None = None,
        work_dir: str | os.PathLike | None = None,
        uncertainty: bool = False,
        keep_islands: bool = False,
        whole_volume: bool = False,
        levels: bool = False,
        mirror: str = "auto",
        levels_by: str = "auto",
    ):
        from spinect.requests import SegmentRequest  # standard library only: light in Slicer's process

        self._prepare(volume_node, model_path=model_path, work_dir=work_dir, uncertainty=uncertainty, levels=levels)
        try:
            request = SegmentRequest(
                input=self.input_path, output=self.output_path, model=model_path, device=device.value,
                smoothing_mm=None if smoothing_mm is None else float(smoothing_mm), tta=uncertainty,
                uncertainty_output=self.uncertainty_path, review_output=self.review_path, keep_islands=keep_islands,
                whole_volume=whole_volume, levels=levels, mirror=mirror, levels_by=levels_by)
        except BaseException:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            raise
        self.client = client
        self.args = request.to_dict()
        self.command = ["spinect serve:", "segment", json.dumps(self.args)]
        self.request = None  # the WorkerRequest, once sent
        self.result: dict | None = None  # the worker's answer (timings, islands removed, settings, ...)
        self._cancelled = False
        self._reported = False
        self._log_mark = 0

    def start(self) -> None:
        """Start the worker if needed, write the volume and send the request.

        Raises:
            WorkerUnavailable: the worker could not be started (nothing was written; the private
                folder is removed).
        """
        try:
            self.client.start()  # returns at once when it already runs
            write_volume(self.volume_node, self.input_path)
            _, self._log_mark = self.client.log_since(0)
            self.request = self.client.request("segment", self.args)
        except BaseException:
            self.cleanup()
            raise

    @property
    def running(self) -> bool:
        return self.request is not None and not self.request.done

    @property
    def cancelled(self) -> bool:
        return self._cancelled or (self.request is not None and self.request.cancelled)

    @property
    def returncode(self) -> int | None:
        if self.request is None or not self.request.done:
            return None
        return 0 if self.request.ok else 1

    def _failure(self) -> str:
        error = self.request.error if self.request is not None else None
        return f"spinect segment: error: {error}" if error else "the backend worker failed; see the log"

    def poll(self) -> list[ProcessEvent]:
        """Progress and log lines that arrived since the last call (never blocks)."""
        self.client.poll()
        request = self.request
        if request is None:
            return []
        lines, self._log_mark = self.client.log_since(self._log_mark)  # the backend's log (warnings, ...)
        events = [ProcessEvent(line) for line in lines] + request.events
        request.events = []
        for event in events:
            if event.progress is not None:
                self.progress = event.progress
        if request.done and not self._reported:
            self._reported = True
            if request.ok:
                self.result = dict(request.result or {})
                timings = self.result.get("timings_s") or {}
                total = sum(v for v in timings.values() if isinstance(v, (int, float)))
                events.append(ProcessEvent(f"spinect serve: segment finished in {total:.1f} s "
                                           f"(device {self.result.get('device')}, models loaded: "
                                           f"{self.result.get('models_cached')})"))
            elif not self.cancelled:
                events.append(ProcessEvent(self._failure()))
        return events

    def wait(self, timeout_s: float | None = None, *, on_event: Callable[[ProcessEvent], None] | None = None) -> int:
        """Block until the worker answers; returns 0 on success, 1 otherwise."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
            if not self.running:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not finish the segmentation within {timeout_s} s")
            time.sleep(0.05)
        for event in self.poll():
            if on_event is not None:
                on_event(event)
        return self.returncode

    def cancel(self) -> None:
        """Kill the worker's process group (it is started again by the next request)."""
        if self.running:
            self._cancelled = True
            self.client.kill()
