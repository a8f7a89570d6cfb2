"""Segmentation through the module's ``spinect serve`` worker (issue 16, items 3 and 4), without Slicer's GUI.

On Slicer's real MRML nodes (``slicer-core``), with a tiny test-only model:

* :class:`WorkerSegmentationJob` (what ``logic.startSegmentation`` starts through
  :class:`BackendRunner`) gives the labels of the one-process :class:`SegmentationJob`, voxel for
  voxel, the same progress, the same uncertainty outputs, keeps the network loaded for the next run,
  and keeps the never-overwrite policy for the user's segments;
* Cancel kills the worker's process group mid-job: the job reports cancelled, nothing in the
  scene changes, no file is left (the job's folder, the worker's working folder and its TMPDIR),
  and the next request starts a fresh worker that works; a segmentation never blocks the
  measurement worker;
* a worker that cannot start falls back to one process per request, with a logged warning.

Truth: the one-process CLI path the module used before (itself tested against the Python API in
test_slicer_logic.py).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

MODULE_DIR = Path(__file__).resolve().parents[1] / "SpineCTSegmentation"
sys.path.insert(0, str(MODULE_DIR))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import process_group_gone as _gone  # noqa: E402
from SpineCTSegmentationLib.backend import BackendRunner  # noqa: E402
from SpineCTSegmentationLib.options import Device, ExistingSegments  # noqa: E402
from SpineCTSegmentationLib.pipeline import BackendFailed, SegmentationJob, WorkerSegmentationJob  # noqa: E402
from test_slicer_logic import slicer  # noqa: E402,F401 - slicer-core with the surface converter registered

LONG = 300.0  # generous: a loaded machine must not fail a test (nothing here is timed)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from conftest import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("worker_segment") / "tiny.pt")


@pytest.fixture
def scene_ct(slicer):
    from test_slicer_logic import _phantom_ct, volume_node_from_image

    scene = slicer.vtkMRMLScene()
    image = _phantom_ct()
    return scene, volume_node_from_image(slicer, scene, image, "phantom"), image


def _runner(tmp_path, **kwargs) -> BackendRunner:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = kwargs.pop("base_env", dict(os.environ))
    return BackendRunner(python_executable=kwargs.pop("python_executable", sys.executable), base_env=env,
                         backend_dir=MODULE_DIR, work_dir=work, **kwargs)


def _segment_ids(node) -> list[str]:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def test_worker_segmentation_gives_the_one_process_labels_and_keeps_the_users_segments(slicer, scene_ct, model, tmp_path):
    from test_slicer_logic import _add_user_segment, _spec

    from SpineCTSegmentationLib.mrml_io import ExistingSegmentsError, new_segmentation_node, segment_label_array
    from SpineCTSegmentationLib.terminology import BONE

    scene, ct, image = scene_ct
    node = new_segmentation_node(ct, name="annotations")
    user_mask = np.zeros(sitk.GetArrayViewFromImage(image).shape, bool)
    user_mask[2:6, 5:15, 5:15] = True
    _add_user_segment(slicer, node, ct, "my_segment", user_mask)
    runner = _runner(tmp_path)
    options = dict(device=Device.CPU, model_path=model, smoothing_mm=1.5)
    try:
        job = runner.start_segmentation(ct, **options)
        assert isinstance(job, WorkerSegmentationJob) and job.running
        events = []
        assert job.wait(LONG, on_event=events.append) == 0, [e.line for e in events]
        worker_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(job.output_path)))
        assert job.finish(node, existing=ExistingSegments.ASK) is node
        job.cleanup()
        assert not job.temp_dir.exists()
        assert any("test-only" in e.line for e in events)  # the backend's warnings reach the log, as before
        progress = [e.progress for e in events if e.progress]
        assert progress[-1].stage == "done" and progress[-1].fraction == 1.0
        assert [p.fraction for p in progress] == sorted(p.fraction for p in progress)
        assert job.result["device"] == "cpu" and job.result["output_path"] == str(job.output_path)
        pid = runner.segmentation_worker.pid

        # the one-process path the module used before: the same labels, voxel for voxel
        old = SegmentationJob(ct, python_executable=sys.executable, base_env=dict(os.environ), backend_dir=MODULE_DIR,
                              work_dir=tmp_path, **options)
        old.start()
        assert old.wait(LONG) == 0
        np.testing.assert_array_equal(worker_labels, sitk.GetArrayFromImage(sitk.ReadImage(str(old.output_path))))
        old_node = old.finish(None)
        old.cleanup()
        assert _segment_ids(node) == ["my_segment", "bone", "nerve"]
        np.testing.assert_array_equal(segment_label_array(node, ct), segment_label_array(old_node, ct))
        np.testing.assert_array_equal(segment_label_array(node, ct, [_spec("my_segment")]), user_mask)

        # again on the same worker (the network stays loaded), with the uncertainty outputs;
        # bone/nerve exist now: never replaced without an explicit choice
        before = segment_label_array(node, ct, [BONE])
        again = runner.start_segmentation(ct, uncertainty=True, **options)
        assert again.wait(LONG) == 0 and runner.segmentation_worker.pid == pid and runner.segmentation_worker.starts == 1
        assert again.uncertainty_path.is_file() and again.review_path.is_file()
        assert again.result["models_cached"] == 1
        with pytest.raises(ExistingSegmentsError, match="bone"):
            again.finish(node, existing=ExistingSegments.ASK)
        new_node = again.finish(node, existing=ExistingSegments.NEW_NODE)
        assert new_node is not node and _segment_ids(new_node) == ["bone", "nerve"]
        np.testing.assert_array_equal(segment_label_array(node, ct, [BONE]), before)
        volume, table = again.load_uncertainty()
        assert volume is not None and table is not None
        again.cleanup()
        assert list((tmp_path / "work").iterdir()) == []
    finally:
        runner.stop()
    assert _gone(pid)


def test_cancel_kills_the_worker_mid_job_leaves_no_files_and_the_next_request_works(slicer, scene_ct, model, tmp_path):
    from test_slicer_logic import volume_node_from_image

    from SpineCTSegmentationLib.mrml_io import new_segmentation_node
    from spinect.phantom import generate_case

    scene, small_ct, _ = scene_ct
    big = generate_case(0, shape_zyx=(40, 96, 96), spacing_zyx_mm=(2.0, 1.0, 1.0), window_tables=False).ct
    ct = volume_node_from_image(slicer, scene, big, "bigger phantom")
    node = new_segmentation_node(ct, name="annotations")
    worker_tmp = tmp_path / "worker_tmp"
    worker_tmp.mkdir()
    runner = _runner(tmp_path, base_env=dict(os.environ, TMPDIR=str(worker_tmp), TMP=str(worker_tmp)))
    try:
        job = runner.start_segmentation(ct, device=Device.CPU, model_path=model, whole_volume=True)
        client = runner.segmentation_worker
        pid = client.pid
        # a segmentation does not hold up measurements: they have their own worker
        assert runner.triangles_worker().call("ping", timeout_s=LONG)["pid"] not in (pid, None)
        deadline = time.monotonic() + LONG
        seen = []
        while not seen and job.running and time.monotonic() < deadline:
            seen = [e for e in job.poll() if e.progress is not None]
            time.sleep(0.01)
        assert seen and job.running, "the job ended before it could be cancelled"
        assert job.input_path.is_file()
        job.cancel()
        assert _gone(pid) and not client.alive
        assert not job.running and job.cancelled and not job.succeeded
        job.poll()
        with pytest.raises(BackendFailed, match="cancelled"):
            job.finish(node)
        assert node.GetSegmentation().GetNumberOfSegments() == 0
        job.cleanup()
        assert not job.temp_dir.exists()
        assert list((tmp_path / "work").iterdir()) == []  # the jobs' parent folder, the worker's cwd
        assert list(worker_tmp.iterdir()) == []  # the worker's TMPDIR
        assert runner.triangles_worker().alive  # the measurement worker was not touched

        # the next request starts a fresh worker, and it works
        nxt = runner.start_segmentation(small_ct, device=Device.CPU, model_path=model)
        assert nxt.wait(LONG) == 0 and client.pid != pid and client.starts == 2
        result = nxt.finish(None)
        assert _segment_ids(result) == ["bone", "nerve"]
        nxt.cleanup()
        assert list((tmp_path / "work").iterdir()) == [] and list(worker_tmp.iterdir()) == []
    finally:
        runner.stop()


def test_a_failed_request_is_reported_like_the_cli_error_and_the_worker_keeps_serving(slicer, scene_ct, tmp_path):
    from SpineCTSegmentationLib.mrml_io import new_segmentation_node

    scene, ct, _ = scene_ct
    node = new_segmentation_node(ct, name="annotations")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a model")
    runner = _runner(tmp_path)
    try:
        job = runner.start_segmentation(ct, device=Device.CPU, model_path=bad)
        events = []
        assert job.wait(LONG, on_event=events.append) == 1 and not job.cancelled
        with pytest.raises(BackendFailed, match="^spinect segment: error: .*corrupt.pt"):
            job.finish(node)
        assert any(e.line.startswith("spinect segment: error:") for e in events)
        assert node.GetSegmentation().GetNumberOfSegments() == 0
        job.cleanup()
        assert list((tmp_path / "work").iterdir()) == []
        assert runner.segmentation_worker.alive and runner.segmentation_worker.starts == 1
    finally:
        runner.stop()


def test_a_worker_that_cannot_start_falls_back_to_one_process_with_a_warning(slicer, scene_ct, model, tmp_path, caplog):
    """A backend without the ``serve`` verb (e.g. an older one): the CLI works, the worker does not."""
    scene, ct, _ = scene_ct
    python = tmp_path / "python-without-serve"
    python.write_text("#!/bin/sh\n"
                      'for a in "$@"; do if [ "$a" = serve ]; then echo "invalid choice: serve" >&2; exit 2; fi; done\n'
                      f'exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    runner = _runner(tmp_path, python_executable=str(python))
    try:
        with caplog.at_level(logging.WARNING, logger="SpineCTSegmentationLib.backend"):
            job = runner.start_segmentation(ct, device=Device.CPU, model_path=model, smoothing_mm=1.5)
        assert type(job) is SegmentationJob and not runner.use_worker
        assert any("did not start" in r.getMessage() and "one process per request" in r.getMessage()
                   for r in caplog.records if r.levelno == logging.WARNING)
        assert len(list((tmp_path / "work").iterdir())) == 1  # only the fallback job's folder
        assert job.wait(LONG) == 0
        assert _segment_ids(job.finish(None)) == ["bone", "nerve"]
        job.cleanup()
        assert list((tmp_path / "work").iterdir()) == []
        # later requests go straight to one process per request (no new start attempt)
        caplog.clear()
        later = runner.start_segmentation(ct, device=Device.CPU, model_path=model)
        assert type(later) is SegmentationJob and runner.segmentation_worker is None and not caplog.records
        later.cancel()
        later.cleanup()
    finally:
        runner.stop()


def test_the_segmentation_worker_follows_the_device_class(tmp_path):
    runner = _runner(tmp_path)
    cpu = runner.segmentation_worker_for(Device.CPU)
    assert cpu.env["CUDA_VISIBLE_DEVICES"] == "-1" and runner.segmentation_worker_for(Device.CPU) is cpu
    auto = runner.segmentation_worker_for(Device.AUTO)
    assert auto is not cpu and auto.env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")
    assert runner.segmentation_worker_for(Device.CUDA) is auto  # the same environment
    assert runner.triangles_worker().env["CUDA_VISIBLE_DEVICES"] == "-1"  # measurements never need a GPU
    assert cpu.pid is None and auto.pid is None  # nothing was started
    runner.stop()
