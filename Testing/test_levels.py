"""Vertebral level classes: plans with a class map, level training, ``segment --levels`` outputs.

Truth here: a phantom's structure map (levels and SPINECT labels come from one map), a 3-class
network's own labels (a level model made from it must give the same bone/nerve), and a stand-in
network whose classes are a known function of HU on a CT of blocks (so the expected level map
is known voxel for voxel).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from spinect.errors import ModelError
from spinect.plan import CLASS_NAMES, LEVEL_CLASS_GROUPS, LEVEL_CLASS_NAMES, LEVEL_MAP_NAMES, LEVEL_NAMES, ModelPlan

ARCH = dict(name="spinect_unet", base_width=4, levels=3, in_channels=1, norm="batch")


def _save_tiny(path: Path, plan_classes, groups=None) -> Path:
    from spinect.model_file import save_model
    from spinect.nets import build_network

    arch = dict(ARCH, num_classes=len(plan_classes))
    plan = ModelPlan(architecture=arch, class_names=tuple(plan_classes), class_groups=groups or {}, training_status="test-only")
    torch.manual_seed(0)
    save_model(path, build_network(**arch), plan)
    return path


def test_three_class_and_level_plans_both_load_and_give_bone_and_nerve(tmp_path):
    from spinect.model_file import load_model

    _, three = load_model(_save_tiny(tmp_path / "three.pt", CLASS_NAMES), device="cpu")
    _, level = load_model(_save_tiny(tmp_path / "level.pt", LEVEL_CLASS_NAMES, LEVEL_CLASS_GROUPS), device="cpu")
    assert three.label_names == level.label_names == ("background", "bone", "nerve")
    assert not three.has_levels and level.has_levels
    lookup = level.spinect_lookup()
    assert [LEVEL_CLASS_NAMES[i] for i, v in enumerate(lookup) if v == 1] == list(LEVEL_CLASS_GROUPS["bone"])
    assert [LEVEL_CLASS_NAMES[i] for i, v in enumerate(lookup) if v == 2] == list(LEVEL_CLASS_GROUPS["nerve"])
    assert [LEVEL_MAP_NAMES[v] for v in level.level_lookup() if v] == list(LEVEL_NAMES)


def test_level_model_without_class_map_is_refused(tmp_path):
    from spinect.model_file import load_model

    path = _save_tiny(tmp_path / "level.pt", LEVEL_CLASS_NAMES, LEVEL_CLASS_GROUPS)
    payload = torch.load(path, weights_only=False)
    payload["plan"].pop("class_groups")
    torch.save(payload, path)
    path.with_suffix(".json").unlink()  # the sidecar's checksum names the old file
    with pytest.raises(ModelError, match="class map"):
        load_model(path, device="cpu")
    bad = dict(LEVEL_CLASS_GROUPS, nerve=("dural_sac", "cerebellum"))
    with pytest.raises(ValueError, match="unknown"):
        ModelPlan(architecture={}, class_names=LEVEL_CLASS_NAMES, class_groups=bad)


def test_level_classes_from_structures_union_is_the_spinect_labels():
    from spinect.phantom import generate_case
    from spinect.phantom.structures import labels_from_structures, level_classes_from_structures

    case = generate_case(3, shape_zyx=(64, 96, 96), spacing_zyx_mm=(2.0, 1.5, 1.5), window_tables=False)
    codes = sitk.GetArrayFromImage(case.structures)
    classes = level_classes_from_structures(codes)
    plan = ModelPlan(architecture={}, class_names=LEVEL_CLASS_NAMES, class_groups=LEVEL_CLASS_GROUPS)
    np.testing.assert_array_equal(np.asarray(plan.spinect_lookup(), np.uint8)[classes], labels_from_structures(codes))
    np.testing.assert_array_equal(np.asarray(plan.spinect_lookup(), np.uint8)[classes], sitk.GetArrayFromImage(case.labels))
    # each vertebra's structure code lands on its own level class
    for level in ("L3", "L4", "L5"):
        from spinect.phantom.structures import STRUCTURE_CODES

        inside = codes == STRUCTURE_CODES[level]
        assert inside.any() and np.all(classes[inside] == LEVEL_CLASS_NAMES.index(level))


def test_level_model_from_a_three_class_model_gives_the_same_labels():
    from spinect.nets import build_network
    from spinect.train.trainer import expand_head_to_levels

    torch.manual_seed(1)
    three = build_network(**ARCH, num_classes=3).eval()
    level = build_network(**ARCH, num_classes=len(LEVEL_CLASS_NAMES)).eval()
    level.load_state_dict(expand_head_to_levels(three.state_dict()), strict=True)
    x = torch.randn(2, 1, 16, 32, 32)
    with torch.no_grad():
        expected = torch.argmax(three(x), dim=1).numpy()
        classes = torch.argmax(level(x), dim=1).numpy()
    plan = ModelPlan(architecture={}, class_names=LEVEL_CLASS_NAMES, class_groups=LEVEL_CLASS_GROUPS)
    got = np.asarray(plan.spinect_lookup())[classes]
    assert len(np.unique(expected)) >= 2  # a test that could fail
    np.testing.assert_array_equal(got, expected)


# --- stand-in level network: class = nearest class HU --------------------------------------

#: HU of each block of the test CT and the class it stands for.
BLOCK_HU = {"L3": 300.0, "L4": 500.0, "L5": 700.0, "nerve_root": 1100.0}


class _HUClassifier(torch.nn.Module):
    """Logits = -(HU - class HU)^2: the class whose HU is nearest wins (air = background)."""

    def __init__(self) -> None:
        super().__init__()
        centres = np.full(len(LEVEL_CLASS_NAMES), 5000.0, np.float32)
        centres[0] = -1000.0
        for name, hu in BLOCK_HU.items():
            centres[LEVEL_CLASS_NAMES.index(name)] = hu
        self.register_buffer("centres", torch.from_numpy(centres).view(1, -1, 1, 1, 1))

    def forward(self, x):  # x: normalised HU (mean 0, std 1000)
        return -((x * 1000.0 - self.centres) / 100.0) ** 2


def _block_ct() -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """CT (z, y, x) = (60, 64, 64) at 1 mm: L3, L4, L5 blocks stacked along z, a nerve bar beside them
    joined to them (spinect.pipeline.THIN_OBJECT_MAX_MM: a thin piece apart from the body is background)."""
    hu = np.full((60, 64, 64), -1000.0, np.float32)
    level = np.zeros(hu.shape, np.uint8)
    for k, name in enumerate(("L5", "L4", "L3")):  # LPS: z grows cranially
        z0 = 6 + 16 * k
        hu[z0:z0 + 16, 10:30, 10:30] = BLOCK_HU[name]
        level[z0:z0 + 16, 10:30, 10:30] = LEVEL_MAP_NAMES.index(name)
    hu[6:54, 12:20, 34:40] = BLOCK_HU["nerve_root"]
    hu[6:54, 14:18, 30:34] = BLOCK_HU["nerve_root"]  # joined to the bone: a thin object in air is never labelled
    image = sitk.GetImageFromArray(hu)
    labels = np.where(level > 0, 1, 0).astype(np.uint8)
    labels[hu == BLOCK_HU["nerve_root"]] = 2
    return image, labels, level


def test_segment_levels_end_to_end_with_known_classes(tmp_path):
    import slicerio

    from spinect.io import read_labelmap, write_labelmap
    from spinect.pipeline import segment_image

    ct, labels_true, level_true = _block_ct()
    plan = ModelPlan(architecture={}, class_names=LEVEL_CLASS_NAMES, class_groups=LEVEL_CLASS_GROUPS,
                     intensity_mean=0.0, intensity_std=1000.0, training_status="test-only")
    out = segment_image(ct, _HUClassifier(), plan, levels=True, remove_islands=False, smoothing_mm=0.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out.labels), labels_true)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out.levels), level_true)

    smoothed = segment_image(ct, _HUClassifier(), plan, levels=True, remove_islands=False, smoothing_mm=3.0)
    lab, lev = sitk.GetArrayFromImage(smoothed.labels), sitk.GetArrayFromImage(smoothed.levels)
    assert np.all(lab[lev > 0] == 1)  # level segments never leave the bone segment
    kept = (level_true > 0) & (lab == 1)  # smoothing rounds the blocks' edges off bone and levels alike
    assert kept.sum() > 0.9 * (level_true > 0).sum()
    assert np.mean(lev[kept] == level_true[kept]) > 0.99

    # .seg.nrrd: bone and nerve whole in layer 0, levels (SNOMED CT vertebra codes) in layer 1
    seg_path = write_labelmap(out.labels, tmp_path / "levels.seg.nrrd", levels=out.levels)
    seg = slicerio.read_segmentation(str(seg_path))
    by_name = {s["name"]: s for s in seg["segments"]}
    assert by_name["bone"]["layer"] == 0 and by_name["L4"]["layer"] == 1
    assert by_name["L4"]["terminology"]["type"] == ["SCT", "11994002", "L4 vertebra"]
    assert by_name["sacrum"]["terminology"]["type"] == ["SCT", "54735007", "Sacrum"]
    back = sitk.GetArrayFromImage(read_labelmap(seg_path))
    np.testing.assert_array_equal(back, labels_true)  # the bone segment is the union, untouched by the levels
    back_levels = sitk.GetArrayFromImage(read_labelmap(seg_path, class_names=LEVEL_MAP_NAMES))
    np.testing.assert_array_equal(back_levels, level_true)

    # label image: a second file beside it
    nii = write_labelmap(out.labels, tmp_path / "out.nii.gz", levels=out.levels)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out_levels.nii.gz"))), level_true)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(nii))), labels_true)


def test_levels_with_a_three_class_level_model_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    from spinect.cli import main

    ct, _, _ = _block_ct()
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    model = _save_tiny(tmp_path / "three.pt", CLASS_NAMES)
    for name in ("out.nii.gz", "out.seg.nrrd"):
        code = main(["segment", str(tmp_path / "ct.nii.gz"), str(tmp_path / name), "--model", str(model), "--levels",
                     "--level-model", str(model)])
        assert code != 0
        assert "--levels needs a model that labels vertebral levels" in capsys.readouterr().err
    code = main(["segment", str(tmp_path / "ct.nii.gz"), str(tmp_path / "out.nii.gz"), "--model", str(model),
                 "--level-model", str(model)])
    assert code != 0 and "--level-model is used only with --levels" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "three.json", "three.pt"]


def _nearest_level_reference(bone: np.ndarray, levels: np.ndarray, spacing_zyx, max_mm: float) -> np.ndarray:
    """Brute force: each bone voxel takes the level of the nearest labelled voxel within max_mm."""
    src = np.argwhere(levels > 0) * np.asarray(spacing_zyx)
    out = np.zeros(levels.shape, np.uint8)
    for idx in np.argwhere(bone):
        d = np.sqrt(((src - idx * np.asarray(spacing_zyx)) ** 2).sum(axis=1))
        k = int(np.argmin(d))
        if d[k] <= max_mm:
            out[tuple(idx)] = levels[tuple(np.argwhere(levels > 0)[k])]
    return out


def test_transfer_levels_gives_bone_the_nearest_level_within_reach():
    from spinect.pipeline import transfer_levels

    spacing_zyx = (2.0, 1.0, 1.0)
    labels = np.zeros((14, 16, 16), np.uint8)
    labels[2:12, 4:12, 0:12] = 1  # reaches x = 0, beyond 4 mm from the level map
    labels[2:12, 13:15, 2:4] = 2  # nerve never gets a level
    coarse = np.zeros(labels.shape, np.uint8)
    coarse[3:7, 6:13, 6:13] = 4  # the level model's bone: shifted and cut off
    coarse[7:13, 6:13, 6:13] = 3
    image = lambda a: _with_spacing(sitk.GetImageFromArray(a), spacing_zyx)  # noqa: E731
    got = sitk.GetArrayFromImage(transfer_levels(image(labels), image(coarse), max_distance_mm=4.0))
    expected = _nearest_level_reference(labels == 1, coarse, spacing_zyx, 4.0)
    np.testing.assert_array_equal(got, expected)
    assert got[labels == 2].max() == 0 and (got[labels == 1] == 0).any() and {3, 4} <= set(np.unique(got))


def _with_spacing(image: sitk.Image, spacing_zyx) -> sitk.Image:
    image.SetSpacing(tuple(float(v) for v in reversed(spacing_zyx)))
    return image


def test_segment_with_a_separate_level_model_puts_its_levels_on_the_models_bone(tmp_path):
    from spinect.api import segment
    from spinect.nets import build_network
    from spinect.model_file import save_model
    from spinect.train.trainer import expand_head_to_levels
    from spinect.pipeline import transfer_levels

    from conftest import make_tiny_model

    three = make_tiny_model(tmp_path / "three.pt")
    from spinect.model_file import load_model

    net, plan = load_model(three, device="cpu", allow_untrained=True)
    arch = dict(plan.architecture, num_classes=len(LEVEL_CLASS_NAMES))
    level_net = build_network(**arch)
    level_net.load_state_dict(expand_head_to_levels(net.state_dict()))
    with torch.no_grad():
        level_net.head.bias[5] += 5.0  # "L5" wins wherever the tiny model saw bone or nearly
    level_path = tmp_path / "level.pt"
    save_model(level_path, level_net, plan.replace(architecture=arch, class_names=LEVEL_CLASS_NAMES,
                                                    class_groups=dict(LEVEL_CLASS_GROUPS), spacing_zyx_mm=(2.0, 2.0, 2.0)))
    from spinect.phantom import generate_case

    ct = generate_case(2, shape_zyx=(40, 96, 96), spacing_zyx_mm=(2.0, 1.5, 1.5), window_tables=False).ct
    result = segment(ct, tmp_path / "out.seg.nrrd", model=three, levels=True, level_model=level_path, allow_untrained=True,
                     device="cpu")
    plain = segment(ct, None, model=three, allow_untrained=True, device="cpu")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), sitk.GetArrayFromImage(plain.labels))
    own = segment(ct, None, model=level_path, levels=True, allow_untrained=True, device="cpu", smoothing_mm=0.0)
    expected = transfer_levels(plain.labels, own.levels)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.levels), sitk.GetArrayFromImage(expected))
    lev = sitk.GetArrayFromImage(result.levels)
    assert (lev == 5).any() and np.all(sitk.GetArrayFromImage(result.labels)[lev > 0] == 1)
    written = json.loads((tmp_path / "out.seg.nrrd.provenance.json").read_text())
    from spinect.model_file import sha256_of_file

    assert written["level_model"]["sha256"] == sha256_of_file(level_path)
    assert written["model"]["sha256"] == sha256_of_file(three)


def test_train_levels_from_a_three_class_model_on_phantoms(tmp_path):
    from spinect.api import segment
    from spinect.model_file import load_model
    from spinect.phantom import make_phantom
    from spinect.train import TrainingConfig, train

    data = tmp_path / "data"
    make_phantom(data, n=2, seed=5, shape_zyx=(40, 80, 80), spacing_zyx_mm=(2.0, 1.5, 1.5))
    init = _save_tiny(tmp_path / "three.pt", CLASS_NAMES)
    config = TrainingConfig(data=data, out=tmp_path / "run", iterations=2, val_every=2, batch_size=2, seed=1,
                            show_progress=False, training_status="test-only", num_threads=2, init=init, classes="levels")
    result = train(config)
    _, plan = load_model(result.last_model, device="cpu")
    assert plan.class_names == LEVEL_CLASS_NAMES and plan.class_groups == LEVEL_CLASS_GROUPS
    header = (tmp_path / "run" / "val_log.csv").read_text().splitlines()[0]
    assert {"dice_bone", "dice_nerve", "dice_L5", "dice_sacrum"} <= set(header.split(","))
    case = json.loads((data / "manifest.json").read_text())["cases"][0]
    got = segment(data / case["image"], tmp_path / "seg.nii.gz", model=result.last_model, levels=True, allow_untrained=True)
    assert got.levels is not None and (tmp_path / "seg_levels.nii.gz").is_file()
    lev, lab = sitk.GetArrayFromImage(got.levels), sitk.GetArrayFromImage(got.labels)
    assert np.all(lab[lev > 0] == 1)


def test_train_levels_refuses_a_model_with_other_classes(tmp_path):
    from spinect.errors import InputError
    from spinect.phantom import make_phantom
    from spinect.train import TrainingConfig, train

    data = tmp_path / "data"
    make_phantom(data, n=2, seed=5, shape_zyx=(40, 80, 80), spacing_zyx_mm=(2.0, 1.5, 1.5))
    four = _save_tiny(tmp_path / "four.pt", ("background", "bone", "nerve", "disc"))
    config = TrainingConfig(data=data, out=tmp_path / "run", iterations=2, show_progress=False, num_threads=2,
                            init=four, classes="levels", training_status="test-only")
    with pytest.raises(InputError, match="classes"):
        train(config)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_level_class_weights_follow_their_group_and_the_early_nerve_weight():
    from spinect.train.trainer import class_weight_schedule

    plan = ModelPlan(architecture={}, class_names=LEVEL_CLASS_NAMES, class_groups=LEVEL_CLASS_GROUPS)
    schedule = class_weight_schedule(plan, 100, early_nerve_weight=2.0)
    nerve = [LEVEL_CLASS_NAMES.index(n) for n in LEVEL_CLASS_GROUPS["nerve"]]
    assert [schedule.weights_at(0)[i] for i in nerve] == [2.0, 2.0]
    assert [w for i, w in enumerate(schedule.weights_at(0)) if i not in nerve] == [1.0] * 9
    assert schedule.weights_at(99) == schedule.weights_at(0)  # late weights are 1:1:2 as well
    three = class_weight_schedule(ModelPlan(architecture={}), 100)
    assert three.weights_at(0) == (1.0, 1.0, 20.0) and three.weights_at(99) == (1.0, 1.0, 2.0)


def test_train_cli_keeps_an_explicit_spacing_with_init_and_refuses_bad_weights(tmp_path, capsys):
    from spinect.cli import main
    from spinect.model_file import load_plan
    from spinect.phantom import make_phantom

    data = tmp_path / "data"
    make_phantom(data, n=2, seed=6, shape_zyx=(40, 80, 80), spacing_zyx_mm=(2.0, 1.5, 1.5))
    init = _save_tiny(tmp_path / "three.pt", CLASS_NAMES)
    code = main(["train", str(data), "--out", str(tmp_path / "bad"), "--early-nerve-weight", "0"])
    assert code != 0 and "--early-nerve-weight" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    code = main(["train", str(data), "--out", str(tmp_path / "run"), "--init", str(init), "--classes", "levels",
                 "--spacing", "3", "3", "3", "--iterations", "2", "--val-every", "2", "--no-progress", "--threads", "2"])
    assert code == 0
    plan = load_plan(tmp_path / "run" / "last.pt")
    assert plan.spacing_zyx_mm == (3.0, 3.0, 3.0) and plan.has_levels


@pytest.mark.parametrize("option, message", [
    (["--patch", "30", "64", "64"], "--patch must be 3 multiples of 16"),
    (["--stride", "40", "40", "40"], "--stride must be 3 positive integers no larger than the window"),
    (["--spacing", "0", "1", "1"], "--spacing must be 3 voxel sizes"),
])
def test_train_grid_options_are_checked_before_any_work(tmp_path, capsys, option, message):
    from spinect.cli import main

    (tmp_path / "data").mkdir()
    code = main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *option])
    assert code != 0 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
