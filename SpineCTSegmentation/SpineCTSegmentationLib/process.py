"""Run the ``spinect segment`` / ``spinect triangles`` CLI in a child process without blocking Slicer's GUI.

The child is started with :class:`subprocess.Popen`, the way ``slicer.util.launchConsoleProcess``
starts it (Slicer's startup environment, hidden console on Windows, stderr merged into stdout),
with one difference: it gets its own process group (POSIX session / Windows process group).
``PythonSlicer`` is a launcher that starts the real Python as *its* child, so killing the
launcher alone would leave the inference running; Cancel kills the whole group instead.

A reader thread moves output lines into a queue; the GUI drains it with :meth:`BackendProcess.poll`
from a timer, so nothing here touches Qt. Progress lines follow the backend contract::

    SPINECT_PROGRESS {"stage": "infer", "fraction": 0.42, "message": "patch 12/30"}
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

__all__ = [
    "PROGRESS_TOKEN",
    "ERROR_PREFIX",
    "is_error_line",
    "Progress",
    "ProcessEvent",
    "parse_progress_line",
    "build_segment_command",
    "build_triangles_command",
    "backend_environment",
    "BackendProcess",
]

PROGRESS_TOKEN = "SPINECT_PROGRESS"
#: Start of the one-line error message ``spinect segment`` prints on failure (every verb
#: prints ``spinect <verb>: error: ...``; :func:`is_error_line` accepts all of them).
ERROR_PREFIX = "spinect segment: error:"
_ERROR_LINE = re.compile(r"^spinect [a-z]+: error: ")


def is_error_line(line: str) -> bool:
    """True for the one-line error message of any ``spinect`` verb."""
    return bool(_ERROR_LINE.match(line))


@dataclass(frozen=True)
class Progress:
    """One progress report of the backend.

    Attributes:
        stage: ``read``, ``resample``, ``infer``, ``postprocess``, ``write`` or ``done``.
        fraction: overall fraction done, clipped to 0..1.
        message: human-readable detail.
    """

    stage: str
    fraction: float
    message: str = ""


@dataclass(frozen=True)
class ProcessEvent:
    """One line of child output: ``progress`` is set for progress lines, else ``None``."""

    line: str
    progress: Progress | None = None


def parse_progress_line(line: str) -> Progress | None:
    """Parse a ``SPINECT_PROGRESS {json}`` line; any other line (or bad JSON) gives ``None``."""
    text = line.strip()
    if not text.startswith(PROGRESS_TOKEN):
        return None
    try:
        data = json.loads(text[len(PROGRESS_TOKEN):])
        fraction = min(max(float(data.get("fraction", 0.0)), 0.0), 1.0)
        return Progress(stage=str(data.get("stage", "")), fraction=fraction, message=str(data.get("message", "")))
    except (ValueError, TypeError, AttributeError):
        return None


def build_segment_command(
    python_executable: str,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    model_path: str | os.PathLike | None = None,
    device: str = "auto",
    smoothing_mm: float | None = None,
    verbose: bool = False,
    tta: bool = False,
    uncertainty_path: str | os.PathLike | None = None,
    review_path: str | os.PathLike | None = None,
    keep_islands: bool = False,
    whole_volume: bool = False,
    levels: bool = False,
    mirror: str = "auto",
    levels_by: str = "auto",
) -> list[str]:
    """Argument list of ``python -m spinect segment`` with progress lines on.

    Args:
        python_executable: ``PythonSlicer`` in Slicer, any Python with spinect's deps elsewhere.
        input_path: CT file written from the input volume node.
        output_path: label map file (``.nrrd``/``.nii.gz``) or ``.seg.nrrd`` to write.
        model_path: user's model file; ``None`` uses the backend's default model.
        device: ``auto``, ``cuda`` or ``cpu``.
        smoothing_mm: median smoothing kernel in mm; ``None`` keeps the model's default.
        verbose: ask the backend for detailed log lines.
        tta: flip test-time augmentation (4 predictions fused; needed for the uncertainty outputs).
        uncertainty_path: write the voxel-wise uncertainty map (vote entropy, nats) here.
        review_path: write the review list of the most uncertain regions (JSON) here.
        keep_islands: keep isolated false-positive islands (removed and reported by default).
        whole_volume: run the network on every window in the body, not only near bone.
        levels: also label vertebral levels (``--levels``; needs a level model): a label-map
            output gets its level map beside it, ``<name>_levels<suffix>``.
        mirror: mirroring test-time augmentation (``--mirror``): auto (lr on a GPU, none on the
            CPU), none, lr or lr-ap.
        levels_by: how levels are named (``--levels-by``): auto (a level model, else counting up
            from the sacrum), counting (no level model; down from the last rib too), model.
    """
    from spinect.requests import SegmentRequest  # standard library only: light in Slicer's process

    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, not {device!r}")
    if (uncertainty_path is not None or review_path is not None) and not tta:
        raise ValueError("the uncertainty map and review list need tta=True")
    # The options, their flags and their checks come from the backend's request class.
    request = SegmentRequest(input=input_path, output=output_path, model=model_path, device=device,
                             smoothing_mm=None if smoothing_mm is None else float(smoothing_mm), tta=tta,
                             uncertainty_output=uncertainty_path, review_output=review_path, keep_islands=keep_islands,
                             whole_volume=whole_volume, levels=levels, mirror=mirror, levels_by=levels_by)
    command = [str(python_executable), "-m", "spinect", "segment", *request.to_argv(), "--progress-lines"]
    if verbose:
        command.append("--verbose")
    return command


def build_triangles_command(
    python_executable: str,
    seg_path: str | os.PathLike,
    json_path: str | os.PathLike,
    *,
    level: str,
    side: str,
    points_ras: Sequence[Sequence[float]] | None = None,
    seed_ras: Sequence[float] | None = None,
    structures_path: str | os.PathLike | None = None,
    ct_path: str | os.PathLike | None = None,
    theta_deg: float = 0.0,
    phi_deg: float = 0.0,
    optimize: bool = False,
    heatmap_path: str | os.PathLike | None = None,
) -> list[str]:
    """Argument list of ``python -m spinect triangles`` (coordinates RAS mm, as Slicer gives them).

    Exactly one mode: ``points_ras`` (three points A, B, C), ``seed_ras`` (one point), or neither
    (automatic: needs ``structures_path``). A level map given in the other modes still gives the
    endplate frame.

    Args:
        python_executable: ``PythonSlicer`` in Slicer.
        seg_path: bone/nerve label map file (0 background, 1 bone, 2 nerve).
        json_path: the JSON report to write (the readout's source of truth).
        level: ``L4L5`` or ``L5S1``; side: ``left`` or ``right``.
        points_ras: (3, 3) A, B, C in RAS mm; seed_ras: (3,) RAS mm.
        structures_path: level/structure map (codes of docs/phantom.md).
        ct_path: CT file (skin entry point of the path).
        theta_deg, phi_deg: the view measured (degrees).
        optimize: also search the best view; heatmap_path: where its heat map PNG goes.

    Raises:
        ValueError: no mode, two modes, or a wrong number of points.
    """
    from spinect.requests import TrianglesRequest  # standard library only: light in Slicer's process

    if points_ras is not None and seed_ras is not None:
        raise ValueError("give three points or one seed, not both")
    if points_ras is not None and len(points_ras) != 3:
        raise ValueError(f"the triangle needs exactly three points A, B, C; {len(points_ras)} are placed")
    if points_ras is None and seed_ras is None and structures_path is None:
        raise ValueError("automatic mode needs a level map: choose the structure map volume")

    def lps(points):  # RAS -> LPS; the request is in LPS, the command line in RAS (--ras), as Slicer shows them
        return None if points is None else [[-float(p[0]), -float(p[1]), float(p[2])] for p in points]

    request = TrianglesRequest(
        seg=seg_path, level=str(level), side=str(side), points_lps_mm=lps(points_ras),
        seed_lps_mm=None if seed_ras is None else lps([seed_ras])[0], auto=points_ras is None and seed_ras is None,
        structures=structures_path, ct=ct_path, theta_deg=float(theta_deg), phi_deg=float(phi_deg), optimize=optimize,
        json_path=json_path, heatmap_path=heatmap_path if optimize else None)
    command = [str(python_executable), "-m", "spinect", "triangles", *request.from_ras().to_argv(), "--progress-lines"]
    if points_ras is not None or seed_ras is not None:
        command.append("--ras")
    return command


def backend_environment(
    base_env: Mapping[str, str], *, backend_dir: str | os.PathLike, device: str = "auto"
) -> dict[str, str]:
    """Environment for the child: ``spinect`` importable, GPUs hidden when CPU is forced.

    Args:
        base_env: the environment to start from (Slicer's startup environment).
        backend_dir: folder that contains the ``spinect`` package; prepended to PYTHONPATH.
        device: ``cpu`` sets ``CUDA_VISIBLE_DEVICES=-1`` so torch cannot pick a GPU.
    """
    env = dict(base_env)
    paths = [str(backend_dir)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"  # progress lines must arrive while the child runs
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


class BackendProcess:
    """A child process whose output is read in the background and drained by :meth:`poll`.

    Example:
        >>> proc = BackendProcess(command, env=env)
        >>> proc.start()
        >>> while proc.running: events = proc.poll(); ...   # from a GUI timer
        >>> proc.returncode
    """

    def __init__(self, command: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None):
        self.command = [str(c) for c in command]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.cancelled = False
        self.error_line: str | None = None
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._eof = False

    def start(self) -> None:
        """Start the child; raises ``OSError`` if the executable cannot be run."""
        kwargs: dict = {}
        if os.name == "nt":
            info = subprocess.STARTUPINFO()
            info.dwFlags = subprocess.STARTF_USESHOWWINDOW
            info.wShowWindow = 0
            kwargs["startupinfo"] = info
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True
        self._proc = subprocess.Popen(
            self.command, env=self.env, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs,
        )
        self._reader = threading.Thread(target=self._read_output, name="spinect-output", daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line.rstrip("\r\n"))
        self._lines.put(None)  # end of output

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        """True until the child has exited *and* all its output has been polled."""
        return self._proc is not None and not (self._eof and self._proc.poll() is not None)

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def poll(self) -> list[ProcessEvent]:
        """Output lines that arrived since the last call (never blocks)."""
        events = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._eof = True
                if self._proc is not None:
                    self._proc.wait()
                break
            if is_error_line(line):
                self.error_line = line
            events.append(ProcessEvent(line, parse_progress_line(line)))
        return events

    def wait(self, timeout_s: float | None = None, *, interval_s: float = 0.05) -> list[ProcessEvent]:
        """Block until the child ends (or ``timeout_s`` passes); returns all events seen."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        events = []
        while self.running:
            events += self.poll()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"backend still running after {timeout_s} s: {' '.join(self.command)}")
            time.sleep(interval_s)
        return events + self.poll()

    def cancel(self, *, grace_s: float = 3.0) -> None:
        """Stop the child and everything it started (terminate, then kill after ``grace_s``)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self.cancelled = True
        if os.name == "nt":
            # taskkill /T walks the tree; the launcher's child is not in our job otherwise.
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._proc.pid)], capture_output=True, check=False)
        else:
            _signal_group(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(self._proc.pid, signal.SIGKILL)  # also reaches children that outlived the leader
        self._proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
