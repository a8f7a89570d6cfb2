"""The triangle tool runs with only what Slicer ships and what requirements.txt installs (issue 16, item 4).

A fresh virtual environment stands in for Slicer's Python before the module installed anything
for segmentation: numpy, scipy and SimpleITK (which Slicer ships) plus exactly the triangle
tool's lines of ``Resources/requirements.txt`` (those named in ``TRIANGLE_REQUIREMENTS``, what
the widget checks before measuring) installed with pip. No PyTorch, no MONAI. The backend is not
installed: ``SpineCTSegmentation/`` goes on ``PYTHONPATH``, as Slicer runs it. Then:

* ``spinect.geometry``, ``spinect.serve``, ``spinect.commands.triangles`` and ``spinect.cli``
  import there (torch and monai cannot even be found), and the module's dependency check finds
  nothing missing;
* the module's own logic (:class:`BackendRunner`, with that venv's python as ``PythonSlicer``)
  measures a small phantom label map written to disk: on the ``spinect serve`` worker
  (open_triangles + measure, then optimize with a coarse search and the heat map) and as one
  ``spinect triangles`` process (the fallback); every number equals the dev venv's for the same
  request.

Versions are pinned to the dev venv's (``pip freeze`` of it as a constraints file, with
``scripts/constraints.txt``), so the install is reproducible and the numbers can be compared
exactly. The venv is cached in ``~/.cache/spinect/triangle-venv/<key>`` (``$XDG_CACHE_HOME`` is
honoured), keyed by the hash of requirements.txt, the triangle requirements, the pins and the
interpreter: a rerun skips the install (about 25 s on 2 cores; PyPI or the configured index is
needed only then). Marked ``slow`` (deselect with ``-m "not slow"``); ``scripts/test.sh`` runs it.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SpineCTSegmentation"
sys.path.insert(0, str(MODULE_DIR))

from SpineCTSegmentationLib import dependencies  # noqa: E402

pytestmark = pytest.mark.slow

#: What Slicer's Python ships and the backend uses (never installed by the module; see requirements.txt).
SHIPPED = ("numpy", "scipy", "SimpleITK")
LEVEL, SIDE = "L5S1", "left"
LONG = 300.0  # generous: nothing here is timed
#: A coarse search (the full one is benchmarked elsewhere): 30° grid, no robustness box, no refinement.
COARSE_SEARCH = {"step_deg": 30.0, "robust_deg": 0.0, "refine_step_deg": 0.0}
IMPORTS = ("spinect.geometry", "spinect.geometry.session", "spinect.serve", "spinect.commands.serve",
           "spinect.commands.triangles", "spinect.cli", "spinect.api", "spinect.io")


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0).lower().replace("_", "-")


def _spec(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def triangle_requirement_lines() -> list[str]:
    """The lines of requirements.txt for the triangle tool (the packages TRIANGLE_REQUIREMENTS names)."""
    wanted = {_name(r) for r in dependencies.TRIANGLE_REQUIREMENTS}
    return [r for r in dependencies.read_requirements() if _name(r) in wanted]


def _pins() -> str:
    """Constraints: scripts/constraints.txt, then the dev venv's installed versions (what the tests use)."""
    lines = [line.split("#", 1)[0].strip() for line in (REPO / "scripts" / "constraints.txt").read_text().splitlines()]
    lines = [line for line in lines if line]
    pinned = {_name(line) for line in lines}
    frozen = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and _name(name) not in pinned | {"spinect"} and dist.version:
            frozen[_name(name)] = f"{_name(name)}=={dist.version}"
    return "\n".join(lines + sorted(frozen.values())) + "\n"


