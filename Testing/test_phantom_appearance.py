"""Phantom appearance modes: CT-realistic (``ct``, default), ``v1`` and randomised (``random``).

Small grids (48 x 64 x 64 mm around L4-S1) keep this fast; the drawn parameters come from the
truth JSON's ``appearance`` entry.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from spinect.errors import SpinectError
from spinect.io import validate_ct
from spinect.phantom import STRUCTURE_CODES, generate_case
from spinect.phantom import appearance as A

SMALL = (48, 64, 64)
WIDE = (24, 100, 100)  # holds psoas and paraspinal muscles (uniform regions for noise)
MUSCLES = ("psoas_left", "psoas_right", "paraspinal_left", "paraspinal_right")


def _arr(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _case(seed: int = 2, **kw):
    kw.setdefault("shape_zyx", SMALL)
    return generate_case(seed, window_tables=False, degeneration=False, **kw)


@pytest.fixture(scope="module")
def clean_ct():
    return _case(noise=False)


@pytest.fixture(scope="module")
def clean_v1():
    return _case(noise=False, appearance="v1")


def _muscle(case, iterations: int = 3) -> np.ndarray:
    st = _arr(case.structures)
    return ndimage.binary_erosion(np.isin(st, [STRUCTURE_CODES[n] for n in MUSCLES]), iterations=iterations)


def _deep_body(case, name: str, depth_mm: float = 6.0) -> np.ndarray:
    """Voxels of ``name`` deeper than ``depth_mm`` inside bone, in the body (in front of its
    posterior wall) and away from the endplates."""
    st = _arr(case.structures)
    idx = np.argwhere(st == STRUCTURE_CODES[name])
    body = case.grid.world_to_body(case.grid.index_to_world(idx))
    part = next(p for p in case.anatomy.bones if p.name == name)
    frame, vp = case.anatomy.frames[name], case.anatomy.params.vertebrae[name]
    local = frame.local(body)
    keep = (part.sdf_points(body) < -depth_mm) & (local[:, 1] < vp.b - 6.0)
    for plate in (frame.superior, frame.inferior):
        keep &= np.abs((body - plate.centre) @ plate.normal) > 6.0
    mask = np.zeros(st.shape, bool)
    mask[tuple(idx[keep].T)] = True
    return mask


def test_default_mode_is_ct_and_records_its_parameters(clean_ct):
    app = clean_ct.truth["appearance"]
    assert app["mode"] == "ct" and app["randomised"] is False
    ct = app["ct"]
    for key in ("age_years", "marrow_hu", "cortex_mm", "cortex_hu", "kernel", "noise_sd_hu", "offset_hu",
                "slice_thickness_mm", "slice_profile"):
        assert key in ct, key
    assert 20 <= ct["age_years"] <= 90 and -50 <= ct["marrow_hu"] <= 350
    assert 0.3 <= ct["cortex_mm"] <= 0.8 and 700 <= ct["cortex_hu"] <= 1400 and ct["kernel"] in A.KERNELS


@pytest.mark.parametrize("seed", [2, 4])
def test_body_interior_is_marrow(seed):
    case, name = _case(seed, noise=False), "L5"  # L5 lies wholly inside the small grid
    ct = _arr(case.ct).astype(float)
    mask = _deep_body(case, name)
    assert mask.sum() > 200
    marrow = case.truth["appearance"]["ct"]["marrow_by_bone_hu"][name]
    median = float(np.median(ct[mask]))
    # the marrow's regional field (sigma 8 mm, the drawn SD 15-50 HU) and, since version 11, the coarse
    # texture (sigma up to 2.5 mm in-plane, 6.8 mm along z) vary on the scale of one body, and since
    # version 13 each body keeps the regional field's local offset (a window of a stationary field,
    # not re-centred on its box): within 2.5 regional SDs plus 30 HU; the texture itself is unbiased
    # (test_phantom_v11_look.py)
    variation = case.truth["appearance"]["ct"]["marrow_variation_hu"]
    assert abs(median - marrow) < 2.5 * variation + 30.0, (median, marrow, variation)
    assert -50 - 150 <= np.percentile(ct[mask], 5) and np.percentile(ct[mask], 95) <= 350 + 150


def test_age_model_marrow_mean():
    ages = [A.sample_age(np.random.default_rng(s)) for s in range(400)]
    assert 20 <= min(ages) and max(ages) <= 90 and 58 <= np.mean(ages) <= 70
    assert np.mean([(50 <= a <= 85) for a in ages]) > 0.6
    assert A.marrow_mean_hu(25) == 226 and A.marrow_mean_hu(90) == pytest.approx(63.5)


def test_labelled_bone_is_mostly_dim_like_real_ct(clean_v1):
    """Real lumbar crop: 37 % of labelled bone below 100 HU, 55 % below 200 HU."""
    shares = []
    for seed in (1, 2, 3):
        case = _case(seed, appearance_overrides={"age_years": 75})
        bone = _arr(case.ct)[_arr(case.labels) == 1]
        shares.append(float((bone < 200).mean()))
    assert np.mean(shares) > 0.3, shares
    v1 = _arr(clean_v1.ct)[_arr(clean_v1.labels) == 1]
    assert (v1 < 200).mean() < 0.01


def test_cortex_rim_is_thinner_and_dimmer_than_v1(clean_ct, clean_v1):
    bone = _arr(clean_ct.labels) == 1
    np.testing.assert_array_equal(bone, _arr(clean_v1.labels) == 1)
    rim = bone & ~ndimage.binary_erosion(bone)
    ct_rim, v1_rim = _arr(clean_ct.ct)[rim], _arr(clean_v1.ct)[rim]
    assert np.median(ct_rim) < np.median(v1_rim) - 100
    assert (ct_rim >= 1000).mean() < 0.5 * (v1_rim >= 1000).mean() + 0.01


@pytest.mark.parametrize("kernel, sd", [("smooth", 12.0), ("sharp", 45.0)])
def test_noise_sd_matches_request(kernel, sd):
    ov = {"kernel": kernel, "noise_sd_hu": sd, "offset_hu": 0.0}
    noisy, clean = _case(shape_zyx=WIDE, appearance_overrides=ov), _case(shape_zyx=WIDE, appearance_overrides=ov, noise=False)
    muscle = _muscle(clean)
    assert muscle.sum() > 500
    diff = _arr(noisy.ct).astype(float)[muscle] - _arr(clean.ct).astype(float)[muscle]
    assert diff.std() == pytest.approx(sd, rel=0.15)
    assert noisy.truth["appearance"]["noise_sd_hu"] == pytest.approx(sd)


def _high_frequency_share(noise: np.ndarray) -> float:
    power = np.abs(np.fft.rfft2(noise, axes=(1, 2))) ** 2
    fy = np.fft.fftfreq(noise.shape[1])[:, None]
    fx = np.fft.rfftfreq(noise.shape[2])[None, :]
    return float(power[:, np.hypot(fy, fx) > 0.35].sum() / power.sum())


def test_sharp_kernel_has_more_high_frequency_noise_and_edge_overshoot():
    shares = {}
    for kernel in A.KERNELS:
        app = A.sample_ct(np.random.default_rng(0), (1.0, 1.0, 1.0), {"kernel": kernel, "noise_sd_hu": 20.0})
        noise = A.nps_noise((16, 64, 64), (1.0, 1.0, 1.0), app, np.random.default_rng(1))
        assert noise.std() == pytest.approx(20.0, rel=1e-3)
        shares[kernel] = _high_frequency_share(noise)
        mtf = A.kernel_mtf(app, np.linspace(0.0, 0.5, 51))
        assert (mtf.max() > 1.02) == (kernel == "sharp")  # edge enhancement only for sharp kernels
    assert shares["sharp"] > 1.3 * shares["smooth"], shares


def test_calibration_offset_shifts_the_mean():
    lo, hi = (_case(shape_zyx=WIDE, appearance_overrides={"offset_hu": v}) for v in (-20.0, 20.0))
    muscle = _muscle(lo)
    assert muscle.sum() > 500
    shift = _arr(hi.ct).astype(float)[muscle].mean() - _arr(lo.ct).astype(float)[muscle].mean()
    assert shift == pytest.approx(40.0, abs=1.0)


def test_overrides_apply():
    low = _case(noise=False, appearance_overrides={"marrow_hu": (10, 110)})
    high = _case(noise=False, appearance_overrides={"marrow_hu": (250, 350)})
    bone, deep = _arr(low.labels) == 1, _deep_body(low, "L5")
    assert np.median(_arr(low.ct)[bone]) < np.median(_arr(high.ct)[bone]) - 50  # the arch is dense bone either way
    assert np.median(_arr(low.ct)[deep]) < np.median(_arr(high.ct)[deep]) - 150
    assert all(10 <= v <= 110 for v in low.truth["appearance"]["ct"]["marrow_by_bone_hu"].values())
    dim = _case(noise=False, appearance_overrides={"cortex_hu": (400, 600), "kernel": "sharp"})
    assert 400 <= dim.truth["appearance"]["ct"]["cortex_hu"] <= 600 and dim.truth["appearance"]["ct"]["kernel"] == "sharp"
    iv = _case(noise=False, appearance_overrides={"iv_contrast": True})
    vessel = ndimage.binary_erosion(_arr(iv.structures) == STRUCTURE_CODES["blood_vessel"])
    # (phantom v4: the arteries carry the 200-400 HU; veins and rims are dimmer by contrast phase)
    assert vessel.sum() > 20 and 200 <= np.percentile(_arr(iv.ct)[vessel], 90) <= 420
    thick = _case(noise=True, appearance_overrides={"slice_thickness_mm": 3.0})
    assert thick.truth["appearance"]["ct"]["slice_profile"].startswith("rect*gauss")


@pytest.mark.parametrize("overrides, words", [
    ({"marow_hu": (0, 100)}, ["marow_hu", "marrow_hu", "kernel"]),
    ({"kernel": "soft"}, ["kernel", "smooth", "sharp"]),
    ({"cortex_hu": (600, 400)}, ["cortex_hu"]),
])
def test_bad_overrides_are_rejected(overrides, words):
    with pytest.raises(SpinectError) as err:
        _case(shape_zyx=(16, 24, 24), appearance_overrides=overrides)
    assert all(w in str(err.value) for w in words)


def test_bad_modes_are_rejected():
    with pytest.raises(SpinectError, match="appearance"):
        _case(shape_zyx=(16, 24, 24), appearance="mri")
    with pytest.raises(SpinectError, match="ct"):
        _case(shape_zyx=(16, 24, 24), appearance="v1", appearance_overrides={"kernel": "sharp"})


@pytest.mark.parametrize("mode", ["ct", "random"])
def test_same_seed_same_image(mode):
    a, b = _case(5, appearance=mode), _case(5, appearance=mode)
    np.testing.assert_array_equal(_arr(a.ct), _arr(b.ct))
    assert a.truth["appearance"] == b.truth["appearance"]
    assert np.any(_arr(_case(6, appearance=mode).ct) != _arr(a.ct)[: SMALL[0]])


def test_v1_mode_is_the_first_phantom_appearance(clean_v1):
    app = clean_v1.truth["appearance"]
    assert app["mode"] == "v1" and 1050 <= app["tissue_hu"]["cortical_bone"] <= 1450
    assert 150 <= app["tissue_hu"]["cancellous_bone"] <= 400


def test_random_mode_looks_like_ct_differs_and_keeps_labels():
    ct = _case(3)
    for seed_mode in ({"appearance": "random"}, {"randomise_appearance": True}):
        rand = _case(3, **seed_mode)
        validate_ct(rand.ct)
        assert _arr(rand.ct).min() <= -900
        np.testing.assert_array_equal(_arr(rand.labels), _arr(ct.labels))
        np.testing.assert_array_equal(_arr(rand.structures), _arr(ct.structures))
        assert np.abs(_arr(rand.ct).astype(float) - _arr(ct.ct)).mean() > 50
        assert rand.truth["appearance"]["mode"] == "random"
    variants = {_case(s, shape_zyx=(16, 24, 24), appearance="random").truth["appearance"]["random_priors"] for s in range(8)}
    assert variants == {"ct_aware", "uniform"}


def test_cli_appearance_option(tmp_path):
    import json

    from spinect.cli import main

    out = tmp_path / "v1"
    assert main(["phantom", str(out), "--shape", "16", "24", "24", "--appearance", "v1", "--progress-lines"]) == 0
    assert json.loads((out / "case_000_truth.json").read_text())["appearance"]["mode"] == "v1"
    with pytest.raises(SystemExit):
        main(["phantom", str(tmp_path / "bad"), "--shape", "16", "24", "24", "--appearance", "mri"])
