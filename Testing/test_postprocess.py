"""Median smoothing follows Slicer's mm-to-voxel rule and keeps classes disjoint."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from spinect.postprocess import median_kernel_voxels, median_smooth_labels


def _noisy_labels(shape=(30, 40, 40), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    labels[5:25, 5:20, 5:35] = 1
    labels[8:22, 25:35, 10:30] = 2
    flip = rng.random(shape) < 0.05
    labels[flip] = rng.integers(0, 3, size=int(flip.sum()))
    return labels


@pytest.mark.parametrize(
    "kernel_mm, spacing, expected",
    [(1.5, (0.7, 0.7, 0.7), (3, 3, 3)), (1.5, (1.0, 1.0, 1.0), (1, 1, 1)), (1.5, (2.0, 0.5, 0.5), (1, 3, 3)),
     (3.0, (0.5, 0.5, 0.5), (7, 7, 7)), (0.0, (0.7, 0.7, 0.7), (1, 1, 1))],
)
def test_kernel_rule(kernel_mm, spacing, expected):
    # Slicer: round((mm / spacing + 1) / 2) * 2 - 1, Python rounding.
    assert median_kernel_voxels(kernel_mm, spacing) == expected


def test_smoothing_changes_a_noisy_mask_on_a_0p7mm_grid_and_not_on_a_1mm_grid():
    labels = _noisy_labels()
    smoothed = median_smooth_labels(labels, (0.7, 0.7, 0.7), kernel_mm=1.5)
    unchanged = median_smooth_labels(labels, (1.0, 1.0, 1.0), kernel_mm=1.5)
    np.testing.assert_array_equal(unchanged, labels)
    assert (smoothed != labels).sum() > 0.02 * labels.size
    assert set(np.unique(smoothed)) <= {0, 1, 2}


def test_each_class_equals_a_binary_median_filter():
    labels = _noisy_labels(seed=1)
    smoothed = median_smooth_labels(labels, (0.7, 0.7, 0.7), kernel_mm=1.5)
    for cls in (1, 2):
        reference = ndimage.median_filter((labels == cls).astype(np.uint8), size=3, mode="nearest").astype(bool)
        np.testing.assert_array_equal(smoothed == cls, reference)


def test_anisotropic_grid_smooths_in_plane_only():
    labels = _noisy_labels(seed=2)
    smoothed = median_smooth_labels(labels, (2.0, 0.5, 0.5), kernel_mm=1.5)  # kernel (1, 3, 3)
    for cls in (1, 2):
        reference = ndimage.median_filter((labels == cls).astype(np.uint8), size=(1, 3, 3), mode="nearest").astype(bool)
        np.testing.assert_array_equal(smoothed == cls, reference)


@pytest.mark.parametrize("spacing_zyx_mm", [(0.7, 0.7, 0.7), (1.0, 0.7, 0.7), (0.5, 0.3, 0.3)])
def test_median_smoothing_equals_scipys_binary_median_per_class(spacing_zyx_mm):
    from scipy import ndimage

    rng = np.random.default_rng(7)
    labels = np.zeros((24, 40, 48), np.uint8)
    labels[4:20, 8:30, 10:40] = 1
    labels[8:14, 12:20, 15:25] = 2
    noise = rng.random(labels.shape)
    labels[noise < 0.08] = 0
    labels[(noise > 0.95) & (labels == 0)] = 2
    kernel = median_kernel_voxels(1.5, spacing_zyx_mm)
    expected = np.zeros_like(labels)
    for cls in (1, 2):
        expected[ndimage.median_filter((labels == cls).astype(np.uint8), size=kernel, mode="nearest") == 1] = cls
    np.testing.assert_array_equal(median_smooth_labels(labels, spacing_zyx_mm, kernel_mm=1.5), expected)
