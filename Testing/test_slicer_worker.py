"""The module's ``spinect serve`` client (issue 16, item 3), without Slicer's GUI.

* :class:`WorkerClient`: lazy start, answers matched by id, a killed worker is restarted on the
  next request (its unanswered requests fail), killing the process group leaves no process,
  :meth:`stop` and the idle exit end it, a worker that cannot start raises
  :class:`WorkerUnavailable` (the module then falls back to one process per request);
* :class:`WorkerTrianglesJob` on Slicer's real MRML nodes (``slicer-core``): the same report as
  the one-process :class:`TrianglesJob` and :func:`spinect.api.triangles`, a session opened once
  for many views, and reopened after the worker was killed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "SpineCTSegmentation"
sys.path.insert(0, str(MODULE_DIR))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import process_group_gone as _gone  # noqa: E402
from SpineCTSegmentationLib.worker import WorkerClient, WorkerTrianglesJob, WorkerUnavailable  # noqa: E402

phantom = pytest.importorskip("spinect.phantom")
LEVEL, SIDE = "L5S1", "left"
LONG = 300.0  # generous limits so a loaded machine never fails a test (nothing here is timed)


def _client(tmp_path, **kwargs) -> WorkerClient:
    return WorkerClient(python_executable=sys.executable, base_env=dict(os.environ), backend_dir=MODULE_DIR, cwd=tmp_path,
                        **kwargs)


def test_lazy_start_matching_answers_and_stop(tmp_path):
    client = _client(tmp_path)
    assert client.pid is None and not client.alive  # nothing runs before the first request
    first = client.request("ping")
    second = client.request("frobnicate")
    third = client.request("ping")
    for request in (third, first, second):  # waited for out of order: still matched by id
        client.wait(request, LONG)
    pid = client.pid
    assert first.ok and first.result["pid"] == pid and third.ok
    assert not second.ok and second.kind == "InputError" and "frobnicate" in second.error
    assert client.starts == 1
    client.stop()
    assert not client.alive and _gone(pid)


def test_a_killed_worker_is_restarted_and_its_pending_request_fails(tmp_path):
    client = _client(tmp_path)
    try:
        pid = client.call("ping", timeout_s=LONG)["pid"]
        os.killpg(pid, signal.SIGSTOP)  # frozen: the next request cannot be answered
        orphan = client.request("ping")
        os.killpg(pid, signal.SIGKILL)  # crashed or killed from outside
        while not orphan.done:
            client.poll()
        assert not orphan.ok and orphan.kind == "WorkerDied" and not client.alive
        again = client.call("ping", timeout_s=LONG)  # a fresh worker answers
        assert again["pid"] != pid and client.starts == 2 and client.generation == 2
    finally:
        client.stop()


def test_killing_the_process_group_cancels_a_running_request(tmp_path):
    client = _client(tmp_path)
    try:
        client.call("ping", timeout_s=LONG)
        pid = client.pid
        # a request that runs for a while: opening a session on a large phantom file
        import SimpleITK as sitk

        case = phantom.generate_case(0, shape_zyx=(96, 128, 128), window_tables=False)
        seg = tmp_path / "labels.nrrd"
        sitk.WriteImage(case.labels, str(seg))
        pts = np.array(list(case.truth["levels"][LEVEL][SIDE]["kambin"]["points_lps_mm"].values()), float)
        running = client.request("open_triangles", {"seg": str(seg), "level": LEVEL, "side": SIDE, "around": pts.tolist()})
        queued = client.request("ping")
        client.kill()
        assert _gone(pid) and not client.alive
        assert running.done and running.cancelled and not running.ok
        assert queued.done and queued.cancelled
        assert client.call("ping", timeout_s=LONG)["pid"] != pid  # and the next request works again
    finally:
        client.stop()


def test_the_worker_exits_when_idle_and_comes_back_on_the_next_request(tmp_path):
    client = _client(tmp_path, idle_exit_s=0.5)
    try:
        pid = client.call("ping", timeout_s=LONG)["pid"]
        client._proc.wait(timeout=LONG)  # it exits by itself
        while client.poll() == [] and client._proc is not None:
            pass
        assert _gone(pid)
        assert client.call("ping", timeout_s=LONG)["pid"] != pid and client.starts == 2
    finally:
        client.stop()


def test_a_worker_that_cannot_start_is_reported(tmp_path):
    broken = WorkerClient(python_executable=str(tmp_path / "no-such-python"), base_env=dict(os.environ),
                          backend_dir=MODULE_DIR)
    with pytest.raises(WorkerUnavailable, match="could not start"):
        broken.request("ping")
    fake = tmp_path / "fake-python"  # runs, but is no spinect: says something and exits at once
    fake.write_text("#!/bin/sh\necho 'No module named spinect' >&2\nexit 1\n")
    fake.chmod(0o755)
    no_backend = WorkerClient(python_executable=str(fake), base_env=dict(os.environ), backend_dir=MODULE_DIR)
    with pytest.raises(WorkerUnavailable, match="exited at start"):
        no_backend.request("ping")


# --------------------------------------------------------------------------- on MRML nodes


@pytest.fixture(scope="module")
def case(triangle_case):
    return triangle_case


def _numbers(report: dict) -> str:
    return json.dumps({k: report[k] for k in ("measurement", "frame_source", "warnings", "obstacles", "trajectory")},
                      sort_keys=True)


def test_worker_jobs_on_mrml_nodes_give_the_one_process_numbers(slicer, case, tmp_path):
    from test_slicer_logic import volume_node_from_image

    from SpineCTSegmentationLib.mrml_io import import_labelmap_segments
    from SpineCTSegmentationLib.triangles import TriangleInputs, TrianglesJob, measurement_rows
    from SpineCTSegmentationLib.view import lps_to_ras
    from spinect import api

    scene = slicer.vtkMRMLScene()
    ct = volume_node_from_image(slicer, scene, case.ct, "phantom CT")
    labels = volume_node_from_image(slicer, scene, case.labels, "labels", "vtkMRMLLabelMapVolumeNode")
    segmentation = import_labelmap_segments(labels, None, reference_volume=ct, closed_surfaces=False)
    truth = np.array(list(case.truth["levels"][LEVEL][SIDE]["kambin"]["points_lps_mm"].values()), float)
    ras = lps_to_ras(truth)
    inputs = TriangleInputs(segmentation, ct, work_dir=tmp_path)
    client = _client(tmp_path)
    try:
        reports = {}
        for theta, phi in ((0.0, 0.0), (30.0, 0.0), (20.0, 10.0)):
            job = WorkerTrianglesJob(client, inputs, level=LEVEL, side=SIDE, points_ras=ras, theta_deg=theta, phi_deg=phi)
            job.start()
            job.wait(LONG)
            reports[theta, phi] = job.finish()
            job.cleanup()
        opened = [r for r in job.requests if r.verb == "open_triangles"]
        assert opened == []  # the last view reused the session the first one opened
        assert reports[20.0, 10.0]["fields_built"] == 1
        # the one-process path (what the module ran before) and the API give the same numbers
        old = TrianglesJob(inputs, python_executable=sys.executable, base_env=dict(os.environ), level=LEVEL, side=SIDE,
                           points_ras=ras, theta_deg=30.0, backend_dir=MODULE_DIR)
        old.start()
        old.wait(LONG)
        old_report = old.finish()
        old.cleanup()
        assert _numbers(reports[30.0, 0.0]) == _numbers(old_report)
        direct = api.triangles(inputs.seg_path, level=LEVEL, side=SIDE, points_lps_mm=truth, theta_deg=20.0, phi_deg=10.0)
        assert _numbers(reports[20.0, 10.0]) == _numbers(json.loads(json.dumps(direct.to_dict())))
        assert {r["quantity"] for r in measurement_rows(reports[0.0, 0.0])} >= {"free_area_mm2", "true_triangle_area_mm2"}

        # the worker is killed (Cancel, or a crash): the next view restarts it and reopens the session
        pid = client.pid
        os.killpg(pid, signal.SIGKILL)
        job = WorkerTrianglesJob(client, inputs, level=LEVEL, side=SIDE, points_ras=ras, theta_deg=30.0)
        while client.alive:
            client.poll()
        job.start()
        job.wait(LONG)
        assert [r.verb for r in job.requests] == ["open_triangles", "measure"] and client.pid != pid
        assert _numbers(job.finish()) == _numbers(old_report)

        # a bad request is answered as a failed measurement, and the worker keeps serving
        from SpineCTSegmentationLib.triangles import TrianglesFailed

        far = WorkerTrianglesJob(client, inputs, level=LEVEL, side=SIDE, points_ras=ras + 400.0, theta_deg=30.0)
        far.start()
        far.wait(LONG)
        with pytest.raises(TrianglesFailed):
            far.finish()
        job = WorkerTrianglesJob(client, inputs, level=LEVEL, side=SIDE, points_ras=ras, theta_deg=0.0)
        job.start()
        job.wait(LONG)
        assert _numbers(job.finish()) == _numbers(reports[0.0, 0.0])

        # Cancel kills the worker's process group
        running = WorkerTrianglesJob(client, inputs, level=LEVEL, side=SIDE, points_ras=ras, theta_deg=40.0, optimize=True)
        running.start()
        pid = client.pid
        running.cancel()
        assert _gone(pid) and not running.running
        with pytest.raises(TrianglesFailed, match="cancelled"):
            running.finish()
        running.cleanup()
    finally:
        client.stop()
        inputs.cleanup()
