"""``spinect serve``: a long-lived JSON-lines worker on stdin/stdout (issue 16, item 3).

One request per line on stdin, one JSON object per line on stdout::

    {"id": 1, "verb": "open_triangles", "args": {"seg": "labels.nrrd", "level": "L5S1", "side": "left"}}
    {"id": 1, "ok": true, "result": {"session": "s1", ...}}
    {"id": 2, "verb": "measure", "session": "s1", "args": {"mode": "points", "points": [[...], [...], [...]],
                                                          "theta_deg": 30, "phi_deg": 0}}
    {"id": 2, "progress": {"stage": "measure", "fraction": 0.2, "message": "..."}}
    {"id": 2, "ok": true, "result": {... the ``spinect triangles --json`` report ...}}

Verbs:

* ``open_triangles`` (args: ``seg``, ``level``, ``side``, optional ``triangle``, ``ct``,
  ``structures``, ``endplate``, ``around``, ``auto``, ``reach_skin``, ``allow_missing_nerve``,
  ``ras``; a ``session`` name may be given by the client, else one is made): opens a
  :class:`spinect.geometry.TriangleSession` (read, crop, fields, frame once) and keeps it;
  an open session of the same name is replaced.
* ``measure`` (``session``; args: ``mode`` points/seed/auto, ``theta_deg``, ``phi_deg``,
  ``points`` (3 x 3 or 9 numbers), ``seed``, ``pedicle``, ``ras``, ``reachable``,
  ``instrument_radius_mm``, ``pixel_mm``): one view; the result is the report ``spinect
  triangles --json`` writes (:meth:`TrianglesResult.to_dict`), so the numbers are the CLI's.
* ``optimize`` (as ``measure`` plus ``step_deg``, ``objective``, ``heatmap``): the measured view
  and the best view (``trajectory``), as ``spinect triangles --optimize --json``.
* ``close`` (``session``): forget a session. ``sessions``: the open sessions.
* ``segment`` (args: a :class:`spinect.requests.SegmentRequest` as JSON,
  :meth:`~spinect.requests.Request.to_dict`; unknown options are refused): loaded models are
  kept, keyed by file, mtime, size and device, so a second request does not load the network
  again. The answer carries the settings as applied and the request.
* ``triangles`` (args: a :class:`spinect.requests.TrianglesRequest` as JSON): one
  ``spinect triangles`` run (open, measure, optionally optimize; no session kept); the answer is
  its JSON report, the files written and the request.
* ``cancel`` (args: ``target``: a request id): a queued target is answered as cancelled; a
  running segment or optimize stops at its next progress report (a measure is too short to stop).
* ``ping``; ``shutdown`` (answers, then the worker exits with code 0; so does the end of stdin).

Answers: ``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error": message, "kind":
error class}``; a bug (not a :class:`SpinectError`) also carries ``"traceback"`` (its last lines)
and the worker keeps serving. Bad JSON, an unknown verb, unknown or bad arguments and missing
files are errors, never the end of the worker. ``{"ok": false, "superseded": true}`` answers a
``measure`` that a newer ``measure`` of the same session, queued behind it, replaced: the worker
reads every pending line (without blocking) before it starts work and runs only the newest
measure of each session. To stop a job at once, kill the worker's process group (the Slicer
client starts it in its own group); files are written atomically, so nothing half-written stays.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import queue
import threading
import traceback
from collections import deque
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

from spinect.errors import InputError, SpinectError

__all__ = ["Worker", "serve", "jsonable", "VERBS", "PROTOCOL_VERSION"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
VERBS = ("open_triangles", "measure", "optimize", "close", "sessions", "segment", "triangles", "cancel", "ping",
         "shutdown")
_TRACEBACK_LINES = 6


class Cancelled(Exception):
    """A ``cancel`` request stopped this job."""


def jsonable(value: Any) -> Any:
    """Plain JSON types from results: NumPy arrays/scalars, paths, dataclasses, NaN -> None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return jsonable(value.to_dict())
        return jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    return str(value)


