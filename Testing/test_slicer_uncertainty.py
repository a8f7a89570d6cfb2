"""The module's uncertainty option without Slicer's GUI: TTA arguments, overlay volume, review table.

Runs on Slicer's real MRML classes from the ``slicer-core`` wheel (skipped if missing). The
review list is written by the backend's own ``spinect.uncertainty.review`` from a known map; a
stand-in backend (no torch) hands the files to the job the way ``spinect segment`` would.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

MODULE_DIR = Path(__file__).resolve().parents[1] / "SpineCTSegmentation"
sys.path.insert(0, str(MODULE_DIR))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from SpineCTSegmentationLib.options import Device  # noqa: E402
from SpineCTSegmentationLib.process import build_segment_command  # noqa: E402


def test_tta_option_adds_the_backend_arguments(tmp_path):
    from spinect.cli import build_parser

    command = build_segment_command("PythonSlicer", tmp_path / "in.nrrd", tmp_path / "out.nrrd", device="cpu", tta=True,
                                    uncertainty_path=tmp_path / "u.nii.gz", review_path=tmp_path / "r.json")
    args = build_parser().parse_args(command[3:])
    assert args.tta and (args.uncertainty, args.review) == (str(tmp_path / "u.nii.gz"), str(tmp_path / "r.json"))
    plain = build_parser().parse_args(build_segment_command("py", "a.nrrd", "b.nrrd")[3:])
    assert not plain.tta and plain.uncertainty is None and plain.review is None
    with pytest.raises(ValueError, match="tta"):
        build_segment_command("py", "a.nrrd", "b.nrrd", uncertainty_path="u.nii.gz")


def _oblique(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 2.0))
    image.SetOrigin((-30.0, 12.5, 100.0))
    angle = np.deg2rad(20)
    image.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1))
    return image


@pytest.fixture(scope="module")
def backend_files(tmp_path_factory):
    """A label map, an uncertainty map with two blobs, and the backend's review JSON of them."""
    from spinect.uncertainty.review import uncertain_regions, write_review

    folder = tmp_path_factory.mktemp("uncertainty")
    labels = np.zeros((12, 20, 24), np.uint8)
    labels[2:9, 4:14, 5:15] = 1
    labels[4:7, 6:9, 16:21] = 2
    u = np.zeros(labels.shape, np.float32)
    u[3:6, 5:8, 5:9] = 0.9  # on bone
    u[4:7, 6:9, 17:20] = 0.5  # on nerve
    label_image, u_image = _oblique(labels), _oblique(u)
    sitk.WriteImage(label_image, str(folder / "labels.nrrd"))
    sitk.WriteImage(u_image, str(folder / "uncertainty.nii.gz"))
    regions = uncertain_regions(u_image, label_image, class_names=("background", "bone", "nerve"))
    write_review(regions, folder / "review.json")
    return dict(folder=folder, labels=labels, u=u, image=label_image, regions=regions)


_FAKE_SEGMENT = """
import shutil, sys
from pathlib import Path
args = sys.argv[1:]
source = Path(__import__("os").environ["FAKE_SPINECT_FILES"])
shutil.copy(source / "labels.nrrd", args[2])
shutil.copy(source / "uncertainty.nii.gz", args[args.index("--uncertainty") + 1])
shutil.copy(source / "review.json", args[args.index("--review") + 1])
print('SPINECT_PROGRESS {"stage": "done", "fraction": 1.0, "message": "done"}', flush=True)
"""


@pytest.fixture
def loaded(slicer, backend_files, tmp_path):
    """A segmentation job with the uncertainty option, run by a stand-in backend, then loaded."""
    from test_slicer_logic import volume_node_from_image

    from SpineCTSegmentationLib.pipeline import SegmentationJob

    package = tmp_path / "fake" / "spinect"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(_FAKE_SEGMENT)
    scene = slicer.vtkMRMLScene()
    for view in ("Red", "Yellow", "Green"):
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(view)
    inferno = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "Inferno")  # Slicer loads this colour file at startup
    inferno.SetTypeToWarm1()
    ct = volume_node_from_image(slicer, scene, backend_files["image"], "ct")
    env = dict(os.environ, FAKE_SPINECT_FILES=str(backend_files["folder"]))
    job = SegmentationJob(ct, python_executable=sys.executable, base_env=env, backend_dir=package.parent, work_dir=tmp_path,
                          device=Device.CPU, uncertainty=True)
    assert "--tta" in job.process.command
    job.start()
    job.wait(timeout_s=60)
    segmentation = job.finish(None)
    volume, table = job.load_uncertainty()
    job.cleanup()
    return dict(scene=scene, ct=ct, volume=volume, table=table, segmentation=segmentation, inferno=inferno, job=job)


