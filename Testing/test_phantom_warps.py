"""Warped vertebral arches (phantom version 9) and body fronts (version 10) of phantom v2 (spinect.phantom.warps)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import phantom_voxels_in

from spinect.phantom import generate_case
from spinect.phantom.meshes import load_library
from spinect.phantom.warps import arch_weight, body_front_weight, body_half_height, make_arch_warp, sample_arch_warps


@pytest.fixture(scope="module")
def library():
    return load_library()


def _source_index(grid, local_mm: np.ndarray) -> np.ndarray:
    """Grid indices (3, N) (z, y, x) of points given in the bone's measured local frame (N, 3)."""
    m = grid.measured
    src = np.asarray(m["origin_xyz_mm"], float) + local_mm @ np.asarray(m["axes"], float)
    return ((src - np.asarray(grid.origin_xyz_mm, float)) / grid.spacing_mm)[:, ::-1].T


@pytest.mark.parametrize("name", ["vhm__L3", "mean__L4", "vhm__L5"])
def test_landmarks_do_not_move_and_the_processes_do(library, name):
    grid = library[name]
    m = grid.measured
    landmarks = [np.zeros(3)]  # the body's centre
    for s in m["sides"].values():
        landmarks += [np.asarray(s["pedicle"]["mid"], float), np.asarray(s["sap_face"], float),
                      np.asarray(s["sap_centroid"], float)]
    a, b = float(m["a"]), float(m["b"])
    # the body's lateral borders, the posterior wall at the pedicles' height; the endplates (front to back,
    # 2.5 mm inside their heights: their concavity) and the front's rims
    landmarks += [np.array([sign * a, 0.0, 0.0]) for sign in (1, -1)] + [np.array([0.0, b, 0.0])]
    landmarks += [np.array([x, y, sign * (body_half_height(y, m) - 2.5)]) for x in (-0.5 * a, 0.0, 0.5 * a)
                  for y in (-b, -0.5 * b, 0.0, 0.5 * b) for sign in (1, -1)]
    landmarks = np.array(landmarks)
    assert np.all(arch_weight(landmarks, m) == 0.0)
    warp = make_arch_warp(grid, 2.0, seed=7)
    assert np.all(warp.displacement(_source_index(grid, landmarks)) == 0.0)
    # version 10: the body's front at mid-height moves, horizontally only
    front = np.array([[0.0, -b, 0.0], [0.6 * a, -0.8 * b, 0.0], [-0.6 * a, -0.8 * b, 0.0]])
    assert np.all(body_front_weight(front, m) > 0.4)
    shift = warp.displacement(_source_index(grid, front)) * grid.spacing_mm  # (z, y, x) source mm
    assert np.all(np.linalg.norm(shift, axis=0) > 0.0)
    up = np.asarray(m["axes"], float)[2][::-1]
    np.testing.assert_allclose(up @ shift, 0.0, atol=1e-4)
    # the spinous process (behind the canal) and the transverse processes' tips move
    tips = np.array([[0.0, b + 40.0, 0.0], [a + 25.0, b + 8.0, 0.0], [-(a + 25.0), b + 8.0, 0.0]])
    assert np.all(arch_weight(tips, m) == 1.0)
    moved = np.linalg.norm(warp.displacement(_source_index(grid, tips)), axis=0) * grid.spacing_mm
    assert np.all(moved > 0.0) and np.all(moved <= warp.max_mm + 1e-6)
    # the nearest-node bound holds everywhere (random points over the grid)
    pts = np.random.default_rng(0).uniform(0, np.array(grid.values.shape) - 1, size=(2000, 3)).T
    norm = np.linalg.norm(warp.displacement(pts), axis=0) * grid.spacing_mm
    assert np.all(norm <= warp.bound_at(pts) + 1e-5)


def test_warp_draws_are_recorded_and_reproducible():
    a = sample_arch_warps(np.random.default_rng(3), ["L1", "L2"])
    b = sample_arch_warps(np.random.default_rng(3), ["L1", "L2"])
    assert a == b and set(a) == {"L1", "L2"}
    assert all(0.8 <= v["amplitude_mm"] <= 2.0 for v in a.values())


@pytest.fixture(scope="module")
def case():
    return generate_case(0, shape_zyx=(96, 128, 128), window_tables=False)


