"""Phantom v2 surroundings: ribs, femora, organs, contrast, table, metal (geometry and artefacts)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spinect.phantom import surroundings as S
from spinect.phantom.anatomy import build_anatomy
from spinect.phantom.bones import pedicle
from spinect.phantom.params import sample_params
from spinect.phantom.primitives import GridBox
from spinect.phantom.soft_tissue import body_layers
from spinect.phantom.structures import (
    BONE_CODES,
    STRUCTURE_CODES as C,
    STRUCTURE_TISSUE,
    labels_from_structures,
    structure_lookup,
)

ALL = S.SurroundingsSettings(ribs=True, femora=True, organs=True, oral_contrast=True, iv_contrast=True, table=True,
                             metal_levels=("L4", "L5", "S1"))


@pytest.fixture(scope="module", params=[0, 5])
def case(request):
    rng = np.random.default_rng(request.param)
    params = sample_params(rng)
    anatomy = build_anatomy(params, rng)
    bg, fg = S.surrounding_parts(anatomy.frames, params, np.random.default_rng(100 + request.param), ALL)
    return anatomy, {p.name: p for p in bg + fg}, bg, fg


def _inside(part, n=30000, seed=0):
    lo, hi = part.body_bounds()
    pts = np.random.default_rng(seed).uniform(lo, hi, (n, 3))
    return pts[part.sdf_points(pts) < 0]


def test_codes_and_labels():
    bone = [C[n] for n in ("rib_left", "rib_right", "femur_left", "femur_right")]
    soft = [C[n] for n in ("liver", "kidney", "bowel_contrast", "ct_table", "metal")]
    assert all(10 <= c <= 19 for c in bone) and all(c >= 120 for c in soft)
    assert set(bone) <= set(BONE_CODES) and not set(soft) & set(BONE_CODES)
    assert C["L1"] == 1 and C["ilium_right"] == 9 and C["sacroiliac_joint"] == 119  # old codes unchanged
    lab = labels_from_structures(np.array(bone + soft, np.uint8))
    np.testing.assert_array_equal(lab, [1] * 4 + [0] * 5)
    # unknown new tissue classes fall back to an older class, never to the default
    old = {"viscera": 30.0, "calcium": 600.0, "ligament": 65.0, "bone": 1200.0, "fat": -100.0}
    table = structure_lookup(old, default=-999.0)
    assert table[C["liver"]] == 30.0 and table[C["metal"]] == 1200.0 and table[C["bowel_contrast"]] == 600.0
    assert table[C["rib_left"]] == 1200.0
    table = S.apply_surrounding_values(table, {"liver": 60.0, "metal": 3000.0, "blood": 300.0})
    assert table[C["liver"]] == 60.0 and table[C["metal"]] == 3000.0 and table[C["blood_vessel"]] == 300.0
    assert set(STRUCTURE_TISSUE[c] for c in soft) <= set(S.SURROUNDING_HU_RANGES)


def test_settings_sampling():
    draws = [S.sample_surroundings(np.random.default_rng(i)) for i in range(200)]
    assert draws[3] == S.sample_surroundings(np.random.default_rng(3))
    json.dumps([d.to_dict() for d in draws])
    with_metal = [d for d in draws if d.metal_levels]
    assert 5 <= len(with_metal) <= 40
    for d in with_metal + [S.sample_surroundings(np.random.default_rng(i), metal=True) for i in range(20)]:
        i = S.METAL_LEVELS.index(d.metal_levels[0])
        assert d.metal_levels == S.METAL_LEVELS[i : i + len(d.metal_levels)] and len(d.metal_levels) in (2, 3)
    assert not S.sample_surroundings(np.random.default_rng(0), metal=False).metal_levels
    vals = S.surrounding_values(ALL, np.random.default_rng(0))
    assert 200 <= vals["blood"] <= 400 and 150 <= vals["kidney"] <= 250 and 2500 <= vals["metal"] <= 3071


def test_determinism():
    rng = np.random.default_rng(1)
    params = sample_params(rng)
    frames = build_anatomy(params, rng).frames
    a = S.surrounding_parts(frames, params, np.random.default_rng(7))
    b = S.surrounding_parts(frames, params, np.random.default_rng(7))
    for pa, pb in zip(a[0] + a[1], b[0] + b[1]):
        assert pa.name == pb.name
        np.testing.assert_array_equal([q.centre for q in pa.primitives], [q.centre for q in pb.primitives])


def test_ribs_and_femora_positions(case):
    anatomy, parts, _, _ = case
    f = anatomy.frames
    l1 = f["L1"]
    for side, s in (("left", 1.0), ("right", -1.0)):
        rib = _inside(parts[f"rib_{side}"])
        local = l1.local(rib)
        assert len(rib) > 50
        assert np.all(s * local[:, 0] > l1_a(anatomy) + 1.0), "ribs lie lateral of the L1 body"
        assert np.median(local[:, 2]) > 0.0 and local[:, 2].max() > 40.0, "ribs run from the level above L1"
        fem = S.femur_landmarks(f, anatomy.params, np.random.default_rng(0))[side]
        head = fem["head"]
        assert 80.0 <= s * head[0] <= 100.0 and -115.0 <= head[2] <= -85.0 and head[1] < 0.0
        femur = _inside(parts[f"femur_{side}"])
        assert np.all(s * femur[:, 0] > 25.0) and femur[:, 2].max() < -30.0  # lateral, below the sacral promontory


def l1_a(anatomy):
    return anatomy.params.vertebrae["L1"].a


def test_no_overlap_with_spine_or_nerves(case):
    anatomy, parts, _, _ = case
    for name in ("rib_left", "rib_right", "femur_left", "femur_right"):
        pts = _inside(parts[name])
        for other in anatomy.bones + anatomy.nerves:
            assert other.sdf_points(pts).min() > 0.5, (name, other.name)


def test_metal_inside_pedicles_and_not_bone(case):
    anatomy, parts, _, _ = case
    metal = parts["metal"]
    for sc in S.screw_axes(anatomy.frames, anatomy.params, ALL.metal_levels):
        ped = pedicle(anatomy.frames[sc["level"]], anatomy.params.vertebrae[sc["level"]], sc["side"])
        pts = ped.mid + np.linspace(-0.4, 0.4, 9)[:, None] * ped.length * ped.axis[None, :]
        assert np.all(metal.sdf_points(pts) < 0)
        bone = next(p for p in anatomy.bones if p.name == sc["level"])
        assert np.all(bone.sdf_points(pts, cut=False) < 0), "screw runs inside the pedicle"
        # the screw's surface stays inside the pedicle (radius < pedicle semi-axes)
        assert sc["radius"] < min(ped.half_width, ped.half_height)
    assert labels_from_structures(np.array([metal.code], np.uint8))[0] == 0


def test_table_outside_body(case):
    anatomy, parts, _, _ = case
    skin = body_layers(anatomy.frames, anatomy.params)[0].primitives[0]
    pts = _inside(parts["ct_table"], n=60000)
    assert len(pts) > 50
    assert skin.sdf_points(pts).min() > -0.5
    assert np.median(pts[:, 1]) > anatomy.frames["S1"].centre[1]  # behind the patient (supine)


def _box(lo, hi, step=2.0):
    lo = np.asarray(lo, float)
    shape = np.ceil((np.asarray(hi, float) - lo) / step).astype(int)[::-1]  # (z, y, x)
    return GridBox(lo, np.eye(3)[::-1] * step, (0, 0, 0), shape)


def test_painted_organs_stay_in_cavity(case):
    anatomy, parts, bg, _ = case
    l2 = anatomy.frames["L2"].centre
    root = _box(l2 + np.array([-200.0, -200.0, -4.0]), l2 + np.array([200.0, 200.0, 4.0]))
    structures = np.zeros(root.shape, np.uint8)
    for part in body_layers(anatomy.frames, anatomy.params):
        part.paint_inside(root, structures)
    before = structures.copy()
    for part in bg:
        part.paint_inside(root, structures)
    changed = structures != before
    assert np.isin(structures[changed], [C["liver"], C["kidney"], C["bowel_contrast"], C["bowel_gas"]]).all()
    assert np.isin(before[changed], [C["visceral_fat"], C["bowel"], C["bowel_gas"], C["liver"], C["bowel_contrast"]]).all()
    assert (structures == C["kidney"]).sum() > 100


def test_metal_artefacts_only_in_metal_slices():
    shape = (6, 64, 64)
    structures = np.zeros(shape, np.uint8)
    structures[2, 20:24, 20:24] = C["metal"]
    structures[2, 40:44, 44:48] = C["metal"]
    structures[3, 30:33, 30:33] = C["metal"]
    hu = np.full(shape, 40.0, np.float32)
    before_s = structures.copy()
    out = S.add_metal_artefacts(hu, structures, (1.0, 1.0, 1.0), np.random.default_rng(0))
    assert out is hu and hu.dtype == np.float32
    np.testing.assert_array_equal(structures, before_s)
    for z in (0, 1, 4, 5):
        np.testing.assert_array_equal(hu[z], 40.0)
    assert np.abs(hu[2] - 40.0).max() > 30.0 and np.abs(hu[3] - 40.0).max() > 10.0
    # the dark band between the two objects of slice 2
    assert hu[2, 32, 34] < 40.0 - 20.0
    again = S.add_metal_artefacts(np.full(shape, 40.0, np.float32), structures, (1.0, 1.0, 1.0), np.random.default_rng(0))
    np.testing.assert_array_equal(again, hu)
    untouched = np.full(shape, 40.0, np.float32)
    S.add_metal_artefacts(untouched, np.zeros(shape, np.uint8), (1.0, 1.0, 1.0), np.random.default_rng(0))
    np.testing.assert_array_equal(untouched, 40.0)


def test_circular_fov():
    hu = np.zeros((2, 300, 300), np.float32)
    st = np.full((2, 300, 300), C["L1"], np.uint8)
    assert S.apply_circular_fov(hu, st, (1.0, 1.0, 1.0), 0.9)
    assert hu[0, 0, 0] == -1024.0 and st[1, 0, 0] == 0 and hu[0, 150, 150] == 0.0 and st[0, 150, 150] == C["L1"]
    small = np.zeros((2, 100, 100), np.float32)
    assert not S.apply_circular_fov(small, np.zeros((2, 100, 100), np.uint8), (1.0, 1.0, 1.0), 0.9)
    assert not small.any()


def test_generate_case_metal_switch():
    """metal=True forces screws (label 0, > 2000 HU, never bone); False/None draw none here; bad values refused."""
    from spinect.errors import SpinectError
    from spinect.phantom import generate_case
    from spinect.phantom.structures import STRUCTURE_CODES

    import SimpleITK as sitk

    kw = dict(shape_zyx=(48, 96, 96), spacing_zyx_mm=(2.0, 2.0, 2.0), window_tables=False)
    with_metal = generate_case(11, metal=True, **kw)
    levels = with_metal.truth["surroundings"]["metal_levels"]
    assert 2 <= len(levels) <= 3 and set(levels) <= set(S.METAL_LEVELS)
    st = sitk.GetArrayFromImage(with_metal.structures)
    labels = sitk.GetArrayFromImage(with_metal.labels)
    hu = sitk.GetArrayFromImage(with_metal.ct)
    metal = st == STRUCTURE_CODES["metal"]
    assert metal.sum() > 20
    assert (labels[metal] == 0).all()  # metal is never bone
    assert np.median(hu[metal]) > 1500
    without = generate_case(11, metal=False, **kw)
    assert without.truth["surroundings"]["metal_levels"] == []
    assert not (sitk.GetArrayFromImage(without.structures) == STRUCTURE_CODES["metal"]).any()
    with pytest.raises(SpinectError, match="metal"):
        generate_case(11, metal="yes", **kw)
    with pytest.raises(SpinectError, match="surroundings"):
        generate_case(11, metal=True, surroundings=False, **kw)


def test_lung_bases_with_vessels_at_the_top_of_a_lumbar_field():
    """Lung bases reach about L1 posterolaterally; their vessels (blood, bright with IV contrast)
    lie inside the lung, and lung is never bone or nerve."""
    import SimpleITK as sitk

    from spinect.phantom import generate_case

    case = generate_case(5, shape_zyx=(200, 176, 176), window_tables=False, appearance_overrides={"iv_contrast": True})
    st = sitk.GetArrayFromImage(case.structures)
    ct = sitk.GetArrayFromImage(case.ct)
    labels = sitk.GetArrayFromImage(case.labels)
    lung = st == C["lung"]
    assert lung.sum() > 5000
    assert np.all(labels[lung] == 0)
    lowest = np.argwhere(lung)[:, 0].min()
    l1 = np.argwhere(np.isin(st, [C["L1"]]))[:, 0]
    assert l1.min() - 40 <= lowest <= l1.max()  # the recess ends near L1 (z grows cranially)
    assert -950.0 <= float(np.median(ct[lung])) <= -700.0
    # vessels branch into the lung: blood voxels surrounded by lung
    from scipy import ndimage

    vessel_in_lung = (st == C["blood_vessel"]) & ndimage.binary_dilation(lung, iterations=2)
    assert vessel_in_lung.sum() > 20
