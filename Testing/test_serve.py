"""``spinect serve`` (issue 16, item 3): the JSON-lines worker.

Truth: :func:`spinect.api.triangles` (the one-shot ``spinect triangles``) on the same phantom
label file, points and view; the worker's numbers must be equal, not close. Errors: malformed
lines, unknown verbs, bad arguments, missing files and a bug each get an error answer and the
next request is still answered. Superseding: of several queued measure requests of a session,
only the newest runs. Killing the process group stops the worker.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from spinect import api
from spinect.serve import Worker, serve, supersede

phantom = pytest.importorskip("spinect.phantom")

BACKEND = Path(__file__).resolve().parents[1] / "SpineCTSegmentation"
LEVEL, SIDE = "L5S1", "left"
VIEWS = [(0.0, 0.0), (30.0, 0.0), (45.0, -10.0)]


@pytest.fixture(scope="module")
def case():
    return phantom.generate_case(0, shape_zyx=(96, 128, 128), window_tables=False)


@pytest.fixture(scope="module")
def seg_file(case, tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "labels.nrrd"
    sitk.WriteImage(case.labels, str(path))
    sitk.WriteImage(case.structures, str(path.with_name("structures.nrrd")))
    return path


def _truth_points(case, level=LEVEL, side=SIDE) -> np.ndarray:
    entry = case.truth["levels"][level][side]["kambin"]
    return np.array(list(entry["points_lps_mm"].values()), float)


def _run(requests) -> list[dict]:
    """Serve these requests in-process (stdin = the lines, all queued at once); the answers."""
    lines = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in requests) + "\n"
    out = io.StringIO()
    assert serve(io.StringIO(lines), out) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _one_by_one(requests) -> list[dict]:
    """Each request answered before the next is sent (as a client waiting for its answers)."""
    out = io.StringIO()
    worker = Worker(out)
    for request in requests:
        worker.handle(request)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _answers(messages) -> dict:
    """Final answers by id (progress lines and the ready line left out)."""
    return {m["id"]: m for m in messages if "ok" in m and m["id"] is not None}


def _numbers(payload: dict) -> str:
    keep = {k: payload[k] for k in ("measurement", "frame_source", "warnings", "obstacles", "trajectory")}
    return json.dumps(keep, sort_keys=True)


def test_measure_answers_equal_the_one_shot_api_in_every_view(case, seg_file):
    pts = _truth_points(case)
    requests = [{"id": "open", "verb": "open_triangles", "session": "k",
                 "args": {"seg": str(seg_file), "level": LEVEL, "side": SIDE, "around": pts.tolist()}}]
    for i, (theta, phi) in enumerate(VIEWS):
        requests.append({"id": i, "verb": "measure", "session": "k",
                         "args": {"mode": "points", "points": pts.tolist(), "theta_deg": theta, "phi_deg": phi}})
    messages = _one_by_one(requests + [{"id": "bye", "verb": "shutdown"}])
    answers = _answers(messages)
    assert answers["open"]["ok"] and answers["open"]["result"]["session"] == "k"
    areas = set()
    for i, (theta, phi) in enumerate(VIEWS):
        got = answers[i]
        assert got["ok"], got
        one_shot = api.triangles(seg_file, level=LEVEL, side=SIDE, points_lps_mm=pts, theta_deg=theta, phi_deg=phi)
        expected = json.loads(json.dumps(one_shot.to_dict()))  # what `spinect triangles --json` writes
        assert _numbers(got["result"]) == _numbers(expected)
        assert got["result"]["measurement"]["view"]["theta_deg"] == theta
        assert got["result"]["fields_built"] == 1  # the view changes reused the session's fields
        areas.add(got["result"]["measurement"]["quantities"]["projected_triangle_area_mm2"]["value"])
    assert len(areas) == len(VIEWS)  # the views really differ
    assert answers["bye"]["ok"]
    # progress lines were streamed for the open and the measures, tagged with their ids
    progress_ids = {m["id"] for m in messages if "progress" in m}
    assert {"open", 0, 1, 2} <= progress_ids


def test_ras_points_and_seed_mode_match_the_api(case, seg_file):
    pts = _truth_points(case)
    seed = pts.mean(axis=0)
    ras = pts * np.array([-1.0, -1.0, 1.0])
    structures = seg_file.with_name("structures.nrrd")
    messages = _run([
        {"id": 1, "verb": "open_triangles", "args": {"seg": str(seg_file), "level": LEVEL, "side": SIDE}},
        {"id": 2, "verb": "measure", "session": "s1", "args": {"points": ras.tolist(), "ras": True, "theta_deg": 20.0}},
        {"id": 3, "verb": "measure", "session": "s2", "args": {"seed": seed.tolist()}},  # no such session
        {"id": 4, "verb": "open_triangles", "session": "seeded",
         "args": {"seg": str(seg_file), "level": LEVEL, "side": SIDE, "structures": str(structures)}},
        {"id": 5, "verb": "measure", "session": "seeded", "args": {"mode": "seed", "seed": seed.tolist(), "phi_deg": 10.0}},
    ])
    answers = _answers(messages)
    assert answers[1]["result"]["session"] == "s1"
    direct = api.triangles(seg_file, level=LEVEL, side=SIDE, points_lps_mm=pts, theta_deg=20.0)
    assert _numbers(answers[2]["result"]) == _numbers(json.loads(json.dumps(direct.to_dict())))
    assert not answers[3]["ok"] and "no open session 's2'" in answers[3]["error"]
    seeded = api.triangles(seg_file, level=LEVEL, side=SIDE, seed_lps_mm=seed, phi_deg=10.0, structures=structures)
    assert answers[5]["ok"] and answers[5]["result"]["measurement"]["mode"] == "seed"
    assert _numbers(answers[5]["result"]) == _numbers(json.loads(json.dumps(seeded.to_dict())))


def test_bad_requests_are_answered_and_the_worker_keeps_serving(case, seg_file, tmp_path, monkeypatch):
    pts = _truth_points(case)
    open_args = {"seg": str(seg_file), "level": LEVEL, "side": SIDE}
    lines = _run(["this is not JSON", "[1, 2, 3]", {"id": 0, "verb": "ping"}])
    protocol_errors = [m for m in lines if m["id"] is None and not m["ok"]]
    assert len(protocol_errors) == 2 and {m["kind"] for m in protocol_errors} == {"ProtocolError"}
    assert _answers(lines)[0]["ok"]  # and the next line is answered
    messages = _one_by_one([
        {"id": 1, "verb": "frobnicate"},
        {"id": 2, "verb": "open_triangles", "args": {"seg": str(tmp_path / "missing.nrrd"), "level": LEVEL, "side": SIDE}},
        {"id": 3, "verb": "open_triangles", "args": {**open_args, "level": "L9S9"}},
        {"id": 4, "verb": "open_triangles", "args": {**open_args, "colour": "red"}},
        {"id": 5, "verb": "open_triangles", "session": "k", "args": open_args},
        {"id": 6, "verb": "measure", "session": "k", "args": {"points": [[1, 2, 3]]}},
        {"id": 7, "verb": "measure", "session": "k", "args": {"points": pts.tolist(), "theta_deg": "thirty"}},
        {"id": 8, "verb": "optimize", "session": "k", "args": {"points": pts.tolist(), "theta_deg": 120.0}},
        {"id": 9, "verb": "segment", "args": {"input": str(tmp_path / "no_ct.nii.gz")}},
        {"id": 10, "verb": "segment", "args": {"input": str(seg_file), "colour": 1}},
        {"id": 11, "verb": "close", "session": "nope"},
        {"id": 12, "verb": "measure", "session": "k", "args": {"points": pts.tolist(), "theta_deg": 30.0}},
        {"id": 13, "verb": "measure", "args": "not an object"},
    ])
    answers = _answers(messages)
    assert "unknown verb 'frobnicate'" in answers[1]["error"] and answers[1]["kind"] == "InputError"
    assert "not found" in answers[2]["error"] and "missing.nrrd" in answers[2]["error"]
    assert not answers[3]["ok"] and "L9S9" in answers[3]["error"]
    assert "unknown argument(s) colour" in answers[4]["error"]
    assert answers[5]["ok"]
    assert not answers[6]["ok"] and "3 point(s)" in answers[6]["error"]
    assert not answers[7]["ok"] and "theta_deg must be a finite number" in answers[7]["error"]
    assert not answers[8]["ok"] and "theta" in answers[8]["error"]
    assert not answers[9]["ok"] and "not found" in answers[9]["error"]
    assert not answers[10]["ok"] and "colour" in answers[10]["error"]
    assert not answers[11]["ok"] and "nope" in answers[11]["error"]
    # after all that, the session still measures, with the one-shot API's numbers
    assert answers[12]["ok"], answers[12]
    direct = api.triangles(seg_file, level=LEVEL, side=SIDE, points_lps_mm=pts, theta_deg=30.0)
    assert _numbers(answers[12]["result"]) == _numbers(json.loads(json.dumps(direct.to_dict())))
    assert not answers[13]["ok"] and "JSON object" in answers[13]["error"]
    assert all("traceback" not in a for a in answers.values())  # user errors are messages, not bugs


def test_a_bug_answers_a_traceback_summary_and_the_worker_keeps_serving(monkeypatch):
    def broken(self, request, args, progress):
        return {}["missing"]

    monkeypatch.setattr(Worker, "_verb_sessions", broken)
    answers = _answers(_run([{"id": 1, "verb": "sessions"}, {"id": 2, "verb": "ping"}]))
    assert not answers[1]["ok"] and answers[1]["kind"] == "KeyError"
    assert "internal error" in answers[1]["error"] and "broken" in answers[1]["traceback"]
    assert answers[2]["ok"] and answers[2]["result"]["protocol"] == 1


def test_queued_measures_of_a_session_are_superseded_by_the_newest(case, seg_file):
    pts = _truth_points(case)
    other = pts.copy()
    other[1] += np.array([1.0, -0.5, 0.5])  # B dragged
    open_args = {"seg": str(seg_file), "level": LEVEL, "side": SIDE, "around": pts.tolist()}
    # the open takes a while; the lines behind it are all queued when it ends
    messages = _run([
        {"id": "a", "verb": "open_triangles", "session": "k", "args": open_args},
        {"id": 1, "verb": "measure", "session": "k", "args": {"points": pts.tolist(), "theta_deg": 0.0}},
        {"id": 2, "verb": "measure", "session": "k", "args": {"points": pts.tolist(), "theta_deg": 10.0}},
        {"id": "b", "verb": "open_triangles", "session": "other", "args": open_args},
        {"id": 3, "verb": "measure", "session": "other", "args": {"points": pts.tolist(), "theta_deg": 5.0}},
        {"id": 4, "verb": "measure", "session": "k", "args": {"points": other.tolist(), "theta_deg": 25.0}},
    ])
    answers = _answers(messages)
    for dropped in (1, 2):
        assert answers[dropped] == {"id": dropped, "ok": False, "superseded": True, "kind": "Superseded",
                                    "error": "superseded by a newer measure request of the same session"}
    assert answers[3]["ok"]  # another session's measure is not superseded
    assert answers[4]["ok"]
    direct = api.triangles(seg_file, level=LEVEL, side=SIDE, points_lps_mm=other, theta_deg=25.0)
    assert _numbers(answers[4]["result"]) == _numbers(json.loads(json.dumps(direct.to_dict())))
    # a superseded request got no progress line: it never ran
    assert not [m for m in messages if "progress" in m and m["id"] in (1, 2)]


def test_supersede_keeps_order_and_stops_at_other_verbs():
    pending = deque([
        {"id": 1, "verb": "measure", "session": "k"},
        {"id": 2, "verb": "optimize", "session": "k"},
        {"id": 3, "verb": "measure", "session": "k"},
        {"id": 4, "verb": "measure", "session": "j"},
        {"id": 5, "verb": "ping"},
        {"id": 6, "verb": "measure", "session": "k"},
    ])
    dropped = supersede(pending)
    assert [r["id"] for r in dropped] == [3]  # 1 is followed by an optimize, which needs it first
    assert [r["id"] for r in pending] == [1, 2, 4, 5, 6]


def test_a_queued_request_can_be_cancelled(case, seg_file):
    pts = _truth_points(case)
    messages = _run([
        {"id": "a", "verb": "open_triangles", "session": "k",
         "args": {"seg": str(seg_file), "level": LEVEL, "side": SIDE, "around": pts.tolist()}},
        {"id": 1, "verb": "optimize", "session": "k", "args": {"points": pts.tolist(), "step_deg": 30.0}},
        {"id": 2, "verb": "cancel", "args": {"target": 1}},
        {"id": 3, "verb": "measure", "session": "k", "args": {"points": pts.tolist()}},
    ])
    answers = _answers(messages)
    assert not answers[1]["ok"] and answers[1]["cancelled"] and answers[1]["kind"] == "Cancelled"
    assert answers[2]["ok"] and answers[2]["result"] == {"target": 1}
    assert answers[3]["ok"]


class _CancelOnSearch(io.StringIO):
    """An output stream that sends ``cancel`` for a request when its search reports progress
    (a cancel arriving while the job runs, without depending on timing)."""

    def __init__(self):
        super().__init__()
        self.worker = None

    def write(self, text):
        message = json.loads(text)
        if message.get("progress", {}).get("stage") == "search":
            self.worker.note_cancel({"verb": "cancel", "args": {"target": message["id"]}})
        return super().write(text)


def test_a_running_job_is_cancelled_and_the_worker_keeps_serving(case, seg_file, tmp_path):
    pts = _truth_points(case)
    out = _CancelOnSearch()
    worker = out.worker = Worker(out)
    heatmap = tmp_path / "heat.png"
    worker.handle({"id": 1, "verb": "open_triangles", "session": "k",
                   "args": {"seg": str(seg_file), "level": LEVEL, "side": SIDE, "around": pts.tolist()}})
    worker.handle({"id": 2, "verb": "optimize", "session": "k",
                   "args": {"points": pts.tolist(), "step_deg": 30.0, "heatmap": str(heatmap)}})
    worker.handle({"id": 3, "verb": "measure", "session": "k", "args": {"points": pts.tolist(), "theta_deg": 30.0}})
    messages = [json.loads(line) for line in out.getvalue().splitlines()]
    answers = _answers(messages)
    assert any(m["id"] == 2 and m.get("progress", {}).get("stage") == "search" for m in messages)  # it was running
    assert not answers[2]["ok"] and answers[2]["cancelled"] and answers[2]["error"] == "request 2 was cancelled"
    assert not heatmap.exists() and sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written
    direct = api.triangles(seg_file, level=LEVEL, side=SIDE, points_lps_mm=pts, theta_deg=30.0)
    assert answers[3]["ok"] and _numbers(answers[3]["result"]) == _numbers(json.loads(json.dumps(direct.to_dict())))


def test_optimize_answers_the_measured_and_the_best_view(case, seg_file, tmp_path):
    pts = _truth_points(case)
    heatmap = tmp_path / "heat.png"
    search = {"step_deg": 30.0, "refine_step_deg": 0.0, "robust_deg": 0.0}
    messages = _run([
        {"id": 1, "verb": "open_triangles", "session": "k",
         "args": {"seg": str(seg_file), "level": LEVEL, "side": SIDE, "around": pts.tolist()}},
        {"id": 2, "verb": "optimize", "session": "k",
         "args": {"points": pts.tolist(), "theta_deg": 15.0, "heatmap": str(heatmap), **search}},
    ])
    answers = _answers(messages)
    assert answers[2]["ok"], answers[2]
    from spinect.geometry.trajectory import SearchSettings

    direct = api.triangles(seg_file, level=LEVEL, side=SIDE, points_lps_mm=pts, theta_deg=15.0, optimize=True,
                           search=SearchSettings(step_deg=30.0, refine_step_deg=0.0, robust_deg=0.0))
    assert _numbers(answers[2]["result"]) == _numbers(json.loads(json.dumps(direct.to_dict())))
    assert answers[2]["result"]["files"] == {"heatmap_png": str(heatmap)} and heatmap.is_file()
    assert any(m.get("progress", {}).get("stage") == "search" for m in messages if m["id"] == 2)


def test_segment_keeps_the_model_loaded(tmp_path):
    from conftest import make_tiny_model
    from spinect.phantom import generate_case

    small = generate_case(1, shape_zyx=(24, 48, 48), window_tables=False)
    ct = tmp_path / "ct.nrrd"
    sitk.WriteImage(small.ct, str(ct))
    model = make_tiny_model(tmp_path / "tiny.pt")
    out = io.StringIO()
    worker = Worker(out)
    for i in range(2):
        worker.handle({"id": i, "verb": "segment", "args": {"input": str(ct), "output": str(tmp_path / f"seg{i}.nrrd"),
                                                             "model": str(model), "device": "cpu", "allow_untrained": True}})
    answers = _answers(json.loads(line) for line in out.getvalue().splitlines())
    assert answers[0]["ok"] and answers[1]["ok"], answers
    assert worker.model_loads == 1 and answers[1]["result"]["models_cached"] == 1
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg0.nrrd")))
    second = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg1.nrrd")))
    direct = api.segment(ct, model=model, device="cpu", allow_untrained=True)
    np.testing.assert_array_equal(first, sitk.GetArrayFromImage(direct.labels))
    np.testing.assert_array_equal(second, first)
    assert answers[1]["result"]["output_path"] == str(tmp_path / "seg1.nrrd")


# --------------------------------------------------------------------------- the real process


def _start(tmp_path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(BACKEND), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "spinect", "serve"], env=env, cwd=tmp_path, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)


def test_the_process_answers_on_stdout_and_dies_with_its_process_group(tmp_path):
    proc = _start(tmp_path)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["ok"] and ready["result"]["ready"] and ready["result"]["pid"] == proc.pid
        proc.stdin.write("{broken\n")
        proc.stdin.write(json.dumps({"id": 7, "verb": "ping"}) + "\n")
        proc.stdin.flush()
        error = json.loads(proc.stdout.readline())
        assert error["ok"] is False and error["kind"] == "ProtocolError"
        pong = json.loads(proc.stdout.readline())
        assert pong == {"id": 7, "ok": True, "result": {"protocol": 1, "pid": proc.pid, "sessions": []}}
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)  # nothing of the group is left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_shutdown_and_end_of_input_end_the_process(tmp_path):
    proc = _start(tmp_path)
    out, _ = proc.communicate(json.dumps({"id": 1, "verb": "shutdown"}) + "\n" + json.dumps({"id": 2, "verb": "ping"}) + "\n",
                              timeout=120)
    lines = [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 0
    assert lines[-1] == {"id": 1, "ok": True, "result": {"stopping": True}}  # nothing after shutdown
    proc = _start(tmp_path)
    out, _ = proc.communicate("", timeout=120)  # stdin closed at once
    assert proc.returncode == 0 and json.loads(out.splitlines()[0])["result"]["ready"]


def test_killing_the_worker_mid_job_leaves_no_files(case, seg_file, tmp_path):
    pts = _truth_points(case)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _start(tmp_path)
    try:
        json.loads(proc.stdout.readline())  # ready
        for request in (
            {"id": 1, "verb": "open_triangles", "session": "k",
             "args": {"seg": str(seg_file), "level": LEVEL, "side": SIDE, "around": pts.tolist()}},
            {"id": 2, "verb": "optimize", "session": "k",
             "args": {"points": pts.tolist(), "step_deg": 10.0, "heatmap": str(out_dir / "heat.png")}},
        ):
            proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        while True:  # until the search runs
            message = json.loads(proc.stdout.readline())
            assert message.get("ok") is not False, message
            if message["id"] == 2 and message.get("progress", {}).get("stage") == "search":
                break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list(out_dir.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the worker's folder holds nothing new
