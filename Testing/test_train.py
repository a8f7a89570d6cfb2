"""Training: splits, patch sampling, augmentation alignment, loss schedule, the loop and --resume.

Everything runs on tiny synthetic volumes whose CT is derived from the label map, with a
4-channel network, on the CPU.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from spinect.errors import InputError
from spinect.manifest import DatasetCase, write_manifest
from spinect.train import (
    TrainingConfig,
    PatchSampler,
    WeightSchedule,
    augment_patch,
    build_augmentation,
    load_case,
    region_size_for,
    split_cases,
    train,
    weighted_cross_entropy,
)

HU_OF_CLASS = np.array([0.0, 700.0, 60.0], np.float32)  # soft tissue, bone, nerve


def _synthetic_labels(shape_zyx=(32, 40, 44), shift: int = 0) -> np.ndarray:
    """A bony block and a nerve tube (radius 3 voxels) running along z."""
    z, y, x = np.indices(shape_zyx)
    labels = np.zeros(shape_zyx, np.uint8)
    labels[(np.abs(y - 20) < 8) & (np.abs(x - 14 - shift) < 7)] = 1
    labels[(y - 20) ** 2 + (x - 32 - shift) ** 2 < 9] = 2
    return labels


def _write_case(folder: Path, case_id: str, labels: np.ndarray, *, seed: int, spacing_xyz=(1.0, 1.0, 1.0)) -> DatasetCase:
    rng = np.random.default_rng(seed)
    hu = HU_OF_CLASS[labels] + rng.normal(0.0, 20.0, labels.shape).astype(np.float32)
    ct = sitk.GetImageFromArray(hu.astype(np.float32))
    ct.SetSpacing(spacing_xyz)
    ct.SetOrigin((10.0, -5.0, 30.0))
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(ct)
    image_path, label_path = folder / f"{case_id}_ct.nii.gz", folder / f"{case_id}_labels.nii.gz"
    sitk.WriteImage(ct, str(image_path))
    sitk.WriteImage(label_image, str(label_path))
    return DatasetCase(id=case_id, image=image_path, label=label_path, source="synthetic")


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """Two cases, one for training and one for validation (given by the manifest)."""
    folder = tmp_path / "data"
    folder.mkdir()
    cases = []
    for index, split in enumerate(("train", "val")):
        case = _write_case(folder, f"case_{index}", _synthetic_labels(shift=index), seed=index)
        cases.append(DatasetCase(case.id, case.image, case.label, case.source, {"split": split}))
    write_manifest(folder, cases)
    return folder


def _config(data: Path, out: Path, **changes) -> TrainingConfig:
    options = dict(
        data=data, out=out, iterations=10, val_every=5, base_width=4, batch_size=2, lr=3e-3, seed=3,
        show_progress=False, training_status="test-only", num_threads=2,
    )
    options.update(changes)
    return TrainingConfig(**options)


# --- splits -------------------------------------------------------------------------------------

def _fake_cases(n: int) -> list[DatasetCase]:
    return [DatasetCase(id=f"case_{i:03d}", image=Path(f"/x/{i}_ct.nii.gz"), label=Path(f"/x/{i}_labels.nii.gz")) for i in range(n)]


def test_split_is_32_8_10_disjoint_and_deterministic():
    cases = _fake_cases(50)
    tests = []
    for fold in range(5):
        split = split_cases(cases, seed=7, fold=fold, folds=5)
        assert (len(split.train), len(split.val), len(split.test)) == (32, 8, 10)
        subsets = [set(split.train), set(split.val), set(split.test)]
        assert sum(len(s) for s in subsets) == len(set().union(*subsets)) == 50
        assert split == split_cases(cases, seed=7, fold=fold, folds=5)
        tests.append(set(split.test))
    # The five test folds partition the dataset (SPINECT's 5-fold validation).
    assert set().union(*tests) == {c.id for c in cases} and sum(len(t) for t in tests) == 50
    assert split_cases(cases, seed=8, fold=0) != split_cases(cases, seed=7, fold=0)


def test_split_from_manifest_field_is_honoured():
    cases = [DatasetCase(c.id, c.image, c.label, "", {"split": s}) for c, s in zip(_fake_cases(4), ("train", "val", "test", "train"))]
    split = split_cases(cases, seed=0)
    assert split.train == ("case_000", "case_003") and split.val == ("case_001",) and split.test == ("case_002",)


# --- class weights ------------------------------------------------------------------------------

@pytest.mark.parametrize("total", [10, 100, 250, 1000])
def test_weight_schedule_switches_after_40_percent(total):
    schedule = WeightSchedule(total_steps=total)
    weights = [schedule.weights_at(step) for step in range(total)]
    n_early = sum(w == (1.0, 1.0, 20.0) for w in weights)
    assert n_early == round(0.4 * total)
    assert all(w == (1.0, 1.0, 20.0) for w in weights[:n_early]) and all(w == (1.0, 1.0, 2.0) for w in weights[n_early:])


def test_weighted_cross_entropy_matches_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6)
    target = torch.randint(0, 3, (2, 4, 5, 6))
    weights = (1.0, 1.0, 20.0)
    log_p = torch.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
    expected = -(torch.tensor(weights)[target] * log_p).mean()
    assert torch.allclose(weighted_cross_entropy(logits, target, weights), expected, atol=1e-6)


# --- sampling -----------------------------------------------------------------------------------

def test_class_aware_sampling_puts_nerve_in_the_stated_share():
    labels = np.zeros((48, 160, 160), np.uint8)
    labels[20:22, 70:72, 90:92] = 2  # 8 nerve voxels: a random patch almost never holds one
    labels[:10, :40, :40] = 1
    share = 0.4
    sampler = PatchSampler([labels.astype(np.float32)], [labels], region_size_zyx=(8, 16, 16), class_fractions={2: share})
    rng = np.random.default_rng(0)
    samples = [sampler.sample(rng) for _ in range(600)]
    with_nerve = np.mean([(s.labels == 2).any() for s in samples])
    assert abs(with_nerve - share) < 0.07
    # A nerve-centred patch has nerve at its centre voxel, and image and labels come from the same box.
    for s in samples:
        if s.centre_class == 2:
            assert s.labels[4, 8, 8] == 2
        np.testing.assert_array_equal(s.image, s.labels.astype(np.float32))


# --- augmentation -------------------------------------------------------------------------------

def test_augmentation_keeps_image_and_label_aligned():
    labels = _synthetic_labels((48, 96, 96))
    region = region_size_for((16, 32, 32))
    pipeline = build_augmentation((16, 32, 32), image_interpolation="nearest", noise_std=0.0, seed=0)
    sampler = PatchSampler([labels.astype(np.float32)], [labels], region_size_zyx=region)
    rng = np.random.default_rng(1)
    for _ in range(25):
        sample = sampler.sample(rng)
        image, label = augment_patch(pipeline, sample.image, sample.labels)
        assert image.shape == (1, 16, 32, 32) and label.shape == (16, 32, 32)
        assert torch.equal(image[0].round().long(), label)


def test_voxel_jitter_stays_within_0_2_mm_and_flips_are_fair():
    box = np.zeros((40, 40, 40), np.uint8)
    box[10:30, 10:30, 10:30] = 1  # 20 voxels wide
    pipeline = build_augmentation((40, 40, 40), image_interpolation="nearest", noise_std=0.0, seed=0)
    widths = []
    for _ in range(30):
        _, label = augment_patch(pipeline, box.astype(np.float32), box)
        widths += [int(label.numpy().any(axis=tuple(a for a in range(3) if a != axis)).sum()) for axis in range(3)]
    assert min(widths) >= 16 - 1 and max(widths) <= 24 + 1  # 20 voxels * [0.8, 1.2]
    assert max(widths) - min(widths) >= 3  # the jitter does act
    asymmetric = np.zeros((8, 8, 8), np.float32)
    asymmetric[:, :2, :] = 1.0  # low y
    flip_pipeline = build_augmentation((8, 8, 8), max_jitter_mm=0.0, noise_std=0.0, seed=1)
    flipped = [float(augment_patch(flip_pipeline, asymmetric, asymmetric.astype(np.uint8))[0][0, :, -1].mean()) > 0 for _ in range(200)]
    assert 0.4 < np.mean(flipped) < 0.6


# --- data loading -------------------------------------------------------------------------------

def test_seg_nrrd_labels_are_read_by_segment_name(tmp_path):
    import slicerio

    from spinect.io import labelmap_to_segmentation

    labels = _synthetic_labels()
    case = _write_case(tmp_path, "case_seg", labels, seed=0, spacing_xyz=(0.8, 0.8, 1.5))
    label_image = sitk.ReadImage(str(case.label))
    segmentation = labelmap_to_segmentation(label_image)
    # Re-number as a Slicer user might: nerve = 1, bone = 5.
    voxels = segmentation["voxels"]
    segmentation["voxels"] = np.where(voxels == 2, 1, np.where(voxels == 1, 5, 0)).astype(np.uint8)
    for segment in segmentation["segments"]:
        segment["labelValue"] = {"bone": 5, "nerve": 1}[segment["name"]]
    seg_path = tmp_path / "case_seg.seg.nrrd"
    slicerio.write_segmentation(str(seg_path), segmentation)
    loaded = load_case(DatasetCase("case_seg", case.image, seg_path), image_interpolation="nearest")
    reference = load_case(case, image_interpolation="nearest")
    assert loaded.spacing_zyx_mm == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(loaded.labels, reference.labels)
    assert set(np.unique(loaded.labels)) == {0, 1, 2}
    # The 1 mm labels still sit on the bone / nerve intensities of the 1 mm CT.
    assert loaded.image_hu[loaded.labels == 1].mean() > 500 and abs(loaded.image_hu[loaded.labels == 2].mean() - 60) < 30


# --- the loop -----------------------------------------------------------------------------------

def _loss_on_case(network: torch.nn.Module, case, plan) -> float:
    from spinect.preprocess import normalise_hu

    image = normalise_hu(case.image_hu, hu_window=plan.hu_window, mean=plan.intensity_mean, std=plan.intensity_std)
    x = torch.from_numpy(image[:32, :32, :32].copy())[None, None]
    y = torch.from_numpy(case.labels[:32, :32, :32].astype(np.int64))[None]
    network.eval()
    with torch.no_grad():
        return float(weighted_cross_entropy(network(x), y, (1.0, 1.0, 2.0)))


def test_tiny_training_lowers_loss_and_writes_usable_models(tiny_dataset, tmp_path):
    from spinect.api import segment
    from spinect.model_file import load_model
    from spinect.nets import build_network

    result = train(_config(tiny_dataset, tmp_path / "run"))
    network, plan = load_model(result.last_model)
    torch.manual_seed(3)  # the trainer's seed: the same He-initialised starting network
    initial = build_network(**plan.architecture)
    case = load_case(DatasetCase("case_0", tiny_dataset / "case_0_ct.nii.gz", tiny_dataset / "case_0_labels.nii.gz"))
    assert _loss_on_case(network, case, plan) < 0.8 * _loss_on_case(initial, case, plan)
    # Intensity statistics come from the training case only.
    assert plan.intensity_mean == pytest.approx(float(np.clip(case.image_hu, -1000, 2000).mean()), rel=1e-4)
    assert plan.provenance["cases"]["train"] == ["case_0"] and "metrics" in plan.provenance
    with open(result.run_dir / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(10))
    assert sum(float(r["nerve_weight"]) == 20.0 for r in rows) == 4
    assert (result.run_dir / "curves.png").stat().st_size > 0
    best_network, best_plan = load_model(result.best_model)
    ct = sitk.ReadImage(str(tiny_dataset / "case_1_ct.nii.gz"))
    segmented = segment(ct, model=result.best_model, device="cpu")
    assert segmented.labels.GetSize() == ct.GetSize()
    assert set(np.unique(sitk.GetArrayViewFromImage(segmented.labels))) <= {0, 1, 2}


def test_resume_continues_from_the_saved_step(tiny_dataset, tmp_path):
    from spinect.model_file import load_model
    from spinect.train.state import load_training_state

    straight = train(_config(tiny_dataset, tmp_path / "straight", iterations=6, val_every=3))
    first = train(_config(tiny_dataset, tmp_path / "resumed", iterations=6, val_every=3, stop_at=3))
    assert load_training_state(first.run_dir)["step"] == 3
    with pytest.raises(InputError, match="--resume"):  # never overwrite a run by accident
        train(_config(tiny_dataset, tmp_path / "resumed", iterations=6, val_every=3))
    resumed = train(_config(tiny_dataset, tmp_path / "resumed", iterations=6, val_every=3, resume=True))
    state = load_training_state(resumed.run_dir)
    assert state["step"] == 6
    adam_steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {6.0}  # optimizer moments were restored, not restarted
    with open(resumed.run_dir / "train_log.csv") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == list(range(6))
    # Per-step seeding: the interrupted run ends with the same weights as the straight one.
    a, _ = load_model(straight.last_model)
    b, _ = load_model(resumed.last_model)
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(ta.float(), tb.float(), atol=1e-5), name


def test_a_time_limit_pauses_the_run_where_resume_continues_it(tiny_dataset, tmp_path, caplog):
    import logging

    from spinect.requests import TrainRequest
    from spinect.train.state import load_training_state

    with caplog.at_level(logging.INFO, logger="spinect"):
        paused = train(_config(tiny_dataset, tmp_path / "run", iterations=4, val_every=2, time_limit_s=0.0))
    assert paused.steps_done == 1 and load_training_state(paused.run_dir)["step"] == 1
    assert paused.last_model.is_file() and "time limit of 0.0 min reached: paused after 1 iterations" in caplog.text
    resumed = train(_config(tiny_dataset, tmp_path / "run", iterations=4, val_every=2, resume=True))
    assert resumed.steps_done == 4 and load_training_state(resumed.run_dir)["step"] == 4
    config = TrainRequest(data=tiny_dataset, out=tmp_path / "x", time_limit_min=1.5).to_config()
    assert config.time_limit_s == 90.0


def test_non_finite_gradients_are_detected():
    from spinect.train.trainer import _finite_gradients

    network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.Conv3d(2, 3, 1))
    loss = network(torch.randn(1, 1, 2, 2, 2)).square().mean()
    loss.backward()
    assert _finite_gradients(network, loss)
    assert not _finite_gradients(network, loss * float("inf"))
    network[1].weight.grad[0, 0] = float("nan")
    assert not _finite_gradients(network, loss)


def test_a_step_with_a_non_finite_loss_leaves_the_weights_alone(tiny_dataset, tmp_path, monkeypatch, caplog):
    import logging

    from spinect.model_file import load_model
    from spinect.train import trainer

    real_loss = trainer.weighted_cross_entropy
    calls = []

    def loss_nan_at_the_second_step(logits, target, weights):
        calls.append(1)
        loss = real_loss(logits, target, weights)
        return loss * float("nan") if len(calls) == 2 else loss

    straight = train(_config(tiny_dataset, tmp_path / "one", iterations=2, val_every=1, stop_at=1))  # same schedule
    monkeypatch.setattr(trainer, "weighted_cross_entropy", loss_nan_at_the_second_step)
    with caplog.at_level(logging.WARNING, logger="spinect"):
        skipped = train(_config(tiny_dataset, tmp_path / "two", iterations=2, val_every=2))
    assert "step 1: loss or gradients not finite; step skipped" in caplog.text
    a, _ = load_model(straight.last_model)
    b, _ = load_model(skipped.last_model)
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        if ta.is_floating_point() and "running" not in name:  # BatchNorm statistics see the second batch
            assert torch.isfinite(tb).all() and torch.equal(ta, tb), name


def test_training_precision_rules(monkeypatch, tmp_path):
    import argparse

    from spinect.commands import train as train_command
    from spinect.inference import device as device_module
    from spinect.train import training_autocast_dtype

    cpu = torch.device("cpu")
    assert training_autocast_dtype(cpu, False) is None
    assert training_autocast_dtype(cpu, True) == torch.bfloat16
    monkeypatch.setattr(device_module, "cpu_has_native_bfloat16", lambda: False)
    assert training_autocast_dtype(cpu, None) is None  # automatic: only where bfloat16 is native
    monkeypatch.setattr(device_module, "cpu_has_native_bfloat16", lambda: True)
    assert training_autocast_dtype(cpu, None) == torch.bfloat16
    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    (tmp_path / "data").mkdir()
    for flag, amp in (([], False), (["--precision", "bf16"], True), (["--precision", "auto"], None)):
        args = parser.parse_args(["train", str(tmp_path / "data"), "--out", str(tmp_path / "o"), *flag])
        config = train_command.config_from_args(args)
        assert config.amp is amp and config.channels_last


# --- fine-tuning from a model (--init) ------------------------------------------------------------


def test_init_starts_from_the_model_weights_and_keeps_its_plan(tiny_dataset, tmp_path):
    """A zero-step-long run cannot exist, so: one iteration at learning rate 0 must leave the
    initial model's weights unchanged, and the plan keeps its architecture and normalisation."""
    from spinect.model_file import load_model

    first = train(_config(tiny_dataset, tmp_path / "first", iterations=4, val_every=4, base_width=4))
    _, first_plan = load_model(first.last_model, allow_untrained=True)
    tuned = train(_config(tiny_dataset, tmp_path / "tuned", iterations=1, val_every=1, lr=0.0, base_width=8,
                          init=first.last_model))
    net_a, plan_a = load_model(first.last_model, allow_untrained=True)
    net_b, plan_b = load_model(tuned.last_model, allow_untrained=True)
    assert plan_b.architecture == plan_a.architecture  # base_width 4 from the model, not the config's 8
    assert plan_b.intensity_mean == pytest.approx(first_plan.intensity_mean)
    assert plan_b.intensity_std == pytest.approx(first_plan.intensity_std)
    assert plan_b.provenance["init_model"] == str(first.last_model)
    for (name, a), (_, b) in zip(net_a.state_dict().items(), net_b.state_dict().items()):
        if "running" in name or "num_batches" in name:
            continue  # batch-norm statistics still move in train mode at lr 0
        assert torch.equal(a, b), name