def _clean_env(venv: Path | None = None) -> dict[str, str]:
    """The environment a Slicer-started process would get: nothing of the dev venv (no VIRTUAL_ENV/PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "CONDA_PREFIX")}
    if venv is not None:
        env["PATH"] = os.pathsep.join([str(venv / "bin")] + [p for p in env.get("PATH", "").split(os.pathsep)
                                                             if p and not p.startswith(sys.prefix)])
    env["PYTHONNOUSERSITE"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _run(args, *, env, cwd, timeout: float = 900) -> str:
    done = subprocess.run([str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spinect" / "triangle-venv"


def _build(venv: Path, requirements: list[str], constraints: Path, log: Path) -> None:
    env = _clean_env()
    _run([sys.executable, "-m", "venv", venv], env=env, cwd=venv.parent)
    python = venv / "bin" / "python"
    versions = {name: importlib.metadata.version(name) for name in SHIPPED}
    shipped = [f"{name}=={version}" for name, version in versions.items()]
    out = _run([python, "-m", "pip", "install", "--disable-pip-version-check", "-c", constraints, *shipped, *requirements],
               env=env, cwd=venv.parent)
    log.write_text(out)


#: Cached venvs of other keys kept (most recently used first); older ones are removed when nobody uses them.
KEEP_OTHER_VENVS = 2


def _prune(root: Path, key: str) -> None:
    """Remove all but the KEEP_OTHER_VENVS most recently used other venvs (and crashed builds) that no test holds."""
    others = sorted((p for p in root.glob("*.lock") if p.stem != key),
                    key=lambda p: (root / p.stem).stat().st_mtime if (root / p.stem).exists() else 0.0, reverse=True)
    for lock_path in others[KEEP_OTHER_VENVS:] + [p for p in others[:KEEP_OTHER_VENVS] if not (root / p.stem).exists()]:
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # in use or being built
            for path in [root / lock_path.stem, *root.glob(f"{lock_path.stem}.building-*")]:
                shutil.rmtree(path, ignore_errors=True)
            for path in root.glob(f"{lock_path.stem}.*"):
                if path.is_file():
                    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def triangle_venv():
    """The cached venv: built under an exclusive lock, then renamed into place (a crashed build is never
    reused); held under a shared lock while the tests use it, so that pruning never removes it."""
    if os.name != "posix":
        pytest.skip("the venv cache uses POSIX file locks and venv/bin/python")
    requirements = triangle_requirement_lines()
    pins = _pins()
    key_text = json.dumps({"requirements.txt": dependencies.REQUIREMENTS_FILE.read_text(),
                           "triangle": list(dependencies.TRIANGLE_REQUIREMENTS), "shipped": SHIPPED, "pins": pins,
                           "python": [sys.version, sys.base_prefix, os.path.realpath(sys.executable)]}, sort_keys=True)
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / key
    with open(root / f"{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / "bin" / "python").exists():
            for stale in root.glob(f"{key}.building-*"):
                shutil.rmtree(stale, ignore_errors=True)
            building = root / f"{key}.building-{os.getpid()}"
            building.mkdir()
            (building / "constraints.txt").write_text(pins)
            started = time.monotonic()
            try:
                _build(building / "venv", requirements, building / "constraints.txt", building / "pip.log")
            except BaseException:
                shutil.rmtree(building, ignore_errors=True)
                raise
            (building / "built.json").write_text(json.dumps(
                {"seconds": round(time.monotonic() - started, 1), "requirements": requirements}))
            shutil.rmtree(venv, ignore_errors=True)
            # a venv may be moved as long as it is only run as venv/bin/python (-m pip, -m spinect)
            (building / "venv").rename(venv)
            for name in ("constraints.txt", "pip.log", "built.json"):
                (building / name).rename(root / f"{key}.{name}")
            building.rmdir()
        os.utime(venv)  # last use, for pruning
        fcntl.flock(lock, fcntl.LOCK_SH)
        _prune(root, key)
        yield venv


@pytest.fixture(scope="module")
def venv_python(triangle_venv) -> Path:
    return triangle_venv / "bin" / "python"


def test_the_dependency_check_and_requirements_txt_agree():
    """TRIANGLE_REQUIREMENTS (what the widget checks) are lines of requirements.txt, with the same versions."""
    lines = triangle_requirement_lines()
    assert sorted(map(_spec, lines)) == sorted(map(_spec, dependencies.TRIANGLE_REQUIREMENTS))
    assert not {_name(r) for r in dependencies.TRIANGLE_REQUIREMENTS} & {"torch", "monai"}
    assert not {_name(r) for r in lines} & {_name(s) for s in SHIPPED}, "Slicer ships these; pip must not replace them"


def test_spinect_imports_without_torch_or_monai(venv_python, tmp_path):
    """The lazily importing modules import with only the triangle requirements (torch is not there at all),
    and the module's dependency check, run in that Python, finds nothing missing."""
    script = f"""
import importlib, importlib.util, json, sys
assert importlib.util.find_spec("torch") is None and importlib.util.find_spec("monai") is None, "torch/monai installed"
for name in {IMPORTS!r}:
    importlib.import_module(name)
from SpineCTSegmentationLib import dependencies
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "monai"))
print(json.dumps({{"spinect": importlib.import_module("spinect").__file__, "heavy": heavy,
                  "missing": dependencies.find_missing(dependencies.TRIANGLE_REQUIREMENTS)}}))
"""
    env = _clean_env(venv_python.parent.parent)
    env["PYTHONPATH"] = str(MODULE_DIR)
    out = json.loads(_run([venv_python, "-c", script], env=env, cwd=tmp_path, timeout=300).strip().splitlines()[-1])
    assert Path(out["spinect"]).resolve().is_relative_to(MODULE_DIR), out["spinect"]  # the module's copy, as Slicer runs it
    assert out["heavy"] == [] and out["missing"] == []
    _run([venv_python, "-m", "spinect", "triangles", "--help"], env=env, cwd=tmp_path, timeout=300)


