"""The phantom's resampling and box helpers (phantom speed, version 13) against reference implementations.

``render._upsample_linear`` (separable since December 2026, was torch's trilinear kernel) must give
``scipy.ndimage.zoom(order=1, grid_mode=False)``; ``soft_detail._Fields.sample`` (one ``np.take``
per axis, was one ``np.ix_`` gather) must cut the same periodic tile at the same offset.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from spinect.phantom.primitives import GridBox
from spinect.phantom.render import _reached_box, _upsample_linear, smooth_noise
from spinect.phantom.soft_detail import _Fields


@pytest.mark.parametrize("coarse, step", [((12, 17, 15), (2, 4, 4)), ((9, 8, 11), (4, 4, 4)), ((7, 6, 5), (1, 3, 2)),
                                          ((5, 1, 6), (2, 1, 3)), ((3, 4, 2), (3, 1, 1))])
def test_upsample_linear_is_scipy_zoom_order_1(coarse, step):
    field = np.random.default_rng(3).standard_normal(coarse).astype(np.float32)
    size = tuple(c * s for c, s in zip(coarse, step))
    reference = ndimage.zoom(field.astype(np.float64), np.divide(size, coarse), order=1, grid_mode=False)
    assert reference.shape == size
    up = _upsample_linear(field, size)
    assert up.dtype == np.float32 and up.shape == size
    np.testing.assert_allclose(up, reference, atol=2e-6)
    # only the first voxels along each axis: the same values, not a resampling to the smaller size
    keep = tuple(max(1, n - 3) for n in size)
    part = _upsample_linear(field, size, keep)
    assert part.shape == keep
    np.testing.assert_array_equal(part, up[: keep[0], : keep[1], : keep[2]])


def test_smooth_noise_draws_one_coarse_grid_with_the_filter_margin():
    """The generator advances by one draw: the coarse grid plus the filter's radius on every side."""
    rng = np.random.default_rng(11)
    field = smooth_noise((40, 70, 66), (3.0, 9.0, 9.0), rng)
    assert field.shape == (40, 70, 66) and field.dtype == np.float32
    twin = np.random.default_rng(11)
    step = np.array([3, 4, 4])  # floor(sigma), at most 4
    radius = np.array([int(3.0 * s + 0.5) for s in np.array([3.0, 9.0, 9.0]) / step])
    twin.standard_normal(tuple(-(-np.array([40, 70, 66]) // step) + 2 + 2 * radius), dtype=np.float32)
    assert rng.random() == twin.random()


def test_smooth_noise_is_a_window_of_one_stationary_field():
    """A small box's field is not periodic over the box: its opposite faces are as unrelated as any
    two points that far apart (before version 13 the filter wrapped round the box)."""
    faces = np.array([smooth_noise((12, 12, 12), (6.0, 6.0, 6.0), np.random.default_rng(i))[[0, -1]].mean(axis=(1, 2))
                      for i in range(200)])
    # 11 voxels apart with sigma 6: the correlation of a Gaussian field is exp(-11**2 / (4 * 36)) = 0.43
    assert np.corrcoef(faces[:, 0], faces[:, 1])[0, 1] < 0.65


@pytest.mark.parametrize("shape, sigma_vox, draws", [((48, 64, 64), (1.0, 1.0, 1.0), 10), ((48, 64, 64), (0.6, 2.5, 2.5), 10),
                                                     ((60, 90, 90), (4.0, 6.0, 6.0), 40),
                                                     ((14, 20, 20), (8.0, 8.0, 8.0), 300)])
def test_smooth_noise_has_unit_variance_on_any_box(shape, sigma_vox, draws):
    """Divided by its exact expected SD (filter and linear upsampling), not by each box's sample SD: the
    mean square over draws is 1 also on a box smaller than the correlation length (version 13: per-box
    renormalisation inflated such fields), where one draw's sample SD is far from 1."""
    squares = np.array([np.mean(np.square(smooth_noise(shape, sigma_vox, np.random.default_rng(i)), dtype=np.float64))
                        for i in range(draws)])
    standard_error = squares.std() / np.sqrt(draws)
    assert abs(squares.mean() - 1.0) < max(4.0 * standard_error, 0.02), (squares.mean(), standard_error)


def test_fields_sample_cuts_the_periodic_tile_at_one_offset():
    n = 24
    full = _Fields(np.random.default_rng(5), np.array([1.0, 1.0, 1.0]), n=n).sample((2.0, 3.0, 3.0),
                                                                                   (slice(0, n),) * 3)
    box = (slice(3, 40), slice(10, 17), slice(0, 50))  # longer than the tile along z and x: it repeats
    part = _Fields(np.random.default_rng(5), np.array([1.0, 1.0, 1.0]), n=n).sample((2.0, 3.0, 3.0), box)
    expected = full[np.ix_(*[np.arange(s.start, s.stop) % n for s in box])]
    assert part.shape == (37, 7, 50)
    np.testing.assert_array_equal(part, expected)


def test_reached_box_holds_every_partly_covered_voxel_and_one_more():
    """The ct mode paints a part on this box only: it must hold every voxel with partial volume
    (d < h/2), one voxel wider where the parent box allows, and nothing when none is covered."""
    parent = GridBox(np.array([5.0, -3.0, 2.0]), np.eye(3) * 1.5, (10, 20, 30), (40, 60, 70))
    zz, yy, xx = np.indices(parent.shape, dtype=np.float32)
    d = np.hypot(np.hypot(zz - 12.0, yy - 8.0), xx - 0.0) * np.float32(1.5) - np.float32(6.0)  # a ball cut by the x = 0 face
    h = 1.5
    box = _reached_box(parent, d, h)
    covered = np.argwhere(d < 0.5 * h)
    lo, hi = covered.min(axis=0), covered.max(axis=0) + 1
    np.testing.assert_array_equal(box.lo, parent.lo + np.maximum(lo - 1, 0))
    np.testing.assert_array_equal(box.hi, parent.lo + np.minimum(hi + 1, parent.shape))
    assert box.lo[2] == parent.lo[2]  # clipped at the parent's face
    assert (d[box.slices_in(parent)] < 0.5 * h).sum() == len(covered)
    assert _reached_box(parent, np.full(parent.shape, 0.75, np.float32), h) is None  # d = h/2: no partial volume