def test_uncertainty_map_is_a_colour_overlay_in_the_slice_views(slicer, loaded, backend_files):
    from SpineCTSegmentationLib.uncertainty import OVERLAY_OPACITY

    volume, scene = loaded["volume"], loaded["scene"]
    assert volume.IsA("vtkMRMLScalarVolumeNode") and not volume.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), backend_files["u"])
    display = volume.GetDisplayNode()
    assert display.GetColorNodeID() == loaded["inferno"].GetID()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.0, 0.9))
    assert display.GetApplyThreshold() and 0.0 < display.GetLowerThreshold() < 0.5  # certain voxels transparent
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    assert composites.GetNumberOfItems() == 3
    for i in range(3):
        composite = composites.GetItemAsObject(i)
        assert composite.GetForegroundVolumeID() == volume.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(OVERLAY_OPACITY)
    assert not loaded["job"].temp_dir.exists()


def test_review_table_rows_are_the_backends_regions_with_ras_centroids(slicer, loaded, backend_files):
    import vtk

    from SpineCTSegmentationLib.uncertainty import review_row_centroid_ras

    table, volume = loaded["table"].GetTable(), loaded["volume"]
    regions = backend_files["regions"]
    assert table.GetNumberOfRows() == len(regions) == 2
    assert [regions[0].class_name, regions[1].class_name] == ["bone", "nerve"]  # larger total uncertainty first
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(ras_to_ijk)
    for row, region in enumerate(regions):
        assert table.GetValueByName(row, "rank").ToInt() == region.rank
        assert table.GetValueByName(row, "class_name").ToString() == region.class_name
        assert table.GetValueByName(row, "voxels").ToInt() == region.voxels
        for column in ("volume_mm3", "mean_uncertainty", "max_uncertainty"):
            assert table.GetValueByName(row, column).ToDouble() == pytest.approx(getattr(region, column), rel=1e-6)
        ras = review_row_centroid_ras(loaded["table"], row)
        np.testing.assert_allclose(ras, np.asarray(region.centroid_lps_mm) * [-1, -1, 1], atol=1e-6)
        # the jump target lands on the region's centre voxel of the uncertainty map
        ijk = ras_to_ijk.MultiplyPoint([*ras, 1.0])[:3]
        np.testing.assert_allclose(ijk[::-1], region.centroid_zyx, atol=1e-4)
    with pytest.raises(IndexError):
        review_row_centroid_ras(loaded["table"], 2)


def test_colour_table_falls_back_when_slicers_colour_files_are_absent(slicer, backend_files):
    from SpineCTSegmentationLib.uncertainty import read_scalar_volume, show_uncertainty_overlay, uncertainty_color_node

    scene = slicer.vtkMRMLScene()
    volume = read_scalar_volume(backend_files["folder"] / "uncertainty.nii.gz", scene, name="u")
    show_uncertainty_overlay(volume)
    colour = uncertainty_color_node(scene)
    assert volume.GetDisplayNode().GetColorNodeID() == colour.GetID() and colour.GetName() == "SpineCT uncertainty"
    assert uncertainty_color_node(scene) is colour  # made once
    with pytest.raises(OSError, match="missing"):
        read_scalar_volume(backend_files["folder"] / "absent.nii.gz", scene, name="x")


def test_bad_review_file_is_refused(tmp_path):
    from SpineCTSegmentationLib.uncertainty import read_review

    path = tmp_path / "review.json"
    path.write_text('[{"rank": 1}]')
    with pytest.raises(ValueError, match="not a review list"):
        read_review(path)
