"""The phantom's thorax (generate_case(field="thoracolumbar" | "chest")): thoracic vertebrae, ribs
1-12, costal cartilage, sternum, lungs, heart; opt-in, so the default field is unchanged (hashes in
test_phantom_ct_look.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from spinect.errors import SpinectError
from spinect.phantom import generate_case
from spinect.phantom.structures import (BONE_CODES, STRUCTURE_CODES as C, labels_from_structures,
                                        level_classes_from_structures)
from spinect.phantom.thorax import FIELDS, THORACIC_NAMES

SPACING = (2.0, 2.0, 2.0)


@pytest.fixture(scope="module")
def chest():
    return generate_case(1, shape_zyx=(144, 110, 170), spacing_zyx_mm=SPACING, field="chest", window_tables=False)


def _arrays(case):
    return sitk.GetArrayFromImage(case.structures), sitk.GetArrayFromImage(case.labels), sitk.GetArrayFromImage(case.ct)


def _codes_at(case, structures, body_points):
    """Structure codes at the voxels nearest to body points (-1 outside the grid)."""
    idx = np.rint(case.grid.world_to_index_zyx(case.grid.body_to_world(body_points))).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(structures.shape)), axis=1)
    out = np.full(len(idx), -1)
    out[inside] = structures[tuple(idx[inside].T)]
    return out


def test_chest_has_twelve_ribs_per_side(chest):
    st, lab, _ = _arrays(chest)
    found = []
    for (side, n), line in chest.anatomy.thorax.ribs.items():
        codes = _codes_at(chest, st, line[2:])  # the shaft (the head is carved from its vertebra)
        seen = codes[codes >= 0]
        if len(seen) >= 5 and np.mean(seen == C[f"rib_{side}"]) >= 0.6:
            found.append((side, n))
    assert len(found) >= 20, sorted(found)
    assert sum(s == "left" for s, _ in found) >= 10 and sum(s == "right" for s, _ in found) >= 10
    # ribs are bone
    assert np.all(lab[st == C["rib_left"]] == 1) and np.all(lab[st == C["rib_right"]] == 1)


def test_chest_thoracic_vertebrae_sternum_lungs_and_cartilage(chest):
    st, lab, ct = _arrays(chest)
    th = chest.anatomy.thorax
    voxel = float(np.prod(SPACING))
    # thoracic vertebral bodies above L1, bone
    centres = np.array([th.frames[n].centre for n in THORACIC_NAMES])
    codes = _codes_at(chest, st, centres)
    assert np.sum(codes == C["thoracic_vertebra"]) >= 8, codes
    assert np.all(lab[st == C["thoracic_vertebra"]] == 1)
    l1_z = chest.anatomy.frames["L1"].centre[2]
    assert all(th.frames[n].centre[2] > l1_z + 15.0 for n in THORACIC_NAMES)
    # sternum (bone), several cm long
    assert np.sum(st == C["sternum"]) * voxel > 15_000.0
    assert np.all(lab[st == C["sternum"]] == 1)
    # lungs fill the cage: litres of air-filled lung, dark
    lung = st == C["lung"]
    assert lung.sum() * voxel > 2.0e6
    assert np.median(ct[lung]) < -600
    # costal cartilage: present, not bone
    cart = st == C["costal_cartilage"]
    assert cart.sum() * voxel > 2_000.0
    assert np.all(lab[cart] == 0)
    assert np.sum(st == C["heart"]) * voxel > 100_000.0
    # scapulae behind the upper ribs (bone)
    assert np.sum(st == C["scapula"]) * voxel > 10_000.0
    assert np.all(lab[st == C["scapula"]] == 1)
    # labels are exactly the bone / nerve codes of the structure map; the dural sac goes up the canal
    assert np.array_equal(lab, labels_from_structures(st))
    assert np.any(st == C["dural_sac"])
    assert chest.truth["field"] == "chest"
    json.dumps(chest.truth)


def test_thorax_bones_are_other_bone_in_the_level_classes():
    from spinect.plan import LEVEL_CLASS_NAMES

    bones = [C[n] for n in ("thoracic_vertebra", "sternum", "scapula", "clavicle")]
    st = np.array(bones + [C["costal_cartilage"], C["lung"]], np.uint8)
    got = level_classes_from_structures(st)
    other = LEVEL_CLASS_NAMES.index("other_bone")
    assert list(got) == [other] * 4 + [0, 0]
    assert all(c in BONE_CODES for c in bones)


def test_thoracolumbar_is_centred_on_t12_l1():
    case = generate_case(2, shape_zyx=(60, 60, 80), spacing_zyx_mm=(2.5, 2.5, 2.5), field="thoracolumbar",
                         window_tables=False)
    st, lab, _ = _arrays(case)
    for code in (C["L1"], C["thoracic_vertebra"], C["disc_thoracic"]):
        assert np.any(st == code), code
    assert np.any(np.isin(st, (C["rib_left"], C["rib_right"])))
    assert np.array_equal(lab, labels_from_structures(st))
    assert case.truth["field"] == "thoracolumbar"


def test_random_appearance_chest_runs():
    case = generate_case(3, shape_zyx=(40, 48, 64), spacing_zyx_mm=(4.0, 4.0, 4.0), field="chest", appearance="random",
                         window_tables=False, noise=False)
    st, lab, ct = _arrays(case)
    assert np.any(st == C["thoracic_vertebra"]) and np.isfinite(ct).all()


@pytest.mark.parametrize("bad", ["neck", "", None, "Chest"])
def test_bad_field_raises(bad):
    with pytest.raises(SpinectError, match="field"):
        generate_case(0, shape_zyx=(16, 16, 16), field=bad)
    assert "lumbosacral" in FIELDS