class Worker:
    """The request loop, independent of the streams (tests drive it in-process).

    Args:
        output: where answers and progress lines go (one JSON object per line, flushed).
    """

    def __init__(self, output: IO[str]):
        self.output = output
        self.sessions: dict[str, Any] = {}
        self.models: dict[tuple, tuple] = {}
        self.model_loads = 0  # networks actually read from disk (tests read it)
        self._names = itertools.count(1)
        self._cancelled: set = set()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.stopping = False

    # ------------------------------------------------------------------ output

    def send(self, message: dict) -> None:
        text = json.dumps(jsonable(message), allow_nan=False)
        with self._write_lock:
            self.output.write(text + "\n")
            self.output.flush()

    def answer_error(self, request_id, exc: BaseException, **extra) -> None:
        message = {"id": request_id, "ok": False, "error": str(exc) or type(exc).__name__, "kind": type(exc).__name__}
        if not isinstance(exc, (SpinectError, Cancelled)):
            lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
            message["traceback"] = "".join(lines[-_TRACEBACK_LINES:])
            message["error"] = f"internal error ({type(exc).__name__}): {exc}"
        message.update(extra)
        self.send(message)

    # ------------------------------------------------------------------ requests

    def note_cancel(self, request: dict) -> None:
        """Called by the reader as soon as a cancel line arrives (so a running job sees it)."""
        target = (request.get("args") or {}).get("target", request.get("target"))
        if target is not None:
            with self._lock:
                self._cancelled.add(_key(target))

    def is_cancelled(self, request_id) -> bool:
        with self._lock:
            return _key(request_id) in self._cancelled

    def handle(self, request: dict) -> None:
        """Answer one parsed request (never raises, except SystemExit-like BaseExceptions)."""
        request_id = request.get("id")
        try:
            if self.is_cancelled(request_id) and request.get("verb") != "cancel":
                raise Cancelled(f"request {request_id} was cancelled before it started")
            verb = request.get("verb")
            if not isinstance(verb, str) or verb not in VERBS:
                raise InputError(f"unknown verb {verb!r}; known verbs: {', '.join(VERBS)}")
            args = request.get("args", {})
            if args is None:
                args = {}
            if not isinstance(args, dict):
                raise InputError(f"'args' must be a JSON object, not {type(args).__name__}")
            progress = self._progress(request_id)
            result = getattr(self, f"_verb_{verb}")(request, dict(args), progress)
            self.send({"id": request_id, "ok": True, "result": result})
        except Cancelled as exc:
            self.answer_error(request_id, exc, cancelled=True)
        except Exception as exc:  # noqa: BLE001 - a bug answers an error and the worker keeps serving
            if not isinstance(exc, SpinectError):
                log.exception("spinect serve: request %r failed", request_id)
            self.answer_error(request_id, exc)
        finally:
            with self._lock:
                self._cancelled.discard(_key(request_id))

    def _progress(self, request_id) -> Callable[[str, float, str], None]:
        last = {"stage": None, "fraction": -1.0}

        def report(stage: str, fraction: float, message: str) -> None:
            if self.is_cancelled(request_id):
                raise Cancelled(f"request {request_id} was cancelled")
            fraction = float(fraction)
            if stage == last["stage"] and fraction - last["fraction"] < 0.005 and fraction < 1.0:
                return
            last.update(stage=stage, fraction=fraction)
            self.send({"id": request_id, "progress": {"stage": stage, "fraction": round(fraction, 4), "message": message}})

        return report

    # ------------------------------------------------------------------ verbs

    def _verb_ping(self, request, args, progress):
        return {"protocol": PROTOCOL_VERSION, "pid": os.getpid(), "sessions": sorted(self.sessions)}

    def _verb_shutdown(self, request, args, progress):
        self.stopping = True
        return {"stopping": True}

    def _verb_cancel(self, request, args, progress):
        target = args.get("target", request.get("target"))
        if target is None:
            raise InputError("cancel needs args.target: the id of the request to cancel")
        return {"target": target}

    def _verb_sessions(self, request, args, progress):
        return {name: _session_summary(s) for name, s in self.sessions.items()}

    def _verb_close(self, request, args, progress):
        name = _session_name(request, args)
        if self.sessions.pop(name, None) is None:
            raise InputError(f"no open session {name!r}")
        return {"session": name, "closed": True}

    def _verb_open_triangles(self, request, args, progress):
        from spinect.geometry.session import TriangleSession

        name = request.get("session", args.pop("session", None))
        if name is None:
            name = f"s{next(self._names)}"
        if not isinstance(name, (str, int)) or isinstance(name, bool):
            raise InputError(f"a session name must be a string, not {name!r}")
        name = str(name)
        ras = bool(args.pop("ras", False))
        _expect(args, required=("seg", "level", "side"),
                optional=("triangle", "ct", "structures", "endplate", "around", "auto", "reach_skin",
                          "allow_missing_nerve"), verb="open_triangles")
        files = {}
        for key in ("seg", "ct", "structures"):
            if args.get(key) is not None:
                files[key] = _existing_file(args[key], key)
        self.sessions.pop(name, None)  # replaced even if the new one fails to open
        session = TriangleSession.open(
            files["seg"], level=args["level"], side=args["side"], triangle=args.get("triangle", "kambin"),
            ct=files.get("ct"), structures=files.get("structures"),
            endplate_lps_mm=_points(args.get("endplate"), "endplate", ras=ras),
            around_lps_mm=_points(args.get("around"), "around", ras=ras),
            auto=_flag(args, "auto"), reach_skin=_flag(args, "reach_skin"),
            allow_missing_nerve=_flag(args, "allow_missing_nerve"), progress=progress,
            prefetch_reach=True,  # Optimize later finds the 110 mm crop built while the user looks
        )
        session.progress = lambda stage, fraction, message: None  # later requests pass their own
        self.sessions[name] = session
        return {"session": name, **_session_summary(session)}

    def _verb_measure(self, request, args, progress):
        session, name = self._session(request, args)
        target, settings = _target_and_settings(args, verb="measure")
        session.progress = progress
        try:
            result = session.measure(target.pop("mode"), theta_deg=_number(args, "theta_deg", 0.0),
                                     phi_deg=_number(args, "phi_deg", 0.0), settings=settings, **target)
        finally:
            session.progress = lambda stage, fraction, message: None
        payload = result.to_dict()
        payload["files"] = {}
        payload["session"] = name
        payload["fields_built"] = session.fields_built
        return payload

    def _verb_optimize(self, request, args, progress):
        from spinect.geometry.measure import TrianglesResult, _write
        from spinect.geometry.trajectory import SearchSettings

        session, name = self._session(request, args)
        search_args = {}
        for key in ("step_deg", "refine_step_deg", "robust_deg"):
            if key in args:
                search_args[key] = _number(args, key, 0.0)
        if "objective" in args:
            search_args["objective"] = args["objective"]
        heatmap = args.get("heatmap")
        target, settings = _target_and_settings(args, verb="optimize", extra=("step_deg", "refine_step_deg", "robust_deg", "objective", "heatmap"))
        if heatmap is not None:
            from spinect.io import check_output_path

            check_output_path(heatmap)
        search = SearchSettings(**search_args)
        mode = target.pop("mode")
        session.progress = progress
        try:
            measured = session.measure(mode, theta_deg=_number(args, "theta_deg", 0.0),
                                       phi_deg=_number(args, "phi_deg", 0.0), settings=settings, **target)
            trajectory = session.optimize(mode, settings=settings, search=search, **target)
        finally:
            session.progress = lambda stage, fraction, message: None
        result = TrianglesResult(measured.measurement, trajectory, measured.frame_source, {}, measured.warnings,
                                 measured.nerve_voxels_near_target)
        files = _write(result, None, heatmap)
        payload = result.to_dict()
        payload["files"] = {k: str(v) for k, v in files.items()}
        payload["session"] = name
        payload["fields_built"] = session.fields_built
        return payload

    def _verb_segment(self, request, args, progress):
        import spinect.model_file as model_file
        from spinect import api
        from spinect.requests import SegmentRequest

        if "input" not in args:
            raise InputError("segment needs args.input: the CT file or DICOM folder")
        if not isinstance(args["input"], str) or not Path(args["input"]).exists():
            raise InputError(f"input CT not found: {args['input']}")
        segment_request = SegmentRequest.from_dict(args)  # the JSON of spinect.requests.SegmentRequest
        original = model_file.load_model
        model_file.load_model = self._cached_loader(original)
        try:
            result = api.segment(segment_request, progress=progress)
        finally:
            model_file.load_model = original
        return {
            "output_path": result.output_path, "model_path": result.model_path, "device": result.device,
            "timings_s": result.timings_s, "window_counts": result.window_counts,
            "removed_islands": result.removed_islands, "vvc": result.vvc, "members": result.members,
            "review": result.review, "provenance": result.provenance, "peak_rss_mb": result.peak_rss_mb,
            "labels_size": list(result.labels.GetSize()), "models_cached": len(self.models),
            "settings": result.provenance.get("settings"), "request": segment_request.to_dict(),
        }

    def _verb_triangles(self, request, args, progress):
        from spinect import api
        from spinect.requests import TrianglesRequest

        for key in ("seg", "ct", "structures"):
            if args.get(key) is not None:
                _existing_file(args[key], key)
        triangles_request = TrianglesRequest.from_dict(args)  # the JSON of spinect.requests.TrianglesRequest
        result = api.triangles(triangles_request, progress=progress)
        payload = result.to_dict()
        payload["files"] = {k: str(v) for k, v in result.files.items()}
        payload["request"] = triangles_request.to_dict()
        return payload

    def _cached_loader(self, load):
        def cached(path, *, device="cpu", allow_untrained=False, verify_sha256=True):
            stat = Path(path).stat()
            key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size, str(device), bool(allow_untrained))
            if key not in self.models:
                self.models[key] = load(path, device=device, allow_untrained=allow_untrained, verify_sha256=verify_sha256)
                self.model_loads += 1
            return self.models[key]

        return cached

    def _session(self, request, args):
        name = _session_name(request, args)
        session = self.sessions.get(name)
        if session is None:
            raise InputError(f"no open session {name!r} (open one with open_triangles)")
        return session, name