def test_labels_are_the_sign_of_the_warped_distance(case):
    """Every voxel of a warped vertebra's box is that vertebra's code exactly where its warped,
    carved signed distance is negative, and the warp changed the shape there."""
    structures = sitk.GetArrayFromImage(case.structures)
    parts = [p for p in case.anatomy.bones if p.warp is not None]
    assert {p.name for p in parts} >= {"L4", "L5"}
    total_changed = 0
    for part in parts:
        voxels = phantom_voxels_in(case, *part.body_bounds(), stride=2)
        if voxels is None:
            continue
        vox, body = voxels
        d = part.sdf_points(body)
        sure = np.abs(d) > 1e-3
        codes = structures[tuple(vox.T)]
        assert np.all(codes[sure & (d < 0)] == part.code), part.name
        assert not np.any(codes[sure & (d > 0)] == part.code), part.name
        plain = replace(part, warp=None)
        plain.__dict__.pop("_mesh_bounds", None)
        total_changed += int(np.sum(np.sign(plain.sdf_points(body)) != np.sign(d)))
    assert total_changed > 100


@pytest.mark.parametrize("name", ["vhm__L3", "mean__L4"])
def test_fine_component_adds_millimetre_unevenness_on_the_same_weights(library, name):
    """Version 12: a fine lattice (1.5 mm nodes, sigma 2.5 mm, SD 0.2-0.45 mm, clipped at 2.5 SD) is added to the coarse
    warp, drawn after it from the same stream (the coarse lattice is as before), on the same weights
    (landmarks fixed: the test above runs with it), and the bound still holds."""
    from spinect.phantom.warps import FINE_AMPLITUDE_MM

    grid = library[name]
    m = grid.measured
    both, coarse = make_arch_warp(grid, 1.5, seed=11), make_arch_warp(grid, 1.5, seed=11, fine=False)
    np.testing.assert_array_equal(both.lattice, coarse.lattice)
    assert coarse.fine_lattice is None and both.fine_lattice is not None
    # along a line over the spinous process (weight 1), the fine part varies over millimetres
    b = float(m["b"])
    line = np.stack([np.zeros(200), np.full(200, b + 30.0), np.linspace(-10.0, 10.0, 200)], axis=1)
    idx = _source_index(grid, line)
    fine = (both.displacement(idx) - coarse.displacement(idx)) * grid.spacing_mm  # (3, N) mm
    assert 0.1 < float(np.abs(fine).max()) <= 2.5 * FINE_AMPLITUDE_MM[1] + 1e-6  # each component clipped at 2.5 SD
    # its variation over 2 mm steps is a sizeable share of its spread; the coarse part's is small
    step = int(round(2.0 / (20.0 / 199)))
    fine_change = np.abs(fine[:, step:] - fine[:, :-step]).mean() / fine.std()
    coarse_mm = coarse.displacement(idx) * grid.spacing_mm
    coarse_change = np.abs(coarse_mm[:, step:] - coarse_mm[:, :-step]).mean() / coarse_mm.std()
    assert fine_change > 2.0 * coarse_change
    pts = np.random.default_rng(1).uniform(0, np.array(grid.values.shape) - 1, size=(3000, 3)).T
    norm = np.linalg.norm(both.displacement(pts), axis=0) * grid.spacing_mm
    assert np.all(norm <= both.bound_at(pts) + 1e-5) and norm.max() <= both.max_mm + 1e-6


def test_one_read_of_the_combined_lattice_is_the_sum_of_the_two(library):
    """The displacement reads one lattice (the fine one plus the coarse displacement at its nodes): within
    the grid it equals the coarse and fine trilinear reads added, to float32 rounding."""
    from scipy import ndimage

    grid = library["mean__L4"]
    warp = make_arch_warp(grid, 1.8, seed=5)
    pts = np.random.default_rng(2).uniform(0, np.array(grid.values.shape) - 1, size=(5000, 3)).T.astype(np.float32)
    both = warp.displacement(pts)
    apart = np.stack([ndimage.map_coordinates(warp.lattice[k], pts / np.float32(warp.step), order=1, mode="nearest")
                      + ndimage.map_coordinates(warp.fine_lattice[k], pts / np.float32(warp.fine_step), order=1,
                                                mode="nearest") for k in range(3)])
    assert np.abs(apart).max() > 0.5
    np.testing.assert_allclose(both, apart, atol=1e-5)
