"""One long-lived ``spinect serve`` worker for the module (issue 16, item 3), Qt-free.

:class:`WorkerClient` starts ``python -m spinect serve`` lazily (the first request), in its own
process group with the backend environment of :func:`backend_environment`, restarts it when it
died, lets it exit after ``idle_exit_s`` without requests (``spinect serve --idle-exit``), and
stops it on :meth:`WorkerClient.stop` (module cleanup) and at interpreter exit. Requests are
matched to answers by id; :meth:`WorkerClient.poll` never blocks, so the widget's ``QTimer``
drives it like :class:`SegmentationJob`.

:class:`WorkerTrianglesJob` is :class:`SpineCTSegmentationLib.triangles.TrianglesJob`'s
interface (``start``, ``poll``, ``running``, ``wait``, ``cancel``, ``finish``, ``cleanup``) on
the worker: the segmentation is opened once per label file, level, side and level map (a
session), then each view change or point move is one ``measure`` request on it. Cancel kills
the worker's process group (the next request starts a fresh worker).
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import queue
import signal
import subprocess
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from SpineCTSegmentationLib.process import Progress, ProcessEvent, backend_environment

__all__ = [
    "IDLE_EXIT_S",
    "WorkerUnavailable",
    "WorkerDied",
    "WorkerRequest",
    "WorkerClient",
    "WorkerTrianglesJob",
]

#: The worker exits after this many seconds without a request (it keeps sessions and models in memory).
IDLE_EXIT_S = 600.0
#: How long :meth:`WorkerClient.start` waits for the worker's ready line (it blocks the caller;
#: the worker imports only NumPy before it is ready, well under a second normally).
READY_TIMEOUT_S = 20.0


class WorkerUnavailable(RuntimeError):
    """The worker could not be started (the caller falls back to one process per request)."""


class WorkerDied(RuntimeError):
    """The worker exited (killed, crashed or idle) before answering."""


@dataclass
class WorkerRequest:
    """One request and, once :attr:`done`, its answer.

    Attributes:
        id, verb: as sent. ok/result/error/kind/superseded/cancelled: the answer's fields.
        progress: the latest progress report. events: progress lines for the log.
        generation: which worker start it was sent to.
    """

    id: int
    verb: str
    generation: int
    done: bool = False
    ok: bool = False
    result: object = None
    error: str | None = None
    kind: str | None = None
    superseded: bool = False
    cancelled: bool = False
    progress: Progress | None = None
    events: list = field(default_factory=list)

    def answer(self, message: Mapping) -> None:
        self.done = True
        self.ok = bool(message.get("ok"))
        self.result = message.get("result")
        self.error = message.get("error")
        self.kind = message.get("kind")
        self.superseded = bool(message.get("superseded"))
        self.cancelled = bool(message.get("cancelled"))
        if message.get("traceback"):
            self.events.append(ProcessEvent(str(message["traceback"])))


class WorkerClient:
    """The module's ``spinect serve`` process (see the module docstring).

    Args:
        python_executable: ``PythonSlicer`` in Slicer.
        base_env: the environment to start from (Slicer's startup environment).
        backend_dir: folder containing the ``spinect`` package (default: the module's).
        device: ``cpu`` hides GPUs from the worker (the triangle tool never needs one).
        idle_exit_s: the worker exits after this many seconds without a request (None: never).
        cwd: the worker's working folder.
    """

    def __init__(self, *, python_executable: str, base_env: Mapping[str, str], backend_dir: str | os.PathLike | None = None,
                 device: str = "cpu", idle_exit_s: float | None = IDLE_EXIT_S, cwd: str | os.PathLike | None = None):
        if backend_dir is None:
            from SpineCTSegmentationLib.pipeline import BACKEND_DIR

            backend_dir = BACKEND_DIR
        self.command = [str(python_executable), "-m", "spinect", "serve"]
        if idle_exit_s is not None:
            self.command += ["--idle-exit", f"{float(idle_exit_s):g}"]
        self.env = backend_environment(base_env, backend_dir=backend_dir, device=device)
        self.cwd = None if cwd is None else str(cwd)
        self.generation = 0  # worker starts so far; sessions belong to one generation
        self.starts = 0
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._requests: dict[int, WorkerRequest] = {}
        self._log: list[str] = []
        self._log_lines = 0  # lines logged so far (the list keeps the last 200)
        self._log_lock = threading.Lock()
        self._ready = False
        ref = weakref.ref(self)
        atexit.register(lambda: ref() is not None and ref().stop())

    # ------------------------------------------------------------------ process

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, *, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start the worker if it is not running and wait for its ready line.

        Raises:
            WorkerUnavailable: the executable cannot run, or the worker exited or stayed silent.
        """
        if self.alive and self._ready:
            return
        self._fail_pending("the worker exited before answering")
        self.stop()
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
        try:
            proc = subprocess.Popen(self.command, env=self.env, cwd=self.cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, **kwargs)
        except OSError as exc:
            raise WorkerUnavailable(f"could not start {' '.join(self.command)}: {exc}") from exc
        self._proc = proc
        self._lines = queue.Queue()
        self.generation += 1
        self.starts += 1
        threading.Thread(target=_read_lines, args=(proc.stdout, self._lines), name="spinect-worker-out", daemon=True).start()
        threading.Thread(target=self._read_log, args=(proc.stderr,), name="spinect-worker-err", daemon=True).start()
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                self.stop()
                raise WorkerUnavailable(f"the worker did not answer within {ready_timeout_s:g} s") from None
            if line is None:
                code = proc.wait()
                log = "\n".join(self.log_tail())
                self._proc = None
                raise WorkerUnavailable(f"the worker exited at start (code {code}): {log[-500:]}")
            message = _decode(line)
            if message is not None and message.get("id") is None and (message.get("result") or {}).get("ready"):
                self._ready = True
                return

    def stop(self, *, grace_s: float = 2.0) -> None:
        """Ask the worker to exit, then kill its process group (nothing of it is left)."""
        proc, self._proc, self._ready = self._proc, None, False
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.stdin.write(b'{"id": null, "verb": "shutdown"}\n')
                proc.stdin.flush()
                proc.stdin.close()
                proc.wait(timeout=grace_s)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        _kill_group(proc)
        self._fail_pending("the worker was stopped")

    def kill(self) -> None:
        """Kill the worker's process group now (cancel); running requests fail as cancelled."""
        proc, self._proc, self._ready = self._proc, None, False
        if proc is not None:
            _kill_group(proc)
        self._fail_pending("cancelled (the worker was stopped)", cancelled=True)

    def log_tail(self, n: int = 20) -> list[str]:
        with self._log_lock:
            return list(self._log[-n:])

    def log_since(self, mark: int) -> tuple[list[str], int]:
        """The worker's log lines (stderr) after ``mark`` (a count from an earlier call; 0 at
        first) and the new mark; lines older than the last 200 are gone."""
        with self._log_lock:
            new = self._log_lines - mark
            return (list(self._log[-new:]) if new > 0 else []), self._log_lines

    def _read_log(self, stream) -> None:
        for raw in stream:
            with self._log_lock:
                self._log.append(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
                self._log_lines += 1
                del self._log[:-200]

    # ------------------------------------------------------------------ requests

    def request(self, verb: str, args: Mapping | None = None, *, session: str | None = None) -> WorkerRequest:
        """Send a request (starting or restarting the worker first); returns at once."""
        if not self.alive or not self._ready:
            self.start()
        request = WorkerRequest(next(self._ids), verb, self.generation)
        message = {"id": request.id, "verb": verb, "args": dict(args or {})}
        if session is not None:
            message["session"] = session
        self._requests[request.id] = request
        try:
            self._proc.stdin.write((json.dumps(message) + "\n").encode("utf-8"))
            self._proc.stdin.flush()
        except (OSError, ValueError):  # it died between the check and the write: once more on a fresh one
            self._requests.pop(request.id, None)
            self.start()
            return self.request(verb, args, session=session)
        return request

    def poll(self) -> list[WorkerRequest]:
        """Route the answers that arrived (never blocks); returns the requests finished now.

        When the worker died, its unanswered requests finish with ``kind = "WorkerDied"``.
        """
        finished = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:  # the worker's output ended: it exited
                if self._proc is not None:
                    self._proc.wait()
                    self._proc, self._ready = None, False
                finished += self._fail_pending(f"the worker exited before answering; log: {' | '.join(self.log_tail(5))}")
                break
            message = _decode(line)
            if message is None:
                continue
            request = self._requests.get(message.get("id")) if isinstance(message.get("id"), int) else None
            if request is None:
                continue
            if "progress" in message:
                p = message["progress"] or {}
                request.progress = Progress(str(p.get("stage", "")), min(max(float(p.get("fraction", 0.0)), 0.0), 1.0),
                                            str(p.get("message", "")))
                request.events.append(ProcessEvent(f"{p.get('stage')}: {p.get('message')}", request.progress))
                continue
            request.answer(message)
            self._requests.pop(request.id, None)
            finished.append(request)
        return finished

    def wait(self, request: WorkerRequest, timeout_s: float | None = None, *, interval_s: float = 0.02) -> WorkerRequest:
        """Block until ``request`` is answered (scripts and tests)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not request.done:
            self.poll()
            if request.done:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no answer to {request.verb} #{request.id} within {timeout_s} s")
            time.sleep(interval_s)
        return request

    def call(self, verb: str, args: Mapping | None = None, *, session: str | None = None, timeout_s: float | None = None):
        """Send and wait; the result, or raises ``RuntimeError`` with the worker's message."""
        request = self.wait(self.request(verb, args, session=session), timeout_s)
        if not request.ok:
            raise RuntimeError(request.error or f"{verb} failed")
        return request.result

    def _fail_pending(self, message: str, *, cancelled: bool = False) -> list[WorkerRequest]:
        failed = []
        for request in list(self._requests.values()):
            request.answer({"ok": False, "error": message, "kind": "Cancelled" if cancelled else "WorkerDied",
                            "cancelled": cancelled})
            failed.append(request)
        self._requests.clear()
        return failed


def _read_lines(stream, lines: queue.Queue) -> None:
    try:
        for raw in stream:
            lines.put(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
    finally:
        lines.put(None)


def _decode(line: str) -> dict | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the worker's whole process group: ``PythonSlicer`` is a launcher whose child is the
    real Python, which may outlive it."""
    if os.name == "nt":
        if proc.poll() is None:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, check=False)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass


# --------------------------------------------------------------------------- triangles on the worker


class WorkerTrianglesJob:
    """A triangle measurement on the worker, with :class:`TrianglesJob`'s interface.

    Args:
        client: the worker.
        inputs: the written files (:class:`TriangleInputs`).
        level, side, points_ras, seed_ras, theta_deg, phi_deg, optimize: as :class:`TrianglesJob`.
        heatmap: also write the search's heat map (with ``optimize``; the module shows none, so off).
    """

    def __init__(self, client: WorkerClient, inputs, *, level: str, side: str,
                 points_ras: Sequence[Sequence[float]] | None = None, seed_ras: Sequence[float] | None = None,
                 theta_deg: float = 0.0, phi_deg: float = 0.0, optimize: bool = False, heatmap: bool = False):
        import numpy as np

        self.client = client
        self.inputs = inputs
        self.level, self.side = level, side
        self.optimize = optimize
        ct_path = inputs.add_ct() if optimize else inputs.ct_path
        self.open_args = {"seg": str(inputs.seg_path), "level": level, "side": side}
        if inputs.structures_path is not None:
            self.open_args["structures"] = str(inputs.structures_path)
        if ct_path is not None:
            self.open_args["ct"] = str(ct_path)
        args: dict = {"theta_deg": float(theta_deg), "phi_deg": float(phi_deg), "ras": True}
        if points_ras is not None:
            args.update(mode="points", points=np.asarray(points_ras, float).reshape(3, 3).tolist())
        elif seed_ras is not None:
            args.update(mode="seed", seed=np.asarray(seed_ras, float).reshape(3).tolist())
        else:
            args["mode"] = "auto"
        self.heatmap_path = Path(inputs.folder) / f"heatmap-{os.getpid()}-{id(self)}.png" if optimize and heatmap else None
        if self.heatmap_path is not None:
            args["heatmap"] = str(self.heatmap_path)
        self.args = args
        self.requests: list[WorkerRequest] = []
        self.progress = Progress("read", 0.0, "")
        self.command = ["spinect serve:", "optimize" if optimize else "measure", json.dumps(args)]
        self._cancelled = False

    def start(self) -> None:
        """Send the requests (opening a session first when the files or level changed).

        Raises:
            WorkerUnavailable: the worker could not be started.
        """
        session, opening = _session_for(self.client, self.open_args)
        if opening:
            self.requests.append(self.client.request("open_triangles", self.open_args, session=session))
        self.requests.append(self.client.request("optimize" if self.optimize else "measure", self.args, session=session))

    @property
    def running(self) -> bool:
        return bool(self.requests) and not all(r.done for r in self.requests)

    def poll(self) -> list[ProcessEvent]:
        self.client.poll()
        events = []
        for request in self.requests:
            events += request.events
            request.events = []
            if request.progress is not None:
                self.progress = request.progress
        return events

    def wait(self, timeout_s: float | None = None) -> list[ProcessEvent]:
        events = []
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.running:
            events += self.poll()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not answer within {timeout_s} s")
            time.sleep(0.02)
        return events + self.poll()

    def cancel(self) -> None:
        """Kill the worker's process group (the only way to stop a running measurement)."""
        if self.running:
            self._cancelled = True
            self.client.kill()

    def finish(self) -> dict:
        """The report (as ``spinect triangles --json`` writes it).

        Raises:
            TrianglesFailed: the worker answered an error, was cancelled, or died.
        """
        from SpineCTSegmentationLib.triangles import TrianglesFailed

        if self.running:
            raise RuntimeError("the worker is still measuring; wait for it or cancel it first")
        if self._cancelled or any(r.cancelled for r in self.requests):
            raise TrianglesFailed("the measurement was cancelled")
        for request in self.requests:
            if not request.ok:
                if request.verb == "open_triangles":
                    _forget_session(self.client, self.open_args)
                raise TrianglesFailed(request.error or f"{request.verb} failed")
        return dict(self.requests[-1].result)

    def cleanup(self) -> None:
        """Stop the measurement if it still runs (as :meth:`TrianglesJob.cleanup`); remove its heat map."""
        self.cancel()
        if self.heatmap_path is not None:
            try:
                self.heatmap_path.unlink()
            except OSError:
                pass


def _session_key(open_args: Mapping) -> str:
    return json.dumps(open_args, sort_keys=True)


def _session_for(client: WorkerClient, open_args: Mapping) -> tuple[str, bool]:
    """The session name for these open arguments and whether it must be opened now.

    The client keeps one triangle session (the module measures one segmentation at a time):
    other arguments close the old one. A restarted worker has no sessions.
    """
    state = getattr(client, "_triangle_session", None)
    key = _session_key(open_args)
    if state is not None and state[0] == client.generation and state[1] == key and client.alive:
        return state[2], False
    if state is not None and state[0] == client.generation and client.alive:
        client.request("close", session=state[2])  # its answer is not needed
    if not client.alive:
        client.start()
    name = f"triangles-{client.generation}-{next(_session_names)}"
    client._triangle_session = (client.generation, key, name)
    return name, True


def _forget_session(client: WorkerClient, open_args: Mapping) -> None:
    state = getattr(client, "_triangle_session", None)
    if state is not None and state[1] == _session_key(open_args):
        client._triangle_session = None


_session_names = itertools.count(1)
