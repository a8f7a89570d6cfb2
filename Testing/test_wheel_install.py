"""Packaging: the wheel holds the default model, and installing it keeps the user's PyTorch.

The wheel is built from a copy of the package sources (the work tree stays clean) with the
project's own setuptools, offline. It is installed into a fresh virtual environment that already
"holds" a PyTorch: the test venv's own site-packages (torch 2.13.0 CPU build and the other
dependencies, but not spinect) is put on the fresh venv's path through a ``.pth`` file, the way a
user's environment with its own CUDA build would offer torch. pip then resolves the wheel's
dependencies (``torch>=2.4.1``, ...) with ``--no-index``: if it wanted any other torch it would fail
instead of downloading one. Afterwards torch must import from the same place with the same version,
and ``spinect segment`` from the fresh venv must segment a small phantom with the default model
shipped inside the wheel. About 30-60 s on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE")
PACKAGE = Path("SpineCTSegmentation") / "spinect"
MODEL_FILES = ("spinect/models/spinect_default.pt", "spinect/models/spinect_default.json",
               "spinect/models/MODEL_CARD.md")


def _offline_pip_env() -> dict[str, str]:
    """pip without any index or machine-wide configuration: nothing can be downloaded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PYTHONNOUSERSITE="1")
    return env


def _run(args, *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the sources (no build/ or egg-info left in the work tree)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in SOURCES:
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / PACKAGE, source / PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", out, source],
         cwd=root, env=_offline_pip_env())
    wheels = list(out.glob("spinect-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_the_default_model_its_sidecar_and_model_card(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in MODEL_FILES:
            assert name in names, f"{name} missing from {wheel.name}"
        weights = archive.read("spinect/models/spinect_default.pt")
        sidecar = json.loads(archive.read("spinect/models/spinect_default.json"))
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    # the packaged weights are the very file the sidecar describes (not a Git LFS pointer or a stale copy)
    assert hashlib.sha256(weights).hexdigest() == sidecar["sha256"]
    assert weights == (REPO / PACKAGE / "models" / "spinect_default.pt").read_bytes()
    assert any(name.startswith("spinect/phantom/data/anatomy/") and name.endswith(".npz") for name in names)
    # a range, not a pin: the user's own PyTorch build is kept when it is in range
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert "Requires-Dist: torch>=2.4.1" in requires
    assert not any(line.startswith("Requires-Dist: torch=") for line in requires)


def _shim_of_our_site_packages(folder: Path) -> Path:
    """A folder of links to this venv's installed packages, leaving spinect itself out."""
    site = Path(sysconfig.get_paths()["purelib"])
    folder.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.startswith(("spinect", "__editable__", "_virtualenv")) or name.endswith(".pth") or name == "__pycache__":
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


def _torch_identity(python: Path, cwd: Path) -> str:
    return _run([python, "-c", "import torch; print(torch.__version__, torch.__file__)"], cwd=cwd).strip()


def test_installing_the_wheel_keeps_the_existing_torch_and_segment_runs(wheel, tmp_path):
    venv = tmp_path / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    fresh_site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           cwd=tmp_path).strip())
    (fresh_site / "user_torch.pth").write_text(str(_shim_of_our_site_packages(tmp_path / "user_site")) + "\n")
    before = _torch_identity(python, tmp_path)
    assert "2." in before.split()[0]
    missing = subprocess.run([python, "-c", "import spinect"], cwd=tmp_path, capture_output=True)
    assert missing.returncode != 0, "spinect must not be importable before the wheel is installed"

    # dependency resolution, not --no-deps: the installed torch must satisfy the wheel's range
    log = _run([sys.executable, "-m", "pip", "--python", python, "install", wheel], cwd=tmp_path,
               env=_offline_pip_env())
    assert "Successfully installed spinect-" in log
    installed = log.split("Successfully installed", 1)[1].split()
    assert all(not item.startswith("torch") for item in installed), log
    assert _torch_identity(python, tmp_path) == before
    assert not (fresh_site / "torch").exists()

    ct = _small_phantom(tmp_path / "phantom")
    out = tmp_path / "out" / "ct.seg.nrrd"
    out.parent.mkdir()
    _run([venv / "bin" / "spinect", "segment", ct, out, "--device", "cpu"], cwd=tmp_path, timeout=240)
    assert out.is_file()
    record = json.loads(out.with_name(out.name + ".provenance.json").read_text())
    model_file = Path(record["model"]["file"])
    assert model_file.is_relative_to(fresh_site), f"the model came from {model_file}, not from the installed wheel"
    assert record["model"]["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert record["software"]["torch"] == before.split()[0]
    import slicerio

    segmentation = slicerio.read_segmentation(str(out))
    assert {s["name"] for s in segmentation["segments"]} >= {"bone", "nerve"}
    assert int((segmentation["voxels"] == 1).sum()) > 0, "the default model found no bone in the phantom"


def _small_phantom(folder: Path) -> Path:
    from spinect.phantom import make_phantom

    written = make_phantom(folder, n=1, seed=0, shape_zyx=(40, 96, 96), spacing_zyx_mm=(2.0, 1.6, 1.6))
    return next(p for p in written if p.name.endswith("_ct.nii.gz"))
