"""Phantom version 9 look: the vacuum phenomenon of degenerated lower discs (HU only)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from spinect.phantom import STRUCTURE_CODES, generate_case
from spinect.phantom.soft_detail import VACUUM_DISCS, sample_disc_vacuum, vacuum_probability


def test_vacuum_prevalence_follows_age():
    rng = np.random.default_rng(0)
    assert vacuum_probability(35.0) == 0.0 and vacuum_probability(90.0) == 0.5
    young = [sample_disc_vacuum(rng, 35.0) for _ in range(1000)]
    old = [sample_disc_vacuum(rng, 80.0) for _ in range(4000)]
    assert not any(young)
    assert np.mean([bool(v) for v in old]) == pytest.approx(0.5, abs=0.03)
    for v in old:
        assert set(v) <= set(VACUUM_DISCS) and all(0.3 <= x <= 1.0 for x in v.values())
        assert not v or VACUUM_DISCS[1] in v  # L5/S1 first


def test_gas_clefts_lie_in_the_vacuum_disc_only_and_leave_labels_alone():
    # seed 1: age 87, vacuum in the L5/S1 disc only (noise- and blur-free image: the tissue values)
    case = generate_case(1, shape_zyx=(120, 160, 160), noise=False, window_tables=False)
    vacuum = case.truth["appearance"]["ct"]["soft_tissue"]["disc_vacuum"]
    assert set(vacuum) == {"disc_L5S1"}
    ct = sitk.GetArrayFromImage(case.ct).astype(float)
    st = sitk.GetArrayFromImage(case.structures)
    gas = ct < -300.0
    l5s1 = st == STRUCTURE_CODES["disc_L5S1"]
    assert gas[l5s1].sum() >= 5
    for name in ("disc_L3L4", "disc_L4L5"):
        assert not gas[st == STRUCTURE_CODES[name]].any(), name
    # the clefts are HU only: the disc keeps its code, and the label map has no bone or nerve there
    labels = sitk.GetArrayFromImage(case.labels)
    assert not labels[l5s1].any()