# ---------------------------------------------------------------------------- argument checks


def _key(request_id) -> str:
    return json.dumps(request_id, sort_keys=True)


def _session_name(request: dict, args: dict) -> str:
    name = request.get("session", args.pop("session", None))
    if name is None:
        raise InputError("this verb needs 'session': the name open_triangles answered")
    return str(name)


def _session_summary(session) -> dict:
    return {"level": session.level, "side": session.side, "triangle": session.triangle,
            "fields_built": session.fields_built, "has_level_map": session.structures is not None}


def _expect(args: dict, *, required, optional, verb: str) -> None:
    missing = [k for k in required if args.get(k) is None]
    if missing:
        raise InputError(f"{verb} needs args {', '.join(missing)}")
    unknown = sorted(set(args) - set(required) - set(optional))
    if unknown:
        raise InputError(f"{verb}: unknown argument(s) {', '.join(unknown)}; accepted: "
                         f"{', '.join(sorted(set(required) | set(optional)))}")


def _existing_file(value, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise InputError(f"{what} must be a file path (a string), not {value!r}")
    path = Path(value)
    if not path.exists():
        raise InputError(f"{what} file not found: {path}")
    return path


def _flag(args: dict, key: str) -> bool:
    value = args.get(key, False)
    if not isinstance(value, bool):
        raise InputError(f"{key} must be true or false, not {value!r}")
    return value


def _number(args: dict, key: str, default: float) -> float:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{key} must be a finite number, not {value!r}")
    return float(value)


def _points(value, what: str, *, ras: bool, count: int | None = None) -> np.ndarray | None:
    if value is None:
        return None
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numbers (x y z per point, LPS mm), not {value!r}") from None
    if array.size == 0 or array.size % 3 or not np.all(np.isfinite(array)):
        raise InputError(f"{what} must be finite x y z triples; got {array.size} value(s)")
    array = array.reshape(-1, 3)
    if count is not None and len(array) != count:
        raise InputError(f"{what} needs {count} point(s) (x y z each); got {len(array)}")
    if ras:
        array = array * np.array([-1.0, -1.0, 1.0])
    return array


def _target_and_settings(args: dict, *, verb: str, extra: tuple = ()):
    from spinect.geometry.window import WindowSettings

    ras = _flag(args, "ras")
    _expect(args, required=(), optional=("mode", "theta_deg", "phi_deg", "points", "seed", "pedicle", "ras", "reachable",
                                         "instrument_radius_mm", "pixel_mm") + extra, verb=verb)
    mode = args.get("mode")
    if mode is None:
        mode = "points" if args.get("points") is not None else "seed" if args.get("seed") is not None else "auto"
    if mode not in ("points", "seed", "auto"):
        raise InputError(f"mode must be points, seed or auto, not {mode!r}")
    points = _points(args.get("points"), "points", ras=ras, count=3)
    seed = _points(args.get("seed"), "seed", ras=ras, count=1)
    pedicle = _points(args.get("pedicle"), "pedicle", ras=ras, count=1)
    defaults = WindowSettings()
    settings = WindowSettings(
        pixel_mm=_number(args, "pixel_mm", defaults.pixel_mm),
        instrument_radius_mm=_number(args, "instrument_radius_mm", defaults.instrument_radius_mm),
        depth_before_mm=None if _flag(args, "reachable") else defaults.depth_before_mm,
    )
    target = {"mode": mode, "points_lps_mm": points, "seed_lps_mm": None if seed is None else seed[0],
              "upper_line_lps_mm": None if pedicle is None else pedicle[0]}
    return target, settings


# ---------------------------------------------------------------------------- the loop


def _parse(line: str):
    """(request dict, None) or (None, error answer)."""
    try:
        request = json.loads(line)
    except ValueError as exc:
        return None, {"id": None, "ok": False, "error": f"not a JSON line: {exc}", "kind": "ProtocolError"}
    if not isinstance(request, dict):
        return None, {"id": None, "ok": False, "error": "a request must be a JSON object", "kind": "ProtocolError"}
    return request, None


def _measure_key(request: dict):
    args = request.get("args") if isinstance(request.get("args"), dict) else {}
    return str(request.get("session", args.get("session")))


def supersede(pending: deque) -> list[dict]:
    """Drop every ``measure`` that a later ``measure`` of the same session replaces (no other
    request for that session between them); returns the dropped requests."""
    dropped, keep = [], deque()
    items = list(pending)
    for i, request in enumerate(items):
        if request.get("verb") == "measure":
            key = _measure_key(request)
            later = None
            for other in items[i + 1:]:
                if _measure_key(other) == key and other.get("verb") in ("measure", "optimize", "close", "open_triangles"):
                    later = other
                    break
            if later is not None and later.get("verb") == "measure":
                dropped.append(request)
                continue
        keep.append(request)
    pending.clear()
    pending.extend(keep)
    return dropped


def serve(stdin: IO[str], stdout: IO[str], *, idle_exit_s: float | None = None) -> int:
    """Answer requests from ``stdin`` on ``stdout`` until ``shutdown`` or the end of ``stdin``
    (or, with ``idle_exit_s``, until no request came for that many seconds)."""
    worker = Worker(stdout)
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            for line in stdin:
                line = line.strip()
                if not line:
                    continue
                request, error = _parse(line)
                if request is not None and request.get("verb") == "cancel":
                    worker.note_cancel(request)
                lines.put((request, error))
        finally:
            lines.put(None)

    threading.Thread(target=read, name="spinect-serve-stdin", daemon=True).start()
    pending: deque = deque()
    eof = False
    worker.send({"id": None, "ok": True, "result": {"ready": True, "protocol": PROTOCOL_VERSION, "pid": os.getpid()}})
    while not worker.stopping:
        if not pending and not eof:
            try:
                item = lines.get(timeout=idle_exit_s)
            except queue.Empty:
                log.info("spinect serve: no request for %g s; exiting", idle_exit_s)
                break
            if item is None:
                eof = True
            else:
                _take(item, pending, worker)
        while not eof:  # everything already sent, without blocking
            try:
                item = lines.get_nowait()
            except queue.Empty:
                break
            if item is None:
                eof = True
            else:
                _take(item, pending, worker)
        for request in supersede(pending):
            worker.send({"id": request.get("id"), "ok": False, "superseded": True, "kind": "Superseded",
                         "error": "superseded by a newer measure request of the same session"})
        if not pending:
            if eof:
                break
            continue
        worker.handle(pending.popleft())
    return 0


def _take(item, pending: deque, worker: Worker) -> None:
    request, error = item
    if error is not None:
        worker.send(error)
    else:
        pending.append(request)
