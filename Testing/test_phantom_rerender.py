"""Re-rendering a CT from a phantom structure map (spinect.phantom.rerender) and training on it.

Truth here: the structure codes painted (each structure its drawn value, the cortex = the bone
voxels a 3 x 3 x 3 erosion removes, by scipy), the analytic 10-90 % width of a blurred step
(2.563 sigma), and the training loop's own patch boxes.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from spinect.errors import InputError, SpinectError
from spinect.manifest import DatasetCase, write_manifest
from spinect.phantom.rerender import RERENDER_MODES, draw_render, render_structures, rerender_ct
from spinect.phantom.structures import STRUCTURE_CODES as C
from spinect.phantom.structures import labels_from_structures

FAT, MUSCLE, SAC, L4 = C["subcutaneous_fat"], C["psoas_left"], C["dural_sac"], C["L4"]


def _toy_map(shape=(24, 48, 48)) -> np.ndarray:
    """Fat, with a muscle block, a vertebral body (L4) and a dural sac tube along z."""
    z, y, x = np.indices(shape)
    codes = np.full(shape, FAT, np.uint8)
    codes[:, 4:20, 4:44] = MUSCLE
    codes[(np.abs(y - 32) < 9) & (np.abs(x - 16) < 10)] = L4
    codes[(y - 32) ** 2 + (x - 36) ** 2 < 16] = SAC
    return codes


def _ct_draw(seed=0, **changes):
    draw = draw_render(np.random.default_rng(seed), "ct")
    return dataclasses.replace(draw, **changes) if changes else draw


def test_ideal_render_paints_each_structure_its_value_and_the_bone_rim_as_cortex():
    codes = _toy_map()
    draw = _ct_draw(1, island_fraction=0.1, island_hu=-80.0)
    image = render_structures(codes, (1.0, 1.0, 1.0), draw, scanner=False).numpy()
    bone = codes == L4
    interior = ndimage.binary_erosion(bone, np.ones((3, 3, 3)), border_value=1)
    for code in (FAT, MUSCLE, SAC):
        assert np.all(image[codes == code] == pytest.approx(draw.table_hu[code]))
    assert np.all(image[bone & ~interior] == pytest.approx(draw.cortex_hu))
    marrow = image[interior]
    islands = np.isclose(marrow, -80.0)
    assert np.all(islands | np.isclose(marrow, draw.table_hu[L4]))
    assert islands.mean() == pytest.approx(0.1, abs=0.03)


def test_ct_values_are_physical_and_random_values_are_independent():
    ct = [draw_render(np.random.default_rng(s), "ct") for s in range(200)]
    assert all(d.table_hu[FAT] < d.table_hu[MUSCLE] < d.cortex_hu for d in ct)
    assert all(-50.0 <= d.table_hu[L4] <= 350.0 and 250.0 <= d.cortex_hu <= 900.0 for d in ct)
    assert 0.15 < np.mean([d.iv_contrast for d in ct]) < 0.45
    randoms = [draw_render(np.random.default_rng(s), "random") for s in range(200)]
    fat, muscle = np.array([[d.table_hu[FAT], d.table_hu[MUSCLE]] for d in randoms]).T
    assert abs(np.corrcoef(fat, muscle)[0, 1]) < 0.2  # every structure drawn on its own (SynthSeg)
    assert np.mean(fat > muscle) > 0.2  # contrasts a CT never shows
    modes = [draw_render(np.random.default_rng(s), "mixed").mode for s in range(200)]
    assert 0.35 < modes.count("ct") / 200 < 0.65


def test_scanner_blur_widths_match_the_drawn_point_spread():
    """A step along z and one along x, noise-free: 10-90 % widths = 2.563 sigma (mm) of each axis."""
    draw = next(d for d in (draw_render(np.random.default_rng(s), "ct") for s in range(100))
                if d.psf_sigma_zyx_mm[0] > 1.5 * d.psf_sigma_zyx_mm[2])  # a thick-slice draw
    draw = dataclasses.replace(draw, noise_sd_hu=0.0, texture_sd_hu=np.zeros(256, np.float32), sharpen=0.0, offset_hu=0.0)
    spacing = (0.25, 0.25, 0.25)
    low, high = draw.table_hu[FAT], draw.table_hu[MUSCLE]
    for axis in (0, 2):
        codes = np.full((64, 8, 64), FAT, np.uint8)
        index = [slice(None)] * 3
        index[axis] = slice(32, None)
        codes[tuple(index)] = MUSCLE
        profile = render_structures(codes, spacing, draw).numpy()[32 if axis else slice(None), 4, slice(None) if axis else 32]
        frac = (profile - low) / (high - low)
        width_mm = (np.interp(0.9, frac, np.arange(64)) - np.interp(0.1, frac, np.arange(64))) * 0.25
        assert width_mm == pytest.approx(2.563 * draw.psf_sigma_zyx_mm[axis], rel=0.1)


def test_noise_and_offset_match_the_draw():
    codes = np.full((40, 96, 96), FAT, np.uint8)
    draw = _ct_draw(4, texture_sd_hu=np.zeros(256, np.float32), sharpen=0.0)
    image = render_structures(codes, (1.0, 1.0, 1.0), draw).numpy()
    assert image.mean() == pytest.approx(draw.table_hu[FAT] + draw.offset_hu, abs=0.05 * draw.noise_sd_hu + 0.5)
    assert image.std() == pytest.approx(draw.noise_sd_hu, rel=0.05)


def test_same_seed_same_image_and_a_phantom_case_looks_like_ct():
    from spinect.phantom import generate_case

    case = generate_case(2, shape_zyx=(40, 64, 64), window_tables=False)
    codes = sitk.GetArrayFromImage(case.structures)
    first, draw = rerender_ct(codes, (1.0, 1.0, 1.0), 7, mode="ct")
    again, _ = rerender_ct(codes, (1.0, 1.0, 1.0), 7, mode="ct")
    other, _ = rerender_ct(codes, (1.0, 1.0, 1.0), 8, mode="ct")
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.dtype == np.float32 and first.shape == codes.shape
    labels = labels_from_structures(codes)
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(case.labels))
    bone_median = float(np.median(first[labels == 1]))
    assert -80.0 < bone_median < 700.0  # marrow and a partial-volume cortex, not a bright shell
    fat = np.isin(codes, [C["subcutaneous_fat"], C["visceral_fat"]])
    assert float(np.median(first[fat])) < -40.0
    for seed in range(4):  # random mode maps the darkest voxel to air, whatever the contrasts drawn
        image, draw = rerender_ct(codes, (1.0, 1.0, 1.0), seed, mode="random")
        assert -1024.0 <= image.min() <= -850.0 and image.max() <= 3071.0 and draw.mode == "random"


def test_bad_input_gets_a_clear_error():
    with pytest.raises(SpinectError, match="use one of ct, random, mixed"):
        draw_render(np.random.default_rng(0), "mri")
    with pytest.raises(SpinectError, match=r"\(Z, Y, X\)"):
        rerender_ct(np.zeros((8, 8), np.uint8), (1.0, 1.0, 1.0), 0)
    with pytest.raises(SpinectError, match="3 positive sizes"):
        rerender_ct(np.zeros((4, 8, 8), np.uint8), (1.0, 0.0, 1.0), 0)
    from spinect.requests import TrainRequest

    assert TrainRequest.__dataclass_fields__["rerender_mode"].metadata["choices"] == RERENDER_MODES


# --- training ------------------------------------------------------------------------------------

def _write_phantom_like_case(folder: Path, case_id: str, codes: np.ndarray, seed: int, *, with_map: bool) -> DatasetCase:
    hu, _ = rerender_ct(codes, (1.0, 1.0, 1.0), seed, mode="ct")
    ct = sitk.GetImageFromArray(hu)
    ct.SetOrigin((5.0, -3.0, 20.0))
    labels = sitk.GetImageFromArray(labels_from_structures(codes))
    labels.CopyInformation(ct)
    paths = {name: folder / f"{case_id}_{name}.nii.gz" for name in ("ct", "labels", "structures")}
    sitk.WriteImage(ct, str(paths["ct"]))
    sitk.WriteImage(labels, str(paths["labels"]))
    extra = {"split": "train" if seed == 0 else "val"}
    if with_map:
        structures = sitk.GetImageFromArray(codes)
        structures.CopyInformation(ct)
        sitk.WriteImage(structures, str(paths["structures"]))
        extra["structures"] = paths["structures"].name
    return DatasetCase(case_id, paths["ct"], paths["labels"], "phantom", extra)


def _dataset(folder: Path, *, with_map: bool) -> Path:
    folder.mkdir()
    codes = _toy_map((32, 48, 48))
    write_manifest(folder, [_write_phantom_like_case(folder, f"case_{i}", codes, i, with_map=with_map) for i in (0, 1)])
    return folder


def _config(data: Path, out: Path, **changes):
    from spinect.train import TrainingConfig

    options = dict(data=data, out=out, iterations=3, val_every=3, base_width=4, batch_size=2, lr=3e-3, seed=3,
                   show_progress=False, training_status="test-only", num_threads=2, rerender=1.0)
    options.update(changes)
    return TrainingConfig(**options)


def test_training_paints_every_patch_anew_from_its_structure_box(tmp_path, monkeypatch):
    from spinect.model_file import load_model
    from spinect.train import trainer

    data = _dataset(tmp_path / "data", with_map=True)
    painted = []
    original = trainer._Loop._rerender

    def spy(self, structures, rng):
        image = original(self, structures, rng)
        painted.append((structures.copy(), image))
        return image

    monkeypatch.setattr(trainer._Loop, "_rerender", spy)
    result = trainer.train(_config(data, tmp_path / "run"))
    assert len(painted) == 3 * 2  # every patch of every step (share 1.0)
    region = trainer.region_size_for((32, 64, 64), max_jitter_mm=0.2)
    for structures, image in painted:
        assert structures.shape == image.shape == region
        assert structures.dtype == np.uint8 and image.dtype == np.float32
    # the boxes differ from patch to patch, and so do the pictures painted of one box
    _, plan = load_model(result.last_model)
    assert "100%" in plan.provenance["rerender"] and "mixed" in plan.provenance["rerender"]


def test_sampler_boxes_of_the_structure_map_match_the_label_boxes():
    from spinect.train import PatchSampler

    codes = _toy_map()
    labels = labels_from_structures(codes)
    sampler = PatchSampler([codes.astype(np.float32)], [labels], region_size_zyx=(16, 40, 40), structures=[codes])
    rng = np.random.default_rng(0)
    for _ in range(20):
        sample = sampler.sample(rng)
        np.testing.assert_array_equal(labels_from_structures(sample.structures), sample.labels)


def test_rerender_without_structure_maps_or_out_of_range_is_refused(tmp_path):
    from spinect.train import train

    data = _dataset(tmp_path / "data", with_map=False)
    with pytest.raises(InputError, match="none of the 1 training cases .* has one"):
        train(_config(data, tmp_path / "run"))
    with pytest.raises(InputError, match="share of patches painted anew"):
        train(_config(data, tmp_path / "run2", rerender=1.5))
    with pytest.raises(InputError, match="--rerender-mode must be one of"):
        train(_config(data, tmp_path / "run3", rerender_mode="mri"))
    assert not (tmp_path / "run2").exists() and not (tmp_path / "run3").exists()
    assert math.isclose(_config(data, tmp_path, rerender=0.0).rerender, 0.0)