def test_init_fine_tune_lowers_the_loss_faster_than_scratch(tiny_dataset, tmp_path):
    """The annotator loop: a model that already learnt the task starts far better than random
    weights at the same (tiny) step budget."""
    base = train(_config(tiny_dataset, tmp_path / "base", iterations=40, val_every=40))
    scratch = train(_config(tiny_dataset, tmp_path / "scratch", iterations=3, val_every=3, seed=5))
    tuned = train(_config(tiny_dataset, tmp_path / "tuned", iterations=3, val_every=3, seed=5, init=base.last_model))
    assert tuned.final_loss < 0.5 * scratch.final_loss


def test_init_with_other_classes_is_refused(tiny_dataset, tmp_path):
    from spinect.model_file import save_model
    from spinect.nets import build_network
    from spinect.plan import ModelPlan

    arch = dict(name="spinect_unet", base_width=4, levels=5, in_channels=1, num_classes=4, norm="batch")
    plan = ModelPlan(architecture=arch, class_names=("background", "bone", "nerve", "disc"), training_status="test-only")
    path = tmp_path / "four.pt"
    save_model(path, build_network(**arch), plan)
    with pytest.raises(InputError, match="classes"):
        train(_config(tiny_dataset, tmp_path / "run", init=path))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_cli_init_missing_model_is_a_clear_error(tiny_dataset, tmp_path, capsys):
    from spinect.cli import main

    code = main(["train", str(tiny_dataset), "--out", str(tmp_path / "run"), "--init", str(tmp_path / "nope.pt")])
    assert code != 0
    assert "--init model" in capsys.readouterr().err
