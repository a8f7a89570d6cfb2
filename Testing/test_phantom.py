"""Phantom: determinism, exact labels, tissue HU, roots in their foramina, triangle truth, files.

Small grids keep this under a minute on 2 cores; the truth checked here comes from the
phantom's implicit geometry, never from the rendered image.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from spinect.phantom import (
    STRUCTURE_CODES,
    generate_case,
    labels_from_structures,
    make_phantom,
    projected_triangle_area_mm2,
    view_direction,
)
from spinect.phantom.anatomy import FORAMEN_GAP_MM, NERVE_GAP_MM
from spinect.phantom.bones import SIDE_SIGN, pedicle
from spinect.phantom.landmarks import LEVELS

SMALL = (72, 80, 80)  # 72 x 80 x 80 mm around L4-S1


@pytest.fixture(scope="module")
def case():
    return generate_case(11, shape_zyx=SMALL, degeneration=False)


@pytest.fixture(scope="module")
def primitive_case():
    """The v1 skeleton, for tests of its analytic pedicles (real shapes: test_phantom_mesh.py)."""
    return generate_case(11, shape_zyx=SMALL, degeneration=False, anatomy="primitive")


@pytest.fixture(scope="module")
def clean_case():
    """Noise- and blur-free, 1 mm, for tissue values (v1 appearance: the ct mode is tested in
    test_phantom_appearance.py)."""
    return generate_case(5, shape_zyx=(64, 96, 96), noise=False, window_tables=False, degeneration=False, appearance="v1")


def _arr(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _voxel_centres_body(case, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.integers(0, s, n) for s in case.grid.shape_zyx], axis=1)
    return idx, case.grid.world_to_body(case.grid.index_to_world(idx))


def test_same_seed_same_case_and_other_seed_differs(case):
    again = generate_case(11, shape_zyx=SMALL, degeneration=False)
    np.testing.assert_array_equal(_arr(again.ct), _arr(case.ct))
    np.testing.assert_array_equal(_arr(again.structures), _arr(case.structures))
    assert json.dumps(again.truth, sort_keys=True) == json.dumps(case.truth, sort_keys=True)
    other = generate_case(12, shape_zyx=SMALL, degeneration=False, window_tables=False)
    assert other.truth["levels"]["L5S1"]["left"]["kambin"]["area_3d_mm2"] != case.truth["levels"]["L5S1"]["left"]["kambin"]["area_3d_mm2"]


def test_labels_follow_structures_and_the_implicit_geometry(case):
    structures, labels = _arr(case.structures), _arr(case.labels)
    np.testing.assert_array_equal(labels, labels_from_structures(structures))
    assert set(np.unique(labels)) == {0, 1, 2}
    for name in ("L4", "L5", "S1", "disc_L4L5", "disc_L5S1", "dural_sac", "root_L5_left_exiting", "root_L5_right_exiting",
                 "root_L4_left_exiting", "root_S1_left_traversing"):
        assert (structures == STRUCTURE_CODES[name]).any(), name
    idx, body = _voxel_centres_body(case, 40000)
    bone = np.min([p.sdf_points(body) for p in case.anatomy.bones], axis=0)
    nerve = np.min([p.sdf_points(body) for p in case.anatomy.nerves], axis=0)
    assert not np.any((bone < 0) & (nerve < 0)), "a point inside bone and nerve"
    lab = labels[tuple(idx.T)]
    # pedicle screws (phantom v2 surroundings) replace the bone they sit in: label 0 by design
    sure = (np.abs(bone) > 1e-3) & (np.abs(nerve) > 1e-3) & (structures[tuple(idx.T)] != STRUCTURE_CODES["metal"])
    np.testing.assert_array_equal((lab == 1)[sure], (bone < 0)[sure])
    np.testing.assert_array_equal((lab == 2)[sure], (nerve < 0)[sure])


@pytest.mark.parametrize("tissue, names, lo, hi", [
    ("fat", ("epidural_fat", "foraminal_fat", "subcutaneous_fat", "visceral_fat"), -120, -80),
    ("muscle", ("psoas_left", "psoas_right", "paraspinal_left", "paraspinal_right"), 40, 60),
    ("disc", ("disc_L3L4", "disc_L4L5", "disc_L5S1"), 70, 100),
    ("csf", ("dural_sac",), 0, 40),
    ("cancellous", ("L3", "L4", "L5", "S1"), 150, 400),
])
def test_tissue_hu_inside_published_ranges(clean_case, tissue, names, lo, hi):
    ct, structures = _arr(clean_case.ct), _arr(clean_case.structures)
    mask = np.isin(structures, [STRUCTURE_CODES[n] for n in names])
    mask = ndimage.binary_erosion(mask, iterations=3 if tissue == "cancellous" else 1)  # away from partial volume
    assert mask.sum() > 50
    values = ct[mask]
    assert lo <= np.percentile(values, 1) and np.percentile(values, 99) <= hi, (values.min(), values.max())


def test_cortical_bone_air_and_noise(clean_case):
    ct, structures = _arr(clean_case.ct), _arr(clean_case.structures)
    bone = np.isin(structures, [STRUCTURE_CODES[n] for n in ("L4", "L5", "S1")])
    assert 1000 <= np.percentile(ct[bone], 99.5) <= 1500
    # (no surroundings: a CT table thinner than these 7 mm voxels would blend into the air around it)
    wide = generate_case(5, shape_zyx=(16, 64, 64), spacing_zyx_mm=(6.0, 7.0, 7.0), noise=False, window_tables=False,
                         degeneration=False, surroundings=False)
    # (phantom v4: soft-tissue edges are partial-volumed over up to 3 voxels, so air right at the skin is not pure)
    air = ndimage.binary_erosion(_arr(wide.structures) == STRUCTURE_CODES["air"], np.ones((3, 3, 3), bool), iterations=3)
    # air is -1000 HU; outside a circular reconstruction field of view (v2 surroundings) the scanner's -1024
    outside = -1000 if wide.truth["surroundings"]["fov_fraction"] is None else -1024
    assert air.sum() > 100 and np.all(np.isin(_arr(wide.ct)[air], (-1000, outside)))
    noisy = generate_case(5, shape_zyx=(64, 96, 96), window_tables=False, degeneration=False, appearance="v1")
    sd = noisy.truth["appearance"]["noise_sd_hu"]
    assert 10 <= sd <= 40
    muscle = ndimage.binary_erosion(np.isin(structures, [STRUCTURE_CODES["psoas_left"], STRUCTURE_CODES["paraspinal_left"],
                                                         STRUCTURE_CODES["paraspinal_right"]]), iterations=3)
    diff = _arr(noisy.ct).astype(float)[muscle] - ct.astype(float)[muscle]
    assert abs(diff.std() - sd) < 0.25 * sd


def _pedicle_bounds(case, vertebra: str, side: str):
    frame, vp = case.anatomy.frames[vertebra], case.anatomy.params.vertebrae[vertebra]
    ped = pedicle(frame, vp, side)
    x, _, z = ped.local_mid
    return frame, ped, x, z


@pytest.mark.parametrize("level", ["L4L5", "L5S1"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_exiting_root_passes_its_foramen_in_fat_without_touching_bone(primitive_case, level, side):
    case = primitive_case  # the analytic pedicle of the primitive skeleton bounds the foramen here
    upper, lower = LEVELS[level]
    anatomy = case.anatomy
    root = anatomy.roots[(upper, side)]
    frame, ped, x_mid, z_mid = _pedicle_bounds(case, upper, side)
    local = frame.local(root.points)
    lateral = SIDE_SIGN[side] * local[:, 0]
    under = np.flatnonzero(np.abs(lateral - x_mid) < ped.half_width)
    under = under[under >= root.split]
    assert under.size, "root never passes under its pedicle"
    top_of_lower = frame.local(pedicle(anatomy.frames[lower], anatomy.params.vertebrae[lower], side).mid
                               + pedicle(anatomy.frames[lower], anatomy.params.vertebrae[lower], side).half_height * anatomy.frames[lower].axes[2])[2]
    z = local[under, 2]
    bottom = z_mid - ped.half_height * np.sqrt(np.clip(1 - ((lateral[under] - x_mid) / ped.half_width) ** 2, 0, 1))
    assert np.all(z + root.radii[under] < bottom), "root touches the pedicle above"
    assert np.all(z - root.radii[under] > top_of_lower), "root below the foramen"
    assert lateral[-1] > x_mid + ped.half_width + 5, "root does not leave the foramen laterally"
    # fat around it in the foramen: voxel centres 0.3-0.75 mm outside the root surface
    structures = _arr(case.structures)
    idx = np.argwhere(np.ones(case.grid.shape_zyx, bool))
    body = case.grid.world_to_body(case.grid.index_to_world(idx))
    seg = root.points[root.split : root.split + 12]
    box = np.all((body > seg.min(axis=0) - 6) & (body < seg.max(axis=0) + 6), axis=1)
    idx, body = idx[box], body[box]
    gap = np.full(len(body), np.inf)
    for p, r in zip(root.points, root.radii):
        gap = np.minimum(gap, np.linalg.norm(body - p, axis=1) - r)
    foramen = np.zeros(len(body), bool)
    for p, r in zip(root.points[root.split : root.split + 12], root.radii[root.split : root.split + 12]):
        foramen |= np.linalg.norm(body - p, axis=1) < r + 1.0
    shell = structures[tuple(idx[foramen & (gap > 0.3) & (gap < 0.75)].T)]
    shell = shell[(shell < 30) | (shell >= 60)]  # the root's own tube (3 mm chords) and other nerves aside
    fat = np.isin(shell, [STRUCTURE_CODES["foraminal_fat"], STRUCTURE_CODES["epidural_fat"]])
    assert shell.size > 10 and fat.mean() > 0.9, np.unique(shell, return_counts=True)
    assert not np.isin(shell, list(range(1, 10))).any(), "bone next to the root"


def test_no_nerve_surface_point_is_closer_than_the_fat_gap_to_bone():
    c = generate_case(3, shape_zyx=(16, 16, 16), degeneration=True, window_tables=False)
    rng = np.random.default_rng(1)
    for (name, side), root in c.anatomy.roots.items():
        normals = rng.normal(size=(len(root.points), 3))
        tang = np.gradient(root.points, axis=0)
        tang /= np.linalg.norm(tang, axis=1, keepdims=True)
        normals -= (normals * tang).sum(axis=1, keepdims=True) * tang
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        surface = root.points + root.radii[:, None] * normals
        bone = np.min([p.sdf_points(surface) for p in c.anatomy.bones], axis=0)
        # tolerance: tubes are built on 3 mm chords of the 1 mm centreline samples (< 0.15 mm apart)
        assert bone.min() >= NERVE_GAP_MM - 0.15, (name, side, bone.min())
        if name in ("S1", "S2"):  # the sacral foramen is a tunnel of FORAMEN_GAP_MM
            sacral = np.min([p.sdf_points(surface) for p in c.anatomy.bones if p.name in ("S1", "sacrum")], axis=0)
            assert sacral.min() >= FORAMEN_GAP_MM - 0.15
        assert c.truth["roots"][f"{name}_{side}"]["min_bone_clearance_mm"] >= NERVE_GAP_MM - 0.05


def _shoelace_projected(points: np.ndarray, d: np.ndarray) -> float:
    d = d / np.linalg.norm(d)
    u = np.cross(d, [0.0, 0.0, 1.0] if abs(d[2]) < 0.9 else [1.0, 0.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(d, u)
    x, y = points @ u, points @ v
    return 0.5 * abs(x[0] * (y[1] - y[2]) + x[1] * (y[2] - y[0]) + x[2] * (y[0] - y[1]))


def test_triangle_areas_agree_with_independent_computation(case):
    for level, entry in case.truth["levels"].items():
        frame = {k: np.array(v) for k, v in entry["viewing_frame"].items()}
        assert abs(frame["anterior"] @ frame["normal"]) < 1e-6
        for side in ("left", "right"):
            for name in ("kambin", "safe"):
                tri = entry[side][name]
                pts = np.array(list(tri["points_lps_mm"].values()))
                a, b, c = (np.linalg.norm(pts[i] - pts[j]) for i, j in ((0, 1), (1, 2), (2, 0)))
                s = (a + b + c) / 2
                heron = np.sqrt(max(s * (s - a) * (s - b) * (s - c), 0.0))
                assert tri["area_3d_mm2"] == pytest.approx(heron, rel=1e-3, abs=1e-3)
                assert tri["area_3d_mm2"] > 1.0
                table = np.array(tri["projected_area_mm2"]["table"])
                for i, theta in enumerate(tri["projected_area_mm2"]["theta_deg"][::4]):
                    for j, phi in enumerate(tri["projected_area_mm2"]["phi_deg"][::5]):
                        d = view_direction(frame, theta, phi, side)
                        assert table[4 * i, 5 * j] == pytest.approx(_shoelace_projected(pts, d), rel=1e-3, abs=1e-2)
            kam = np.array(list(entry[side]["kambin"]["points_lps_mm"].values()))
            # base B-C lies on the lower endplate plane
            for p in kam[1:]:
                assert abs((p - frame["origin"]) @ frame["normal"]) < 1e-2


def test_projected_area_of_an_analytic_triangle():
    tri = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    assert projected_triangle_area_mm2(tri, [0, 0, 1]) == pytest.approx(6.0)
    assert projected_triangle_area_mm2(tri, [0, np.sin(np.radians(60)), np.cos(np.radians(60))]) == pytest.approx(3.0)
    assert projected_triangle_area_mm2(tri, [1, 0, 0]) == pytest.approx(0.0)


def test_files_metadata_and_manifest_read_back(tmp_path):
    from spinect.io import read_ct, read_labelmap
    from spinect.manifest import read_manifest

    written = make_phantom(tmp_path, n=2, seed=4, shape_zyx=(24, 40, 40), spacing_zyx_mm=(2.0, 1.2, 1.2), preview=True)
    assert written[-1].name == "manifest.json" and all(p.exists() for p in written)
    cases = read_manifest(tmp_path)
    assert [c.id for c in cases] == ["case_000", "case_001"]
    truth = json.loads((tmp_path / cases[0].extra["truth"]).read_text(encoding="utf-8"))
    ct, labels = read_ct(cases[0].image), read_labelmap(cases[0].label)
    for image in (ct, labels):
        assert image.GetSize() == (40, 40, 24)
        np.testing.assert_allclose(image.GetSpacing(), truth["grid"]["spacing_zyx_mm"][::-1])
        np.testing.assert_allclose(image.GetOrigin(), truth["grid"]["origin_xyz_mm"], atol=1e-4)
        np.testing.assert_allclose(image.GetDirection(), truth["grid"]["direction"])
    again = generate_case(truth["seed"], shape_zyx=(24, 40, 40), spacing_zyx_mm=(2.0, 1.2, 1.2))
    np.testing.assert_array_equal(_arr(ct), _arr(again.ct))
    assert (tmp_path / cases[1].extra["preview"]).stat().st_size > 10_000


def test_anisotropic_grid_keeps_physical_sizes():
    iso = generate_case(8, shape_zyx=(80, 96, 96), spacing_zyx_mm=(1.0, 1.0, 1.0), window_tables=False, degeneration=False)
    thick = generate_case(8, shape_zyx=(27, 120, 120), spacing_zyx_mm=(3.0, 0.8, 0.8), window_tables=False, degeneration=False)
    assert thick.ct.GetSpacing() == (0.8, 0.8, 3.0)
    for name in ("L5", "disc_L4L5", "dural_sac"):
        vol = [(_arr(c.structures) == STRUCTURE_CODES[name]).sum() * np.prod(c.grid.spacing_zyx_mm) for c in (iso, thick)]
        assert vol[1] == pytest.approx(vol[0], rel=0.05), name
    a = iso.truth["levels"]["L5S1"]["left"]["kambin"]
    b = thick.truth["levels"]["L5S1"]["left"]["kambin"]
    assert a["points_lps_mm"] == b["points_lps_mm"] and a["area_3d_mm2"] == b["area_3d_mm2"]


def test_randomised_appearance_keeps_the_labels(case):
    rand = generate_case(11, shape_zyx=SMALL, degeneration=False, randomise_appearance=True, window_tables=False)
    np.testing.assert_array_equal(_arr(rand.labels), _arr(case.labels))
    assert rand.ct.GetPixelID() == sitk.sitkInt16
    assert np.abs(_arr(rand.ct).astype(float) - _arr(case.ct)).mean() > 50
    assert rand.truth["appearance"]["randomised"] is True and rand.truth["appearance"]["mode"] == "random"


def test_cli_writes_cases_and_rejects_bad_options(tmp_path, capsys):
    from spinect.cli import main

    assert main(["phantom", str(tmp_path / "out"), "--n", "1", "--shape", "16", "24", "24", "--seed", "2", "--progress-lines"]) == 0
    assert (tmp_path / "out" / "case_000_truth.json").exists()
    assert main(["phantom", str(tmp_path / "bad"), "--shape", "4", "24", "24"]) == 2
    assert "shape" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_timer_gets_the_seconds_of_each_generation_stage_and_changes_nothing():
    from spinect.profiling import StageTimer

    timer = StageTimer()
    timed = generate_case(4, shape_zyx=(16, 24, 24), window_tables=False, timer=timer)
    plain = generate_case(4, shape_zyx=(16, 24, 24), window_tables=False)
    assert list(timer.seconds) == [
        "anatomy", "appearance draw", "soft tissue: structures and displacement", "soft tissue: texture and edges",
        "bone, disc, canal and nerves (partial volume, bone texture)", "ligamentum flavum, anterior epidural space",
        "scanner: metal streaks, kernel, noise, offset, field of view", "labels and truth (triangles, tables, window)"]
    assert all(s >= 0.0 for s in timer.seconds.values())
    for image in ("ct", "labels", "structures"):
        assert np.array_equal(sitk.GetArrayFromImage(getattr(timed, image)), sitk.GetArrayFromImage(getattr(plain, image)))