class _FileInputs:
    """The files :class:`TriangleInputs` writes from Slicer's nodes, written here from the phantom."""

    def __init__(self, folder: Path, labels, ct):
        import SimpleITK as sitk

        self.folder = folder
        self.seg_path = folder / "labels.nrrd"
        sitk.WriteImage(labels, str(self.seg_path))
        self._ct = ct
        self.ct_path: Path | None = None
        self.structures_path: Path | None = None

    def add_ct(self) -> Path:
        import SimpleITK as sitk

        if self.ct_path is None:
            self.ct_path = self.folder / "ct.nrrd"
            sitk.WriteImage(self._ct, str(self.ct_path))
        return self.ct_path


def _numbers(report: dict) -> str:
    return json.dumps({k: report[k] for k in ("measurement", "frame_source", "warnings", "obstacles", "trajectory")},
                      sort_keys=True)


def _finish(job) -> dict:
    job.wait(LONG)
    return job.finish()


def test_module_logic_measures_in_the_requirements_only_venv(venv_python, triangle_case, tmp_path):
    from SpineCTSegmentationLib.backend import BackendRunner
    from SpineCTSegmentationLib.triangles import TrianglesJob
    from SpineCTSegmentationLib.view import lps_to_ras
    from SpineCTSegmentationLib.worker import WorkerTrianglesJob
    from spinect import api
    from spinect.geometry.measure import crop_around
    from spinect.geometry.trajectory import SearchSettings

    truth = np.array(list(triangle_case.truth["levels"][LEVEL][SIDE]["kambin"]["points_lps_mm"].values()), float)
    centre = truth.mean(axis=0)
    (tmp_path / "in").mkdir()
    inputs = _FileInputs(tmp_path / "in", crop_around(triangle_case.labels, centre, 40.0),
                         crop_around(triangle_case.ct, centre, 40.0))
    ras = lps_to_ras(truth)
    lps = np.array([[-p[0], -p[1], p[2]] for p in ras])  # what the backend makes of the RAS points
    env = _clean_env(venv_python.parent.parent)

    # the dev venv, in this process: the same requests
    expected = api.triangles(inputs.seg_path, level=LEVEL, side=SIDE, points_lps_mm=lps, theta_deg=30.0, phi_deg=5.0)
    expected = json.loads(json.dumps(expected.to_dict()))
    searched = api.triangles(inputs.seg_path, level=LEVEL, side=SIDE, points_lps_mm=lps, theta_deg=30.0, phi_deg=5.0,
                             ct=inputs.add_ct(), optimize=True, search=SearchSettings(**COARSE_SEARCH))
    searched = json.loads(json.dumps(searched.to_dict()))
    assert searched["trajectory"] is not None

    # the worker, as the module drives it (BackendRunner with the venv's python as PythonSlicer)
    runner = BackendRunner(python_executable=str(venv_python), base_env=env, backend_dir=MODULE_DIR,
                           work_dir=tmp_path, idle_exit_s=None)
    inputs.ct_path = None  # the module writes the CT only when optimising
    try:
        job = runner.start_triangles(inputs, level=LEVEL, side=SIDE, points_ras=ras, theta_deg=30.0, phi_deg=5.0)
        assert isinstance(job, WorkerTrianglesJob), "the worker did not start in the requirements-only venv"
        assert _numbers(_finish(job)) == _numbers(expected)
        # Optimize (the module's request, with a coarse search and the heat map, which needs matplotlib)
        job = WorkerTrianglesJob(runner.triangles_worker(), inputs, level=LEVEL, side=SIDE, points_ras=ras, theta_deg=30.0,
                                 phi_deg=5.0, optimize=True, heatmap=True)
        job.args.update(COARSE_SEARCH)
        job.start()
        report = _finish(job)
        assert job.heatmap_path.is_file() and job.heatmap_path.stat().st_size > 0
        job.cleanup()
        assert _numbers(report) == _numbers(searched)
    finally:
        runner.stop()

    # one process per request (the module's fallback): PythonSlicer -m spinect triangles ... --json
    runner = BackendRunner(python_executable=str(venv_python), base_env=env, backend_dir=MODULE_DIR, work_dir=tmp_path,
                           use_worker=False)
    job = runner.start_triangles(inputs, level=LEVEL, side=SIDE, points_ras=ras, theta_deg=30.0, phi_deg=5.0)
    assert isinstance(job, TrianglesJob)
    try:
        report = _finish(job)
    finally:
        job.cleanup()
    assert _numbers(report) == _numbers(expected)
