"""Phantom version 7 look (image only): ligamentum flavum, interrupted cortex, arterial wall,
coarse-grid noise fields. Labels and bone/nerve codes stay those of the frozen hashes
(test_phantom_ct_look.py)."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from spinect.phantom import STRUCTURE_CODES as C
from spinect.phantom.primitives import GridBox
from spinect.phantom.render import _cortex_gaps, ligamentum_flavum_weight, smooth_noise
from spinect.phantom.soft_detail import WALL_HU, _arterial_wall, _Fields

VERTEBRA_CODES = [C[n] for n in ("L1", "L2", "L3", "L4", "L5", "S1", "sacrum")]


def _arr(image):
    return sitk.GetArrayFromImage(image)


def test_ligamentum_flavum_lines_the_laminae_behind_the_sac_without_a_label(clean_canal_case):
    clean_case = clean_canal_case
    st, labels, ct = _arr(clean_case.structures), _arr(clean_case.labels), _arr(clean_case.ct)
    slices, weight = ligamentum_flavum_weight(st, clean_case.grid.body_box(), clean_case.anatomy)
    lf = np.zeros(st.shape, np.float32)
    lf[slices] = weight
    core = lf >= 0.99
    assert core.sum() > 50
    assert np.all(st[lf > 0] == C["epidural_fat"])  # image only: the code stays epidural fat
    assert np.all(labels[lf > 0] == 0)  # never bone or nerve
    bone_mm = ndimage.distance_transform_edt(~np.isin(st, VERTEBRA_CODES))
    assert bone_mm[core].max() <= 3.5  # within about 3 mm of the laminae
    # behind the dural sac: posterior is +y in the (unrotated) body, and the grid is LPS
    zs, ys, _ = np.nonzero(core)
    sac = st == C["dural_sac"]
    for z in np.unique(zs)[::4]:
        sac_y = np.nonzero(sac[z])[0]
        assert ys[zs == z].mean() > sac_y.mean()
    hu = ct[core & (bone_mm >= 2.0)]  # away from the bone's partial volume
    assert 55 <= np.median(hu) <= 105


def test_cortex_gaps_cover_the_requested_share_and_spare_the_arch():
    box = GridBox(np.zeros(3), np.eye(3), (0, 0, 0), (48, 64, 64))
    gaps = _cortex_gaps(box, 0.3, np.random.default_rng(0), None)
    assert gaps.shape == box.shape and gaps.min() >= 0.0 and gaps.max() <= 1.0
    share = float((gaps > 0.5).mean())
    assert 0.15 < share < 0.35
    arch = np.ones(box.shape, np.float32)
    spared = _cortex_gaps(box, 0.3, np.random.default_rng(0), arch)
    np.testing.assert_allclose(spared, 0.3 * gaps, atol=1e-6)


@pytest.mark.parametrize("sigma_vox", [1.5, 3.0])
def test_smooth_noise_keeps_unit_sd_and_its_correlation_length(sigma_vox):
    # version 13: unit SD in expectation (a window of a stationary field), so the mean square over draws
    draws = [smooth_noise((64, 64, 64), sigma_vox, np.random.default_rng(seed)) for seed in range(1, 9)]
    f = draws[0]
    assert f.dtype == np.float32 and f.shape == (64, 64, 64)
    assert abs(float(np.mean([d.mean() for d in draws]))) < 0.05
    assert abs(float(np.mean([np.mean(np.square(d, dtype=np.float64)) for d in draws])) - 1.0) < 0.05
    lag = int(round(2 * sigma_vox))  # Gaussian-filtered white noise: ACF exp(-d^2 / (4 sigma^2)) = 1/e at 2 sigma
    acf = float(np.mean(f[:, :, :-lag] * f[:, :, lag:]) / np.mean(f * f))
    assert abs(acf - np.exp(-(lag**2) / (4 * sigma_vox**2))) < 0.15


def test_arterial_wall_dims_the_rim_of_large_arteries_only():
    shape = (20, 40, 40)
    yy, xx = np.mgrid[:40, :40]
    radius = np.hypot(yy - 19.5, xx - 19.5)
    depth = np.broadcast_to(10.0 - radius, shape).astype(np.float32)  # a 10 mm tube
    box = tuple(slice(0, n) for n in shape)
    value = np.full(shape, 300.0, np.float32)
    _arterial_wall(value, depth, _Fields(np.random.default_rng(2), np.ones(3)), box, None, np.float32(1.0))
    assert np.all(value[:, (radius < 5.5)] == 300.0)  # the lumen keeps its contrast
    rim = value[:, (radius > 9.2) & (radius < 9.8)]
    assert np.all(rim < 150.0) and np.all(rim >= WALL_HU - 1e-3)
    vein = np.ones(shape, np.float32)
    untouched = np.full(shape, 300.0, np.float32)
    _arterial_wall(untouched, depth, _Fields(np.random.default_rng(2), np.ones(3)), box, vein, np.float32(1.0))
    assert np.all(untouched == 300.0)
