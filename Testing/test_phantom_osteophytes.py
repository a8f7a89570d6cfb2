"""Osteophytes on phantom v2's real bone shapes (spinect.phantom.osteophytes, phantom version 9)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import phantom_voxels_in

from spinect.phantom import generate_case
from spinect.phantom.bones import SIDE_SIGN
from spinect.phantom.osteophytes import ENDPLATES, MAX_ANGLE_DEG, marginal_probability, sample_marginal


def test_prevalence_and_size_grow_with_age():
    rng = np.random.default_rng(0)
    young = [sample_marginal(rng, 25.0) for _ in range(2000)]
    old = [sample_marginal(rng, 80.0) for _ in range(2000)]
    # 5 % and 95 % (binomial SD about 0.5 %)
    assert np.mean([bool(x) for x in young]) == pytest.approx(0.05, abs=0.02)
    assert np.mean([bool(x) for x in old]) == pytest.approx(0.95, abs=0.02)
    assert marginal_probability(52.5) == pytest.approx(0.5)
    mid = [s for _ in range(2000) for s in sample_marginal(rng, 50.0)]
    many = [s for x in old for s in x]
    assert len(many) / 2000 > 3 * len(mid) / 2000  # more per patient when older
    assert np.mean([s["protrusion_mm"] for s in many]) > np.mean([s["protrusion_mm"] for s in mid]) + 1.0
    for s in many + mid:
        assert (s["vertebra"], s["endplate"]) in ENDPLATES
        assert abs(s["angle_deg"]) <= MAX_ANGLE_DEG and 1.5 <= s["protrusion_mm"] <= 6.0


@pytest.fixture(scope="module")
def old_patient():
    # seed 1: age 87, five marginal osteophytes (L3 both endplates, L5, S1)
    case = generate_case(1, shape_zyx=(120, 160, 160), window_tables=False)
    assert len(case.truth["parameters"]["extras"]["osteophytes"]) >= 3
    return case


def test_osteophytes_are_bone_of_their_vertebra_exactly_where_their_shape_says(old_patient):
    case = old_patient
    structures = sitk.GetArrayFromImage(case.structures)
    labels = sitk.GetArrayFromImage(case.labels)
    with_spurs = [p for p in case.anatomy.bones if p.added]
    assert with_spurs
    added_voxels = 0
    for part in with_spurs:
        plain = replace(part, added=[])
        plain.__dict__.pop("_mesh_bounds", None)
        for prim in part.added:
            # the voxels of the osteophyte's box (body -> index through the pose)
            voxels = phantom_voxels_in(case, *prim.body_bounds(1.0))
            if voxels is None:
                continue  # outside this grid
            grid_idx, body = voxels
            d = part.sdf_points(body)  # with the osteophytes, carved from the nerves
            sure = np.abs(d) > 1e-3
            codes = structures[tuple(grid_idx.T)]
            inside = sure & (d < 0)
            assert np.all(codes[inside] == part.code), part.name
            assert np.all(labels[tuple(grid_idx[inside].T)] == 1)
            assert not np.any(codes[sure & (d > 0)] == part.code)
            # bone that is there only because of the osteophyte
            extra = inside & (plain.sdf_points(body) > 0.5)
            added_voxels += int(extra.sum())
    assert added_voxels > 30


def test_a_degenerated_level_gets_its_foraminal_osteophyte_on_meshes():
    from spinect.phantom.meshes import sample_mesh_params
    from spinect.phantom.mesh_anatomy import build_mesh_anatomy

    for seed in range(40):
        params = sample_mesh_params(np.random.default_rng(seed), degeneration=True)
        if params.degeneration.osteophyte_mm > 0:
            break
    else:
        pytest.fail("no degenerated case with an osteophyte in 40 seeds")
    degen = params.degeneration
    assert degen.sap_hypertrophy_mm == 0.0  # not modelled on meshes (it would move the SAP face)
    anatomy = build_mesh_anatomy(params, np.random.default_rng(seed), surroundings=False)
    lower = "S1" if degen.level == "L5S1" else "L5"
    part = next(p for p in anatomy.bones if p.name == lower)
    spur = part.added[-1]
    assert spur.radii[1] == pytest.approx(degen.osteophyte_mm)
    # its centre (posterolateral rim of the lower endplate, degenerated side) is bone of that vertebra
    # and lies on the degenerated side of the midline
    frame = anatomy.frames[lower]
    assert part.sdf_points(spur.centre[None])[0] < 0
    assert np.sign(frame.local(spur.centre)[0]) == SIDE_SIGN[degen.side]
    # no root runs through it: the bone keeps its gap from every nerve
    for root in anatomy.roots.values():
        pts = np.asarray(root.points, float)
        assert np.all(part.sdf_points(pts) > np.asarray(root.radii))

