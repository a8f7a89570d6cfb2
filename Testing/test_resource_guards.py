"""Resource guards (issue 18): a segmentation estimated beyond sane bounds is refused before any work.

The estimate (:func:`spinect.api.estimate_memory`) counts voxels on the network's 1 mm grid (the
CT's extent decides, not its voxel count), times the float32 input, class scores, blending
weights and the labels. A CT whose header claims 10 mm voxels is small on disk but huge on that
grid: it must be refused with the numbers and ``--force``, exit 2, nothing written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import spinect.api as api
from conftest import make_tiny_model
from spinect.cli import main
from spinect.errors import SpinectError
from spinect.plan import ModelPlan

SIZE_XYZ = (100, 100, 101)  # 10 mm voxels: 1000 x 1000 x 1010 mm, about 1.01e9 voxels at 1 mm
GRID_VOXELS = 1000 * 1000 * 1010
BYTES_PER_VOXEL = 4 + 4 * 3 + 4 + 1  # input, 3 class scores, blending weights (float32); labels (uint8)


def _wide_ct(path: Path) -> Path:
    """1 M voxels of 10 mm (about 30 kB as .nii.gz): air around a soft-tissue slab with some bone."""
    hu = np.full(SIZE_XYZ[::-1], -1000, np.int16)
    hu[20:80, 30:70, 30:70] = 40
    hu[40:60, 45:55, 45:55] = 700
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((10.0, 10.0, 10.0))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def wide_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wide")
    return _wide_ct(folder / "ct.nii.gz"), make_tiny_model(folder / "tiny.pt")


def test_estimate_counts_the_1mm_grid_not_the_file(wide_case):
    ct = sitk.ReadImage(str(wide_case[0]))
    plan = ModelPlan(architecture={"name": "spinect_unet", "base_width": 4})
    voxels, needed = api.estimate_memory(ct, plan)
    assert voxels == GRID_VOXELS
    assert needed == GRID_VOXELS * BYTES_PER_VOXEL  # 19.8 GiB
    assert needed > api.MAX_MEMORY_BYTES
    assert wide_case[0].stat().st_size < 200_000  # small on disk
    levels = ModelPlan(architecture={"name": "spinect_unet", "base_width": 4},
                       class_names=("background", "bone", "nerve", "L3", "L4", "L5", "sacrum"))
    assert api.estimate_memory(ct, levels)[1] == GRID_VOXELS * (4 + 4 * 7 + 4 + 1)  # more classes, more scores


@pytest.mark.parametrize("existing", [False, True])
def test_huge_extent_is_refused_with_the_numbers_and_force(tmp_path, wide_case, capsys, existing):
    ct, model = wide_case
    out = tmp_path / "labels.nii.gz"
    if existing:
        out.write_bytes(b"an earlier result")
    code = main(["segment", str(ct), str(out), "--model", str(model), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for words in ("1000 x 1000 x 1010 mm", f"{GRID_VOXELS:,} voxels", f"{GRID_VOXELS * BYTES_PER_VOXEL / 2**30:.1f} GiB",
                  "limit 16 GiB", "--force", "voxel size"):
        assert words in err, (words, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["labels.nii.gz"] if existing else [])
    if existing:
        assert out.read_bytes() == b"an earlier result"


def test_api_refuses_too(wide_case, tmp_path):
    ct, model = wide_case
    with pytest.raises(SpinectError, match=r"GiB of working memory .*--force"):
        api.segment(ct, tmp_path / "labels.nii.gz", model=model, device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_huge_ct_is_refused_from_its_header_before_its_voxels_are_read(wide_case, tmp_path, monkeypatch):
    import spinect.io

    def no_read(*args, **kwargs):
        raise AssertionError("the voxels were read before the size check")

    monkeypatch.setattr(spinect.io, "read_ct", no_read)
    ct, model = wide_case
    with pytest.raises(SpinectError, match=r"GiB of working memory"):
        api.segment(ct, tmp_path / "labels.nii.gz", model=model, device="cpu")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bound", ["MAX_MEMORY_BYTES", "MAX_WINDOWS"])
def test_force_overrides_the_bound_with_a_warning(tmp_path, synthetic_ct_path, tiny_model, monkeypatch, caplog, capsys,
                                                  bound):
    """The same small CT: refused under a tiny bound, segmented with --force (the labels as without the bound)."""
    reference = tmp_path / "reference.nii.gz"
    assert main(["segment", str(synthetic_ct_path), str(reference), "--model", str(tiny_model), "--device", "cpu",
                 "--progress-lines"]) == 0
    monkeypatch.setattr(api, bound, 1000 if bound == "MAX_MEMORY_BYTES" else 1)
    out = tmp_path / "labels.nii.gz"
    args = ["segment", str(synthetic_ct_path), str(out), "--model", str(tiny_model), "--device", "cpu", "--progress-lines"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--force" in err and "Traceback" not in err and not out.exists()
    with caplog.at_level(logging.WARNING, logger="spinect"):
        assert main(args + ["--force"]) == 0
    assert "running anyway (--force)" in caplog.text
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(reference))))


def test_ordinary_ct_is_far_below_the_bound(synthetic_ct_path):
    """A 512 x 512 x 300 CT of 0.8 x 0.8 x 1 mm needs about 1.3 GiB: never near the bound."""
    ct = sitk.Image(512, 512, 300, sitk.sitkInt16)
    ct.SetSpacing((0.8, 0.8, 1.0))
    voxels, needed = api.estimate_memory(ct, ModelPlan(architecture={"name": "spinect_unet", "base_width": 4}))
    assert voxels == 410 * 410 * 300
    assert needed < api.MAX_MEMORY_BYTES / 8
