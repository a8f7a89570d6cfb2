"""Shared fixtures: tiny test-only models and small synthetic CTs (CPU, fast)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _cpu_threads():
    torch.set_num_threads(2)


def load_script(name: str, folder: str = "scripts"):
    """The module of ``<folder>/<name>.py`` (scripts and benchmarks are not packages), imported from its file."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def make_tiny_model(path: Path, *, training_status: str = "test-only", base_width: int = 4, seed: int = 0) -> Path:
    """Write a tiny random-weight SPINECT model (test-only) to ``path``."""
    from spinect.model_file import save_model
    from spinect.nets import build_network
    from spinect.plan import ModelPlan

    torch.manual_seed(seed)
    network = build_network(base_width=base_width)
    plan = ModelPlan(
        architecture={"name": "spinect_unet", "base_width": base_width},
        intensity_mean=-300.0,
        intensity_std=500.0,
        training_status=training_status,
        provenance={"purpose": "unit tests"},
    )
    save_model(path, network, plan)
    return path


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return make_tiny_model(tmp_path / "tiny.pt")


def make_synthetic_ct(*, size_xyz=(48, 40, 20), spacing_xyz=(0.8, 0.8, 2.0), seed=0) -> sitk.Image:
    """A small CT-like volume in HU: air around a soft-tissue cylinder with a bony block inside."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = size_xyz
    z, y, x = np.mgrid[0:nz, 0:ny, 0:nx]
    hu = np.full((nz, ny, nx), -1000.0, np.float32)
    body = ((x - nx / 2) * spacing_xyz[0]) ** 2 + ((y - ny / 2) * spacing_xyz[1]) ** 2 < (0.4 * nx * spacing_xyz[0]) ** 2
    hu[body] = 40.0
    bone = body & (np.abs(x - nx / 2) < nx / 8) & (np.abs(y - ny / 2) < ny / 8)
    hu[bone] = 700.0
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing(spacing_xyz)
    image.SetOrigin((-20.0, 15.0, 100.0))
    return image


def write_synthetic_cts(folder: Path, count: int) -> list[Path]:
    """``count`` small synthetic CTs (seeds 0..count-1) as ``folder/case{i}.nii.gz``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"case{i}.nii.gz"
        sitk.WriteImage(make_synthetic_ct(seed=i, size_xyz=(40, 36, 16)), str(path))
        paths.append(path)
    return paths


def csv_rows(path) -> list[dict]:
    """The rows of a CSV file with a header, as dicts."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def process_group_gone(pid: int) -> bool:
    """True when no process of the group ``pid`` is left."""
    import os

    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def synthetic_ct_path(tmp_path) -> Path:
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(make_synthetic_ct(), str(path))
    return path


@pytest.fixture(scope="module")
def slicer():
    """Slicer's MRML classes from the ``slicer-core`` wheel (skips where it is not installed)."""
    slicer = pytest.importorskip("slicer", reason="pip install slicer-core (Slicer's MRML without Qt)")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("'slicer' is not the slicer-core package")
    return slicer


@pytest.fixture(scope="session")
def triangle_case():
    """The phantom the Slicer triangle tests measure on (L5/S1 and L4/L5 in view)."""
    from spinect import phantom

    return phantom.generate_case(0, shape_zyx=(96, 128, 128), window_tables=False)


@pytest.fixture(scope="session")
def clean_canal_case():
    """A small noise-free phantom through the lumbar canal (the ligamentum flavum and anterior epidural tests)."""
    from spinect import phantom

    return phantom.generate_case(3, shape_zyx=(48, 80, 80), noise=False, window_tables=False, degeneration=False)


def phantom_voxels_in(case, body_lo, body_hi, *, stride: int = 1):
    """Voxels of a phantom case's grid covering a body-coordinate box (through the case's pose,
    :meth:`spinect.phantom.render.Grid.body_box`): ((N, 3) indices (z, y, x), (N, 3) body mm of
    their centres), every ``stride``-th voxel per axis; None when the box misses the grid."""
    import numpy as np

    root = case.grid.body_box()
    sub = root.sub(np.asarray(body_lo, float), np.asarray(body_hi, float))
    if sub is None:
        return None
    idx = np.stack(np.meshgrid(*(np.arange(a, b, stride) for a, b in zip(sub.lo, sub.hi)), indexing="ij"), -1).reshape(-1, 3)
    return idx, root.origin + idx @ root.step
