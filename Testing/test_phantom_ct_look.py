"""Phantom version 4 look (issue 14): only the CT intensities changed, labels and truth did not.

The hashes below were recorded with the code before the change (phantom version 3): the label
map, the structure codes and the truth JSON (less its ``appearance`` and ``phantom_version``
entries, which describe the intensities) of the same seeds must stay identical.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from spinect.phantom import PHANTOM_VERSION, generate_case
from spinect.phantom import appearance as A
from spinect.phantom.render import soften_edges
from spinect.phantom.soft_detail import sample_soft_look

#: (seed, shape, spacing) -> (labels, structures, truth) sha256 prefixes of phantom version 3.
FROZEN = {
    (3, (48, 80, 80), (1.0, 1.0, 1.0)): ("02b8a2d4abedd774", "758e7f3f2437c497", "f92e6eb07ff5c066"),
    (8, (24, 64, 64), (3.0, 1.2, 1.2)): ("c350885145840566", "6ae4f1c5ca522a8c", "b7d74c5f7f12dea4"),
}


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("key", list(FROZEN))
def test_labels_structures_and_truth_are_unchanged(key):
    seed, shape, spacing = key
    case = generate_case(seed, shape_zyx=shape, spacing_zyx_mm=spacing)
    truth = {k: v for k, v in case.truth.items() if k not in ("appearance", "phantom_version")}
    got = (_sha(sitk.GetArrayFromImage(case.labels)), _sha(sitk.GetArrayFromImage(case.structures)),
           hashlib.sha256(json.dumps(truth, sort_keys=True).encode()).hexdigest()[:16])
    assert got == FROZEN[key]
    assert case.truth["phantom_version"] == PHANTOM_VERSION == "4"


def test_soften_edges_blurs_the_tissue_steps_and_keeps_the_texture():
    flat = np.full((8, 32, 32), -100.0, np.float32)
    flat[:, :, 16:] = 50.0
    flat[:, ::2, 15] = 50.0  # a one-voxel stair-step
    texture = np.random.default_rng(0).normal(0.0, 5.0, flat.shape).astype(np.float32)
    hu = flat + texture
    soften_edges(hu, flat.copy(), (1.0, 0.65, 0.65))
    edge = hu[:, :, 14:18] - texture[:, :, 14:18]
    assert np.all(edge > -100.5) and np.all(edge < 50.5)
    assert np.ptp(edge[:, :, 1]) < 0.6 * 150.0  # the step is softened, not kept as 150 HU jumps
    np.testing.assert_allclose(hu[:, :, :6] - texture[:, :, :6], -100.0, atol=1e-3)  # far from edges: texture as drawn


def test_contrast_phase_and_vein_value():
    phases = {sample_soft_look(np.random.default_rng(i), 60.0, True).phase for i in range(40)}
    assert phases == {"arterial", "portal"}
    assert sample_soft_look(np.random.default_rng(0), 60.0, False).phase == "none"
    for i in range(20):
        look = sample_soft_look(np.random.default_rng(i), 60.0, True)
        assert (0.15 <= look.vein_rel <= 0.35) if look.phase == "arterial" else (0.55 <= look.vein_rel <= 0.9)


def test_noise_streaks_run_left_right():
    app = A.sample_ct(np.random.default_rng(0), (1.0, 1.0, 1.0), {"kernel": "smooth", "noise_sd_hu": 20.0})
    app = replace(app, noise_streak=1.5)
    noise = A.nps_noise((8, 64, 64), (1.0, 1.0, 1.0), app, np.random.default_rng(1))
    assert noise.std() == pytest.approx(20.0, rel=1e-3)
    power = np.abs(np.fft.fft2(noise, axes=(1, 2))) ** 2
    along_fy, along_fx = power[:, 2:20, 0].mean(), power[:, 0, 2:20].mean()
    assert along_fy > 1.5 * along_fx  # noise elongated along x varies along y
