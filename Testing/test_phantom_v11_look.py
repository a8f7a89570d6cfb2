"""Phantom version 11: the arch's dense layer and a two-scale, patchy, vertically elongated trabecular texture.

Image-only changes: labels, structures and truth are untouched (checked against version 10 by hash, docs/phantom.md). The
numbers behind them: median HU by depth inside real arches falls from 540-555 HU 1-2 mm deep (chest CT) and
492 HU in the surface voxel (crop) to marrow + 65-90 HU beyond 4.5 mm; version 10 drew a bright rim round a flat
fill of marrow + 190-250 HU.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from spinect.phantom import STRUCTURE_CODES, generate_case
from spinect.phantom import appearance as A
from spinect.phantom.primitives import GridBox
from spinect.phantom.render import BoneModel, _cancellous_ct


def _deep_field(model: BoneModel, seed: int, shape=(96, 96, 96)) -> np.ndarray:
    """Cancellous HU of a bone box far (50 mm) from any surface: marrow plus texture only."""
    box = GridBox(np.zeros(3), np.eye(3), (0, 0, 0), shape)
    d = np.full(box.shape, -50.0, np.float32)
    return _cancellous_ct(box, d, SimpleNamespace(code=3, name="L3"), model, np.float32(0.4), np.random.default_rng(seed))


def _model(**kw) -> BoneModel:
    base = dict(cortex_mm=0.4, cortex_hu=1000.0, marrow_hu={3: 150.0}, dense_hu=400.0, depth_mm=1.0,
                texture_rel=0.3, texture_mm=0.8)
    return BoneModel(**{**base, **kw})


def test_two_scale_patchy_texture_keeps_the_marrow_mean_and_the_texture_sd():
    """Neither the coarse share nor the patchy gain moves the marrow's median or its SD
    (``texture_rel x (marrow - fat)`` = 0.3 x 250 = 75 HU)."""
    for kw in ({}, {"texture_coarse_share": 0.5}, {"texture_patchiness": 0.6},
               {"texture_coarse_share": 0.5, "texture_patchiness": 0.6}):
        # in expectation: since version 13 each box is a window of stationary fields (a coarse field
        # moves one box's median by a few HU), so averaged over draws
        fields = [_deep_field(_model(**kw), s) for s in range(6)]
        assert abs(float(np.mean([np.median(f) for f in fields])) - 150.0) < 2.0, kw
        assert abs(float(np.mean([f.std() for f in fields])) - 75.0) < 3.0, kw


def _lag_correlation(field: np.ndarray, axis: int, lag: int) -> float:
    a = np.moveaxis(field - field.mean(), axis, 0)
    return float(np.mean(a[lag:] * a[:-lag]) / np.mean(a * a))


def test_texture_is_coarser_patchier_and_vertical_as_drawn():
    one = _deep_field(_model(), 0)
    coarse = _deep_field(_model(texture_coarse_share=0.5), 0)
    # a second scale: correlation at 3 mm, nearly none for a single 0.8 mm scale
    assert _lag_correlation(one, 2, 3) < 0.05 < 0.15 < _lag_correlation(coarse, 2, 3)
    vertical = _deep_field(_model(texture_z_ratio=2.5), 0)
    assert _lag_correlation(vertical, 0, 2) > 2.0 * _lag_correlation(vertical, 2, 2)  # trabeculae along z
    # patchiness: the local (4 mm) SD of the texture varies over the box
    patchy = _deep_field(_model(texture_patchiness=0.6), 0) - 150.0
    flat = one - 150.0

    def local_sd_spread(f):
        sd = np.sqrt(ndimage.uniform_filter(f * f, 9))[8:-8:6, 8:-8:6, 8:-8:6]
        return float(sd.std() / sd.mean())

    assert local_sd_spread(patchy) > 2.0 * local_sd_spread(flat)


def test_texture_shape_and_arch_layer_draws():
    young = [A.sample_trabecular_texture(np.random.default_rng(i), 25.0) for i in range(60)]
    old = [A.sample_trabecular_texture(np.random.default_rng(i), 85.0) for i in range(60)]
    for t in young + old:
        assert 1.3 <= t["texture_z_ratio"] <= 2.7
        assert 0.3 <= t["texture_coarse_share"] <= 0.6 and 0.3 <= t["texture_patchiness"] <= 0.7
    # the same draws: the old lose horizontal trabeculae, so their texture is more vertical
    assert all(o["texture_z_ratio"] >= y["texture_z_ratio"] for y, o in zip(young, old))
    assert max(o["texture_z_ratio"] for o in old) > 2.4 and max(y["texture_z_ratio"] for y in young) < 1.9
    for i in range(40):
        layer = A.sample_arch_layer(np.random.default_rng(i))
        assert A.ARCH_DENSE_HU[0] <= layer["arch_dense_hu"] <= A.ARCH_DENSE_HU[1]
        assert A.ARCH_DEPTH_MM[0] <= layer["arch_depth_mm"] <= A.ARCH_DEPTH_MM[1]
    app = A.sample_ct(np.random.default_rng(3), (1.0, 1.0, 1.0))
    model = A.ct_values(app).bone
    assert model.arch_dense_hu == app.arch_dense_hu and model.texture_z_ratio == app.texture_z_ratio
    assert model.arch_cortex_variation == A.ARCH_CORTEX_VARIATION


def test_arch_hu_falls_with_depth_to_the_posterior_value():
    """In a case's arches (bone more than 3 mm behind the body's posterior wall), without noise: the
    layer 1-2 mm inside is far denser than the arch's core, which lies near the drawn posterior HU
    (plus the regional density field: since version 13 each vertebra keeps that field's local
    offset, so three cases are pooled)."""
    spacing = (1.0, 1.0, 1.0)
    contrasts, drawn = [], []
    for seed in (7, 8, 9):
        case = generate_case(seed, shape_zyx=(90, 110, 110), spacing_zyx_mm=spacing, window_tables=False, noise=False,
                             appearance_overrides={"offset_hu": (0.0, 0.0)})
        ct = sitk.GetArrayFromImage(case.ct).astype(float)
        st = sitk.GetArrayFromImage(case.structures)
        app = case.truth["appearance"]["ct"]
        shallow, deep = [], []
        for name in ("L3", "L4"):
            bone = st == STRUCTURE_CODES[name]
            depth = ndimage.distance_transform_edt(bone, sampling=spacing) - 0.5
            idx = np.argwhere(bone)
            body = case.grid.world_to_body(case.grid.index_to_world(idx))
            frame, b = case.anatomy.frames[name], case.anatomy.params.vertebrae[name].b
            arch = np.zeros(bone.shape, bool)
            arch[tuple(idx[(body - frame.centre) @ frame.axes[1] > b + 3.0].T)] = True
            shallow.append(ct[arch & (depth >= 1.0) & (depth < 2.0)])
            deep.append(ct[arch & (depth >= 4.0)])
        shallow_hu, deep_hu = float(np.median(np.concatenate(shallow))), float(np.median(np.concatenate(deep)))
        assert np.concatenate(deep).size > 100
        assert shallow_hu > deep_hu, (seed, shallow_hu, deep_hu)
        # the core: the posterior HU plus the texture's, the regional field's and the layer's tails
        assert abs(deep_hu - app["posterior_hu"]) < 80.0, (seed, deep_hu, app["posterior_hu"])
        contrasts.append(shallow_hu - deep_hu)
        drawn.append(app["arch_dense_hu"] - app["posterior_hu"])
    # most of the drawn contrast between the dense layer and the core (partial volume with the cortex
    # and the layer's ~1 mm edge blur the rest)
    assert np.mean(contrasts) > 0.6 * np.mean(drawn) > 100.0, (contrasts, drawn)


def test_vessel_outline_reads_as_its_neighbours():
    """The voxels a vessel's irregular outline gives up take the HU of the tissue beside them: liver
    (140 HU) on one side, fat (-100 HU) on the other, not the box's fat everywhere."""
    from spinect.phantom.soft_detail import _outside_value

    view = np.zeros((5, 40, 40), np.float32)
    view[:, :, :20] = 140.0  # liver on the left
    view[:, :, 20:] = -100.0  # fat on the right
    inside = np.zeros(view.shape, bool)
    inside[:, 10:30, 15:25] = True  # a vessel across the border
    view[inside] = 300.0
    around = _outside_value(view, inside, np.float32(-100.0))
    assert abs(float(around[2, 20, 15]) - 140.0) < 1.0  # the vessel's left edge: liver
    assert abs(float(around[2, 20, 24]) + 100.0) < 1.0  # its right edge: fat
    assert around[2, 10, 15] > 100.0 and around[2, 10, 24] < -60.0  # the corners: their own side
    # outside the vessel the neighbours' own values come back (the spread is a weighted mean of them)
    assert abs(float(around[2, 5, 5]) - 140.0) < 1e-3 and abs(float(around[2, 5, 35]) + 100.0) < 1e-3


def test_gas_cap_is_the_loops_front_above_a_flat_level():
    """Version 12: a contrast loop's gas lies in front of (body y below) a coronal air-fluid level and
    inside the loop; its back is that plane, not a round bubble's curve."""
    from spinect.phantom.primitives import frame_from_vectors
    from spinect.phantom.surroundings import LevelledEllipsoid

    rng = np.random.default_rng(0)
    axes = frame_from_vectors(rng.normal(size=3), rng.normal(size=3))
    centre, radii = np.array([5.0, -40.0, 12.0]), np.array([14.0, 10.0, 18.0])
    gas = LevelledEllipsoid(centre, axes, radii=radii, level_mm=-3.5)
    pts = centre + rng.uniform(-20.0, 20.0, size=(20000, 3))
    local = (pts - centre) @ axes.T
    in_loop = (local / radii) ** 2 @ np.ones(3) < 1.0
    in_gas = gas.sdf_points(pts) < 0
    assert np.all(in_gas <= in_loop) and in_gas.sum() > 500
    np.testing.assert_array_equal(in_gas, in_loop & (pts[:, 1] - centre[1] < -3.5))
