"""The network sees every CT in LPS axis order, whatever order its voxels are stored in.

A CT stored sagittally (e.g. PIR, as the real lumbar crop is) used to reach the network with its
axes swapped: the model, trained on axial volumes, then segmented sideways anatomy (real crop bone
Dice 0.742 instead of 0.778). Reference: ``sitk.DICOMOrient`` (ITK's own reorientation).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from spinect.api import segment
from spinect.manifest import DatasetCase
from spinect.phantom import generate_case
from spinect.preprocess.resample import lps_axis_order, resample_to_spacing
from spinect.train.dataset import load_case

CODES = ("LPS", "PIR", "RAI", "SAL", "ILP", "RAS", "ASL")


def _grid_of(image: sitk.Image):
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


@pytest.fixture(scope="module")
def phantom():
    case = generate_case(5, shape_zyx=(40, 72, 64), spacing_zyx_mm=(2.0, 1.0, 1.2), window_tables=False)
    return case.ct, case.labels


@pytest.mark.parametrize("code", CODES)
def test_lps_axis_order_is_itks_reorientation(phantom, code):
    stored = sitk.DICOMOrient(phantom[0], code)
    size, spacing, origin, direction = lps_axis_order(stored)
    reference = sitk.DICOMOrient(stored, "LPS")
    assert size == reference.GetSize()
    np.testing.assert_allclose(spacing, reference.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(origin, reference.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(direction, reference.GetDirection(), atol=1e-9)


def test_oblique_grid_is_ordered_by_its_nearest_axes():
    image = sitk.Image([10, 20, 30], sitk.sitkInt16)
    angle = np.radians(20.0)  # a gantry tilt about x, stored with z and y swapped
    c, s = np.cos(angle), np.sin(angle)
    image.SetDirection((1, 0, 0, 0, -s, c, 0, c, s))  # x -> L, y -> ~S, z -> ~P
    size, _, _, direction = lps_axis_order(image)
    assert size == (10, 30, 20)
    d = np.asarray(direction).reshape(3, 3)
    assert np.all(np.diag(d) > 0.9)  # the network's axes point along L, P and S


@pytest.mark.parametrize("code", ["PIR", "RAI"])
def test_resampled_network_grid_matches_reoriented_image(phantom, code):
    stored = sitk.Cast(sitk.DICOMOrient(phantom[0], code), sitk.sitkFloat32)
    ours = resample_to_spacing(stored, (1.0, 1.0, 1.0), orient_lps=True)
    reference = resample_to_spacing(sitk.DICOMOrient(stored, "LPS"), (1.0, 1.0, 1.0))
    assert ours.GetSize() == reference.GetSize()
    np.testing.assert_allclose(ours.GetOrigin(), reference.GetOrigin(), atol=1e-6)
    a, b = sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(reference)
    # The last 1 mm slab of the 40 x 2 mm axis has its centres exactly on the input's edge (39.5 in
    # index): in or out by a rounding of its position. Everything else must agree.
    inside = (a > -1024.0) & (b > -1024.0)
    assert inside.mean() > 0.9
    assert np.mean(inside == ((a > -1024.0) | (b > -1024.0))) >= 1.0 - 1.0 / a.shape[0] - 1e-9
    np.testing.assert_allclose(a[inside], b[inside], atol=0.05)


@pytest.fixture(scope="module")
def phantom_1mm():
    # 1 mm voxels: the network's grid is the CT's own, so runs in any storage order see the very same
    # voxels (at other spacings, voxel centres exactly half-way between two input voxels may round
    # either way, and those differ by one voxel).
    case = generate_case(5, shape_zyx=(64, 72, 64), window_tables=False)
    return case.ct, case.labels


def test_segmenting_a_sagittally_stored_ct_gives_the_axial_result(phantom_1mm):
    ct = phantom_1mm[0]
    axial = segment(ct, None).labels
    stored = sitk.DICOMOrient(ct, "PIR")
    sagittal = segment(stored, None).labels
    assert _grid_of(sagittal) == _grid_of(stored)  # the labels stay on the input's own grid
    back = sitk.GetArrayFromImage(sitk.DICOMOrient(sagittal, "LPS"))
    want = sitk.GetArrayFromImage(axial)
    assert (want == 1).sum() > 1000  # the default model finds the phantom's bone
    np.testing.assert_array_equal(back, want)


def test_training_loads_a_sagittally_stored_case_in_lps_order(tmp_path, phantom_1mm):
    ct, labels = phantom_1mm
    paths = {}
    for code in ("LPS", "PIR"):
        image_path, label_path = tmp_path / f"{code}_ct.nii.gz", tmp_path / f"{code}_labels.nii.gz"
        sitk.WriteImage(sitk.DICOMOrient(ct, code), str(image_path))
        sitk.WriteImage(sitk.DICOMOrient(labels, code), str(label_path))
        paths[code] = load_case(DatasetCase(code, image_path, label_path))
    assert paths["PIR"].labels.shape == paths["LPS"].labels.shape
    np.testing.assert_array_equal(paths["PIR"].labels, paths["LPS"].labels)
    np.testing.assert_allclose(paths["PIR"].image_hu, paths["LPS"].image_hu, atol=1.0)
