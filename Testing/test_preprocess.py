"""Resampling keeps world geometry; normalisation uses the plan's statistics."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from spinect.preprocess import intensity_statistics, normalise_hu, resample_to_reference, resample_to_spacing


def _rotation_matrix(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    axis_v = np.asarray(axis, float) / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    k = np.array([[0, -axis_v[2], axis_v[1]], [axis_v[2], 0, -axis_v[0]], [-axis_v[1], axis_v[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _oblique_grid() -> sitk.Image:
    """Anisotropic (0.7, 0.8, 2.5 mm), oblique (25 deg about a tilted axis) 3D grid."""
    image = sitk.Image([70, 60, 24], sitk.sitkUInt8)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-12.3, 40.1, 7.9))
    image.SetDirection(tuple(_rotation_matrix((0.3, 1.0, 0.4), 25.0).ravel()))
    return image


def _physical_points_zyx(image: sitk.Image) -> np.ndarray:
    """(z, y, x, 3) world coordinates (x, y, z order in the last axis) of every voxel centre."""
    size = image.GetSize()
    idx = np.stack(np.meshgrid(np.arange(size[2]), np.arange(size[1]), np.arange(size[0]), indexing="ij"), -1)
    ijk = idx[..., ::-1].astype(float)  # (i, j, k) = (x, y, z) index
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return ijk * np.asarray(image.GetSpacing()) @ direction.T + np.asarray(image.GetOrigin())


def _sphere_label(grid: sitk.Image, centre: np.ndarray, radius_mm: float) -> sitk.Image:
    distance = np.linalg.norm(_physical_points_zyx(grid) - centre, axis=-1)
    label = sitk.GetImageFromArray((distance <= radius_mm).astype(np.uint8))
    label.CopyInformation(grid)
    return label


def test_round_trip_keeps_labels_at_their_physical_positions():
    grid = _oblique_grid()
    centre = np.asarray(grid.TransformContinuousIndexToPhysicalPoint((35.2, 29.7, 11.6)))
    radius_mm = 9.0
    label = _sphere_label(grid, centre, radius_mm)

    iso = resample_to_spacing(label, (1.0, 1.0, 1.0), interpolation="nearest", default_value=0)
    assert iso.GetSpacing() == (1.0, 1.0, 1.0)
    assert iso.GetDirection() == pytest.approx(grid.GetDirection())
    assert iso.GetOrigin() == pytest.approx(grid.GetOrigin())
    # On the 1 mm grid the sphere is still centred on the same world point.
    iso_points = _physical_points_zyx(iso)
    iso_mask = sitk.GetArrayFromImage(iso).astype(bool)
    assert np.linalg.norm(iso_points[iso_mask].mean(axis=0) - centre) < 0.5
    # Voxels well inside/outside stay inside/outside (the band is the voxel diagonals).
    iso_distance = np.linalg.norm(iso_points - centre, axis=-1)
    band = 0.5 * np.linalg.norm(grid.GetSpacing()) + 0.5 * np.sqrt(3)
    assert iso_mask[iso_distance < radius_mm - band].all()
    assert not iso_mask[iso_distance > radius_mm + band].any()

    back = resample_to_reference(iso, grid, interpolation="nearest")
    assert back.GetSize() == grid.GetSize()
    back_mask = sitk.GetArrayFromImage(back).astype(bool)
    distance = np.linalg.norm(_physical_points_zyx(grid) - centre, axis=-1)
    assert back_mask[distance < radius_mm - 2 * band].all()
    assert not back_mask[distance > radius_mm + 2 * band].any()
    original = sitk.GetArrayFromImage(label).astype(bool)
    dice = 2 * (original & back_mask).sum() / (original.sum() + back_mask.sum())
    assert dice > 0.9


def test_linear_interpolation_reproduces_a_linear_ramp_and_nearest_does_not():
    grid = sitk.Image([40, 30, 12], sitk.sitkFloat32)
    grid.SetSpacing((0.6, 0.6, 2.5))
    points = _physical_points_zyx(grid)
    ramp = lambda p: 3.0 * p[..., 0] - 2.0 * p[..., 1] + 5.0 * p[..., 2]  # noqa: E731 - HU per mm
    image = sitk.GetImageFromArray(ramp(points).astype(np.float32))
    image.CopyInformation(grid)

    linear = resample_to_spacing(image, (1.0, 1.0, 1.0), interpolation="linear")
    nearest = resample_to_spacing(image, (1.0, 1.0, 1.0), interpolation="nearest")
    iso_points = _physical_points_zyx(linear)
    inside = np.all(iso_points <= points.reshape(-1, 3).max(axis=0), axis=-1)  # skip extrapolated rim
    expected = ramp(iso_points)
    assert np.abs(sitk.GetArrayFromImage(linear)[inside] - expected[inside]).max() < 1e-2
    assert np.abs(sitk.GetArrayFromImage(nearest)[inside] - expected[inside]).max() > 1.0


def test_resampled_size_covers_the_same_extent():
    image = sitk.Image([512, 512, 20], sitk.sitkInt16)
    image.SetSpacing((0.977, 0.977, 2.0))
    iso = resample_to_spacing(image, (1.0, 1.0, 1.0))
    assert iso.GetSize() == (500, 500, 40)


def test_normalise_clips_then_z_scores():
    hu = np.array([-3000.0, -1000.0, 0.0, 500.0, 5000.0], dtype=np.float32)
    out = normalise_hu(hu, hu_window=(-1000, 2000), mean=100.0, std=50.0)
    np.testing.assert_allclose(out, [(-1000 - 100) / 50, (-1000 - 100) / 50, -2.0, 8.0, (2000 - 100) / 50])
    assert out.dtype == np.float32
    with pytest.raises(ValueError):
        normalise_hu(hu, hu_window=(-1000, 2000), mean=0.0, std=0.0)


def test_intensity_statistics_match_numpy_over_all_voxels():
    rng = np.random.default_rng(0)
    images = [rng.normal(0, 800, size=(5, 6, 7)), rng.normal(200, 300, size=(3, 4, 5))]
    mean, std = intensity_statistics(images, hu_window=(-1000, 2000))
    allv = np.concatenate([np.clip(i, -1000, 2000).ravel() for i in images])
    assert mean == pytest.approx(allv.mean())
    assert std == pytest.approx(allv.std())
