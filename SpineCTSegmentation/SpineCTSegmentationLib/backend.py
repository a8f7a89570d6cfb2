"""Where the module's backend work runs (Qt-free): two ``spinect serve`` workers, or one process per request.

:class:`BackendRunner` is what the logic asks for a segmentation or a triangle measurement:

* **Segmentation** goes to the *segmentation worker* (:class:`WorkerSegmentationJob`): it keeps
  the loaded network between runs. It is started for the chosen device class: a worker started
  for ``cpu`` hides the GPUs, so choosing *Auto*/*GPU* after *CPU* (or back) replaces it.
* **Triangle measurements** go to the *measurement worker* (:class:`WorkerTrianglesJob`, always
  CPU): it keeps the triangle session (label map read, distance fields, endplate frame) open.

Two workers, not one, so that a segmentation (minutes on a CPU) never holds up a measurement,
and Cancel of a segmentation (which kills its worker's process group) does not close the
triangle session, and the reverse. Each is started lazily by its first request, restarted by the
next request after it died or was killed, exits after ``idle_exit_s`` without requests (the
segmentation worker then frees the network's memory), and is stopped by :meth:`stop` (module
cleanup) and at interpreter exit.

If a worker cannot start (:class:`WorkerUnavailable`), a warning is logged and from then on
every request runs in its own process (``PythonSlicer -m spinect segment`` /
``spinect triangles``: :class:`SegmentationJob`, :class:`TrianglesJob`), as before the
workers existed.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

from SpineCTSegmentationLib.options import Device
from SpineCTSegmentationLib.pipeline import BACKEND_DIR, SegmentationJob, WorkerSegmentationJob
from SpineCTSegmentationLib.worker import IDLE_EXIT_S, WorkerClient, WorkerTrianglesJob, WorkerUnavailable

__all__ = ["BackendRunner"]

log = logging.getLogger(__name__)


class BackendRunner:
    """The module's backend processes (see the module docstring).

    Args:
        python_executable: ``PythonSlicer`` in Slicer.
        base_env: the environment to start from (Slicer's startup environment).
        backend_dir: folder containing the ``spinect`` package (default: the module's).
        work_dir: parent of the jobs' private folders and the workers' working folder.
        idle_exit_s: a worker exits after this many seconds without a request.
        use_worker: False runs every request in its own process.
    """

    def __init__(self, *, python_executable: str, base_env: Mapping[str, str], backend_dir: str | os.PathLike | None = None,
                 work_dir: str | os.PathLike | None = None, idle_exit_s: float | None = IDLE_EXIT_S, use_worker: bool = True):
        self.python_executable = str(python_executable)
        self.base_env = dict(base_env)
        self.backend_dir = BACKEND_DIR if backend_dir is None else backend_dir
        self.work_dir = work_dir
        self.idle_exit_s = idle_exit_s
        self.use_worker = bool(use_worker)
        self.measurement_worker: WorkerClient | None = None
        self.segmentation_worker: WorkerClient | None = None
        self._segmentation_device: str | None = None

    # ------------------------------------------------------------------ workers

    def _client(self, device: str) -> WorkerClient:
        return WorkerClient(python_executable=self.python_executable, base_env=self.base_env, backend_dir=self.backend_dir,
                            device=device, idle_exit_s=self.idle_exit_s, cwd=self.work_dir)

    def triangles_worker(self) -> WorkerClient:
        """The measurement worker (created here, started by its first request)."""
        if self.measurement_worker is None:
            self.measurement_worker = self._client("cpu")
        return self.measurement_worker

    def segmentation_worker_for(self, device: Device) -> WorkerClient:
        """The segmentation worker for ``device``: ``cpu`` hides the GPUs, ``auto``/``cuda`` do not."""
        wanted = "cpu" if device == Device.CPU else "auto"
        if self.segmentation_worker is not None and self._segmentation_device != wanted:
            self.segmentation_worker.stop()
            self.segmentation_worker = None
        if self.segmentation_worker is None:
            self.segmentation_worker = self._client(wanted)
            self._segmentation_device = wanted
        return self.segmentation_worker

    def stop(self) -> None:
        """Stop both workers (nothing of them is left); the next request starts them again."""
        for client in (self.measurement_worker, self.segmentation_worker):
            if client is not None:
                client.stop()
        self.measurement_worker = self.segmentation_worker = None
        self._segmentation_device = None

    def _fall_back(self, what: str, exc: Exception) -> None:
        log.warning("SpineCTSegmentation: the backend worker did not start (%s); %s with one process per request "
                    "from now on", exc, what)
        self.use_worker = False
        self.stop()

    # ------------------------------------------------------------------ jobs

    def start_segmentation(self, volume_node, *, device: Device = Device.AUTO, model_path=None, smoothing_mm=None,
                           uncertainty: bool = False, keep_islands: bool = False, whole_volume: bool = False,
                           levels: bool = False, mirror: str = "auto", levels_by: str = "auto"):
        """Write ``volume_node`` and start segmenting it; returns the running job
        (:class:`WorkerSegmentationJob`, or :class:`SegmentationJob` after a fallback)."""
        options = dict(device=device, model_path=model_path, smoothing_mm=smoothing_mm, work_dir=self.work_dir,
                       uncertainty=uncertainty, keep_islands=keep_islands, whole_volume=whole_volume, levels=levels,
                       mirror=mirror, levels_by=levels_by)
        if self.use_worker:
            job = WorkerSegmentationJob(self.segmentation_worker_for(device), volume_node, **options)
            try:
                job.start()
                log.info("SpineCTSegmentation: %s", " ".join(job.command))
                return job
            except WorkerUnavailable as exc:  # job.start removed its files
                self._fall_back("segmenting", exc)
        job = SegmentationJob(volume_node, python_executable=self.python_executable, base_env=self.base_env,
                              backend_dir=self.backend_dir, **options)
        log.info("SpineCTSegmentation: %s", " ".join(job.command))
        job.start()
        return job

    def start_triangles(self, inputs, *, level: str, side: str, points_ras=None, seed_ras=None, theta_deg: float = 0.0,
                        phi_deg: float = 0.0, optimize: bool = False):
        """Start one triangle measurement on ``inputs`` (:class:`TriangleInputs`); returns the running
        job (:class:`WorkerTrianglesJob`, or :class:`TrianglesJob` after a fallback)."""
        from SpineCTSegmentationLib.triangles import TrianglesJob

        target = dict(level=level, side=side, points_ras=points_ras, seed_ras=seed_ras, theta_deg=theta_deg,
                      phi_deg=phi_deg, optimize=optimize)
        if self.use_worker:
            try:
                job = WorkerTrianglesJob(self.triangles_worker(), inputs, **target)
                job.start()
                log.info("SpineCTSegmentation: %s", " ".join(job.command))
                return job
            except WorkerUnavailable as exc:
                self._fall_back("measuring", exc)
        job = TrianglesJob(inputs, python_executable=self.python_executable, base_env=self.base_env,
                           backend_dir=self.backend_dir, **target)
        log.info("SpineCTSegmentation: %s", " ".join(job.process.command))
        job.start()
        return job
