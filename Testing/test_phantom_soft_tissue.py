"""Phantom v2 soft tissue: placed muscles, irregular boundaries, fat layers and CT texture.

The structure map (soft tissue included) depends on the seed only, never on the appearance
mode; textures (muscle fat, septa, small vessels, bowel content, kidney cortex) exist in the
``ct`` mode only; the primitive skeleton with ``v1`` appearance reproduces the first phantom's
cases bit for bit.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from spinect.phantom import STRUCTURE_CODES as C
from spinect.phantom import generate_case
from spinect.phantom import soft_detail as S
from spinect.phantom.structures import labels_from_structures

#: 1 mm axial slab through L4 wide enough to hold the back's skin and fat and the muscles.
SLAB = (8, 260, 260)
MUSCLES = ("paraspinal_left", "paraspinal_right", "psoas_left", "psoas_right")


def _arr(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _case(seed: int = 4, **kw):
    kw.setdefault("shape_zyx", SLAB)
    return generate_case(seed, window_tables=False, degeneration=False, **kw)


@pytest.fixture(scope="module")
def clean():
    return _case(noise=False, appearance_overrides={"age_years": 70})


def test_same_seed_same_soft_tissue_and_labels_do_not_depend_on_the_mode(clean):
    again = _case(noise=False, appearance_overrides={"age_years": 70})
    np.testing.assert_array_equal(_arr(again.ct), _arr(clean.ct))
    np.testing.assert_array_equal(_arr(again.structures), _arr(clean.structures))
    assert again.truth["appearance"] == clean.truth["appearance"]
    for mode in ("v1", "random"):
        other = _case(noise=False, appearance=mode)
        np.testing.assert_array_equal(_arr(other.structures), _arr(clean.structures))
        np.testing.assert_array_equal(_arr(other.labels), _arr(clean.labels))
    st = _arr(clean.structures)
    np.testing.assert_array_equal(_arr(clean.labels), labels_from_structures(st))
    assert clean.truth["soft_tissue_geometry"]["bowel_fill"] > 0


def test_primitive_v1_cases_are_the_old_cases_bit_for_bit():
    """The first phantom (primitive skeleton, v1 appearance) is untouched by the v2 soft tissue
    (hashes taken with the code before it existed)."""
    want = {False: "6467ec95aa552d7a", True: "638eebff9da94f6a"}
    for sur, digest in want.items():
        c = generate_case(7, shape_zyx=(40, 96, 96), spacing_zyx_mm=(2.0, 2.5, 2.5), window_tables=False, appearance="v1",
                          anatomy="primitive", surroundings=sur)
        h = hashlib.sha256()
        for im in (c.ct, c.labels, c.structures):
            h.update(_arr(im).tobytes())
        assert h.hexdigest()[:16] == digest, sur
        assert c.truth["soft_tissue_geometry"] is None


def _posterior_ray(case) -> np.ndarray:
    """Structure codes along the grid's posterior (+y) midline ray of the middle slice, from the
    back inwards, through the column of the spinous process."""
    st = _arr(case.structures)
    z = st.shape[0] // 2
    bone_x = np.argwhere(np.isin(st[z], [C["L3"], C["L4"], C["L5"]]))[:, 1]
    x = int(np.median(bone_x))
    return st[z, ::-1, x], ct_ray(case, z, x)


def ct_ray(case, z: int, x: int) -> np.ndarray:
    return _arr(case.ct)[z, ::-1, x].astype(float)


def test_fat_layer_lies_between_skin_and_muscle_at_the_drawn_thickness(clean):
    codes, hu = _posterior_ray(clean)
    inside = np.flatnonzero(codes != C["air"])
    start = int(inside[0])
    run = codes[start:]
    # from the back inwards: skin, then subcutaneous fat, then muscle (wall / paraspinal)
    assert run[0] == C["skin"]
    fat = np.flatnonzero(run == C["subcutaneous_fat"])
    assert fat.size and fat[0] <= 4
    first_muscle = int(np.flatnonzero(np.isin(run, [C["abdominal_wall_muscle"], C["paraspinal_left"], C["paraspinal_right"]]))[0])
    assert fat[-1] < first_muscle
    thickness = first_muscle - fat[0]  # 1 mm voxels
    want = clean.anatomy.params.fat_posterior_mm - 2.0
    assert abs(thickness - want) < 8.0, (thickness, want)
    fat_hu = hu[start:][fat]
    assert -140 < np.median(fat_hu) < -60
    # the skin is 2 mm: since version 4 its outer voxel is partial-volumed with the air outside
    # (soft edges), so its brightest voxel, not the median of two, is the skin's own value
    assert np.max(hu[start:][run == C["skin"]]) > np.median(fat_hu) + 80


def test_muscles_have_intermuscular_fat_and_texture(clean):
    st, ct = _arr(clean.structures), _arr(clean.ct).astype(float)
    m = ndimage.binary_erosion(np.isin(st, [C[n] for n in MUSCLES]), np.ones((1, 3, 3), bool))
    hu = ct[m]
    fatty = float((hu < -30).mean())
    assert 0.003 < fatty < 0.35, fatty  # septa, fascia planes, fatty infiltration (age 70)
    assert 25 < np.median(hu) < 75
    assert np.std(hu[(hu > 0)]) > 2.0  # not flat
    flat = _case(noise=False, appearance="v1")
    v1 = _arr(flat.ct).astype(float)[m]
    assert (v1 < -30).mean() < 0.001  # the v1 mode keeps flat muscle


def test_paraspinal_muscles_rest_on_the_posterior_elements(clean):
    st = _arr(clean.structures)
    z = st.shape[0] // 2
    para = np.isin(st[z], [C["paraspinal_left"], C["paraspinal_right"]])
    bone = np.isin(st[z], [C[n] for n in ("L3", "L4", "L5", "S1")])
    touching = ndimage.binary_dilation(para, iterations=2) & bone
    assert touching.sum() > 20  # no fat gap between the muscle and the lamina / spinous process


def test_older_patients_have_more_fat_in_muscle():
    young, old = (S.muscle_fat_fraction(a) for a in (30, 80))
    assert old > 3 * young
    rng = np.random.default_rng(0)
    looks = [S.sample_soft_look(rng, 80, False) for _ in range(5)]
    assert all(0 < lk.muscle_fat_fraction < 0.4 for lk in looks)


def _block(code: int, fill: int = C["visceral_fat"]) -> tuple[np.ndarray, np.ndarray]:
    st = np.full((40, 60, 60), fill, np.uint8)
    zz, yy, xx = np.mgrid[:40, :60, :60]
    st[((zz - 20) / 15.0) ** 2 + ((yy - 30) / 22.0) ** 2 + ((xx - 30) / 18.0) ** 2 < 1] = code
    table = np.zeros(256, np.float32)
    table[[C["visceral_fat"], C["subcutaneous_fat"]]] = -100
    table[C["kidney"]], table[C["bowel"]], table[C["bowel_gas"]] = 180, 30, -950
    return st, table[st].copy()


def test_kidney_cortex_enhances_more_than_medulla_with_iv_contrast():
    st, hu = _block(C["kidney"])
    look = S.sample_soft_look(np.random.default_rng(1), 60, True)
    table = np.zeros(256, np.float32)
    table[C["visceral_fat"]], table[C["kidney"]] = -100, 180
    S.apply_soft_texture(hu, st, (1.0, 1.0, 1.0), look, table, np.random.default_rng(2))
    k = st == C["kidney"]
    depth = ndimage.distance_transform_edt(k)
    cortex = hu[k & (depth <= look.kidney_cortex_mm - 1)]
    deep = hu[k & (depth > look.kidney_cortex_mm + 1)]
    assert cortex.mean() > deep.mean() + 30
    assert (deep < -50).any()  # renal sinus fat


def test_bowel_has_a_wall_mixed_content_and_gas():
    st, hu = _block(C["bowel"])
    look = S.sample_soft_look(np.random.default_rng(3), 60, False)
    table = np.zeros(256, np.float32)
    table[C["visceral_fat"]], table[C["bowel"]], table[C["bowel_gas"]] = -100, 30, -950
    S.apply_soft_texture(hu, st, (1.0, 1.0, 1.0), look, table, np.random.default_rng(4))
    b = st == C["bowel"]
    assert np.std(hu[b]) > 15  # not flat
    assert (hu[b] < -500).any()  # gas bubbles
    fat = hu[st == C["visceral_fat"]]
    assert np.median(fat) < -80 and (fat > -60).any()  # fat with small vessels / strands


def test_soft_geometry_is_the_same_patient_on_another_grid():
    a = generate_case(4, shape_zyx=(8, 200, 200), window_tables=False, noise=False)
    b = generate_case(4, shape_zyx=(8, 100, 100), spacing_zyx_mm=(1.0, 2.0, 2.0), window_tables=False, noise=False)
    assert a.truth["soft_tissue_geometry"] == b.truth["soft_tissue_geometry"]
    sa, sb = _arr(a.structures), _arr(b.structures)
    for name in ("bowel", "paraspinal_left", "psoas_left"):
        va, vb = (sa == C[name]).sum() * 1.0, (sb == C[name]).sum() * 4.0
        assert abs(va - vb) < 0.15 * max(va, 1.0) + 200, (name, va, vb)
