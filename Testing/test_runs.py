"""Run-length labelling (spinect.postprocess.runs) gives scipy.ndimage.label's components and numbering."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from spinect.postprocess.runs import label_runs

_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def _check_same_as_scipy(labels: np.ndarray) -> None:
    runs = label_runs(labels)
    assert (np.diff(runs.start) > 0).all() and int(runs.length.sum()) == np.count_nonzero(labels)
    for value in range(1, int(labels.max(initial=0)) + 2):
        expected, count = ndimage.label(labels == value, structure=_STRUCTURE_26)
        chosen = np.flatnonzero(runs.value == value)
        found = np.zeros(labels.size, dtype=np.int64)
        found[runs.voxels(chosen)] = np.repeat(runs.component[chosen], runs.length[chosen])
        assert (int(runs.count[value]) if value < len(runs.count) else 0) == count
        np.testing.assert_array_equal(found.reshape(labels.shape), expected)


@pytest.mark.parametrize("seed", range(6))
def test_random_multi_label_maps_give_scipy_components_in_scipy_order(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        shape = tuple(int(n) for n in rng.integers(1, 10, size=3))
        density = rng.uniform(0.05, 0.6)
        labels = ((rng.random(shape) < density) * rng.integers(1, 4, size=shape)).astype(np.uint8)
        _check_same_as_scipy(labels)


def test_empty_full_and_edge_cases():
    _check_same_as_scipy(np.zeros((3, 4, 5), np.uint8))
    _check_same_as_scipy(np.ones((3, 4, 5), np.uint8))
    diagonal = np.zeros((4, 4, 4), np.uint8)
    diagonal[[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]] = 1  # corner neighbours only: one component
    assert label_runs(diagonal).count[1] == 1
    wrap = np.zeros((2, 2, 3), np.uint8)
    wrap[0, 0, 2] = wrap[0, 1, 0] = 1  # flat indices 2 and 3 are consecutive but in different rows
    runs = label_runs(wrap)
    assert len(runs.start) == 2 and runs.count[1] == 2
    _check_same_as_scipy(wrap)
    with pytest.raises(ValueError, match="dimensions"):
        label_runs(np.zeros((4, 4), np.uint8))
