"""The blinded reading benchmark (benchmarks/blind_read.py): its plane sampling, tiles and scoring."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("blind_read", "benchmarks")


def test_planes_sample_a_linear_volume_at_the_right_millimetres(bench):
    # HU = 2 z_mm + 3 y_mm + 5 x_mm on an anisotropic grid: linear interpolation is exact, so every
    # pixel must read the analytic value at its own position
    spacing = (2.5, 0.7, 0.7)
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip((40, 200, 200), spacing)), indexing="ij")
    ct = (2 * z + 3 * y + 5 * x).astype(np.float32)
    centre = (50.0, 70.0, 69.3)
    axial = bench.resample_plane(ct, spacing, centre, (1, 2), (20.0, 30.0))
    assert axial.shape == (20, 30)
    offs_y, offs_x = np.arange(20) - 9.5, np.arange(30) - 14.5
    expected = 2 * 50.0 + 3 * (70.0 + offs_y[:, None]) + 5 * (69.3 + offs_x[None, :])
    np.testing.assert_allclose(axial, expected, atol=1e-3)
    sagittal = bench.resample_plane(ct, spacing, centre, (0, 1), (10.0, 12.0))
    expected = 2 * (50.0 + (np.arange(10) - 4.5)[:, None]) + 3 * (70.0 + (np.arange(12) - 5.5)[None, :]) + 5 * 69.3
    np.testing.assert_allclose(sagittal, expected, atol=1e-3)


def test_tiles_show_both_windows_with_superior_up(bench):
    plane = np.zeros((3, 2), np.float32)
    plane[0] = 1050.0  # the top row of the array: the bone window's upper limit (300 + 750)
    tile = bench.tile_image(plane, sagittal=True)
    assert tile.shape == (3 * bench.ZOOM, (2 * 2 + 2) * bench.ZOOM)
    # flipped: the bright row is now at the bottom; left panel bone window, right soft-tissue window
    assert tile[-1, 0] == 255 and tile[0, 0] == int(255 * (0 - (300 - 750)) / 1500 + 0.5)
    right = tile[:, (2 + 2) * bench.ZOOM:]
    assert right[-1, 0] == 255 and right[0, 0] == int(255 * (0 - (40 - 200)) / 400 + 0.5)


def test_scoring_counts_answers_against_the_key(bench, tmp_path, capsys):
    assert bench.binomial_p(0, 10) == pytest.approx(1.0)
    assert bench.binomial_p(24, 24) == pytest.approx(2.0 ** -24)
    assert bench.binomial_p(18, 24) == pytest.approx(sum(math.comb(24, k) for k in range(18, 25)) / 2 ** 24)
    key = {"tile_01": {"truth": "real", "source": "a", "plane": "axial"},
           "tile_02": {"truth": "phantom", "source": "b", "plane": "axial"},
           "tile_03": {"truth": "phantom", "source": "c", "plane": "sagittal"}}
    key_path, answers_path = tmp_path / "key.json", tmp_path / "answers.json"
    key_path.write_text(json.dumps(key))
    answers_path.write_text(json.dumps({"tile_01": "real", "tile_02": {"answer": "real"}, "tile_03": "phantom"}))
    bench.score(key_path, answers_path)
    out = capsys.readouterr().out
    assert "2 of 3 right" in out and "real tiles called real: 1 of 1" in out and "phantom tiles called phantom: 1 of 2" in out
    answers_path.write_text(json.dumps({"tile_01": "real"}))
    with pytest.raises(SystemExit, match="no answer for tile_02, tile_03"):
        bench.score(key_path, answers_path)
    answers_path.write_text(json.dumps({"tile_01": "real", "tile_02": "maybe", "tile_03": "real"}))
    with pytest.raises(SystemExit, match="'real' or 'phantom'"):
        bench.score(key_path, answers_path)


def test_pairs_hold_one_real_and_one_phantom_tile_of_the_same_grid_and_plane(bench, tmp_path, capsys):
    items = [{"source": src, "plane": plane, "image": np.full((2, 3), i, np.uint8)}
             for i, (src, plane) in enumerate([("real lumbar crop", "axial"), ("real chest CT", "axial"),
                                               ("real lumbar crop", "sagittal"),
                                               ("phantom v2 (seed 1, chest grid)", "axial"),
                                               ("phantom v2 (seed 2, crop grid)", "sagittal"),
                                               ("phantom v2 (seed 2, crop grid)", "axial")])]
    pairs = bench.pair_up(items, np.random.default_rng(0))
    assert sorted((r["source"], f["source"], r["plane"]) for r, f in pairs) == [
        ("real chest CT", "phantom v2 (seed 1, chest grid)", "axial"),
        ("real lumbar crop", "phantom v2 (seed 2, crop grid)", "axial"),
        ("real lumbar crop", "phantom v2 (seed 2, crop grid)", "sagittal")]
    assert all(r["plane"] == f["plane"] for r, f in pairs)
    picture = bench.stack_pair(items[0]["image"], items[3]["image"])
    assert picture.shape == (2 + 6 * bench.ZOOM + 2, 3)
    assert (picture[:2] == 0).all() and (picture[-2:] == 3).all() and (picture[2:-2] == 255).all()
    key_path, answers_path = tmp_path / "key.json", tmp_path / "answers.json"
    key_path.write_text(json.dumps({"pair_01": {"truth": "A", "source": "s", "plane": "axial"},
                                    "pair_02": {"truth": "B", "source": "s", "plane": "axial"}}))
    answers_path.write_text(json.dumps({"pair_01": {"answer": "A"}, "pair_02": "A"}))
    bench.score(key_path, answers_path)
    assert "1 of 2 right" in capsys.readouterr().out
    answers_path.write_text(json.dumps({"pair_01": "real", "pair_02": "A"}))
    with pytest.raises(SystemExit, match="'A' or 'B'"):
        bench.score(key_path, answers_path)
