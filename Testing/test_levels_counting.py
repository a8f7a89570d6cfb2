"""Vertebral levels by counting (spinect.postprocess.levels_counting) and ``segment --levels`` without a level model."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from spinect.plan import LEVEL_MAP_NAMES

SHAPE, SPACING = (160, 150, 150), (2.0, 2.0, 2.0)  # L1 to the pelvis at 2 mm
TRUTH_LEVELS = {"L1": (1,), "L2": (2,), "L3": (3,), "L4": (4,), "L5": (5,), "sacrum": (6, 7)}


@pytest.fixture(scope="module")
def phantom():
    from spinect.phantom import generate_case

    case = generate_case(3, shape_zyx=SHAPE, spacing_zyx_mm=SPACING, window_tables=False, noise=False)
    return sitk.GetArrayFromImage(case.structures), case.labels


def _calls(levels: np.ndarray, structures: np.ndarray) -> dict[str, str | None]:
    out = {}
    for name, codes in TRUTH_LEVELS.items():
        counts = np.bincount(levels[np.isin(structures, codes)], minlength=len(LEVEL_MAP_NAMES))[1:]
        out[name] = LEVEL_MAP_NAMES[int(np.argmax(counts)) + 1] if counts.any() else None
    return out


def _image(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(array.astype(np.uint8))
    img.CopyInformation(like)
    return img


def _add_rib(bone: np.ndarray, structures: np.ndarray, code: int) -> np.ndarray:
    """A rib on the vertebra with structure ``code``: a 4 mm tube from its pedicle out to 110 mm on the left."""
    zc = int(np.round(np.nonzero(structures == code)[0].mean()))
    sac = np.argwhere(structures[zc] == 30)  # dural sac: the canal's centre
    yc, xc = sac.mean(axis=0)
    out = bone.copy()
    zz, yy, xx = np.ogrid[:bone.shape[0], :bone.shape[1], :bone.shape[2]]
    x_mm = (xx - xc) * SPACING[2]
    tube = ((zz - zc) * SPACING[0]) ** 2 + ((yy - yc) * SPACING[1] - 4.0) ** 2 <= 4.0**2
    out |= tube & (x_mm >= 10.0) & (x_mm <= 110.0)
    return out


def test_counted_levels_equal_the_truth_levels(phantom):
    from spinect.postprocess.levels_counting import count_levels_image

    structures, labels = phantom
    levels, counted = count_levels_image(labels)
    assert counted.reference == "sacrum" and counted.source == "levels by counting from the sacrum"
    assert _calls(sitk.GetArrayFromImage(levels), structures) == {n: n for n in TRUTH_LEVELS}
    assert levels.GetSize() == labels.GetSize() and levels.GetPixelID() == sitk.sitkUInt8
    names = [v["name"] for v in counted.vertebrae]
    assert names[:6] == ["sacrum", "L5", "L4", "L3", "L2", "L1"]
    assert counted.notes == []
    record = counted.record()
    assert record["method"] == "counting" and record["vertebrae"][1]["z_range"] is not None


def test_a_crop_without_sacrum_or_ribs_is_refused(phantom):
    from spinect.postprocess.levels_counting import REFUSAL_NO_REFERENCE, LevelCountError, count_levels

    structures, labels = phantom
    bone = sitk.GetArrayFromImage(labels) == 1
    z = np.nonzero(np.isin(structures, (2, 3, 4)).any(axis=(1, 2)))[0]
    lo = int(np.nonzero((structures == 4).any(axis=(1, 2)))[0].mean())
    hi = int(np.nonzero((structures == 2).any(axis=(1, 2)))[0].mean())
    assert lo < hi <= z.max()
    with pytest.raises(LevelCountError, match="neither the sacrum nor a rib-bearing vertebra") as exc:
        count_levels(bone[lo:hi], SPACING)
    assert str(exc.value) == REFUSAL_NO_REFERENCE


def test_a_lumbar_rib_is_transitional_anatomy_and_the_sacrum_count_wins(phantom):
    from spinect.postprocess.levels_counting import count_levels

    structures, labels = phantom
    bone = _add_rib(sitk.GetArrayFromImage(labels) == 1, structures, code=1)  # a rib on L1: "T12" by the rib
    counted = count_levels(bone, SPACING)
    assert counted.reference == "sacrum" and counted.references_seen == ("sacrum", "last rib")
    assert any("transitional anatomy: 4 vertebrae" in note for note in counted.notes), counted.notes
    assert _calls(counted.levels, structures) == {n: n for n in TRUTH_LEVELS}


def test_without_the_sacrum_the_levels_are_counted_down_from_the_last_rib(phantom):
    from spinect.postprocess.levels_counting import count_levels

    structures, labels = phantom
    bone = _add_rib(sitk.GetArrayFromImage(labels) == 1, structures, code=1)
    top_of_s1 = int(np.nonzero((structures == 5).any(axis=(1, 2)))[0].min()) + 4  # L5's lowest slice + 8 mm
    counted = count_levels(bone[top_of_s1:], SPACING)
    assert counted.reference == "last rib"
    calls = _calls(counted.levels, structures[top_of_s1:])
    # the rib makes L1 the last rib-bearing vertebra (T12, no level code): L2 is called L1, and so on
    assert [calls[n] for n in ("L2", "L3", "L4", "L5")] == ["L1", "L2", "L3", "L4"]
    assert [v["name"] for v in counted.vertebrae][-1] == "T12" and counted.vertebrae[-1]["code"] == 0


def _fake_network(monkeypatch, labels: sitk.Image):
    """segment()'s network output replaced by ``labels`` (the counting step is what is tested)."""
    import spinect.pipeline as pipeline

    def fake(prepared, networks, plan, settings, **_):
        assert not settings.levels  # counting asks the network for no level classes
        return pipeline.PipelineOutput(labels, [], [])

    monkeypatch.setattr(pipeline, "segment_network_input", fake)


def test_segment_levels_without_a_level_model_counts_and_writes_level_segments(phantom, tmp_path, monkeypatch):
    import json

    from spinect.api import segment
    from test_levels import ARCH  # noqa: F401  (same tiny architecture as the level tests)
    from test_levels import _save_tiny

    from spinect.plan import CLASS_NAMES

    structures, labels = phantom
    ct = sitk.Cast(labels, sitk.sitkFloat32) * 1000.0 - 500.0
    model = _save_tiny(tmp_path / "three.pt", CLASS_NAMES)
    _fake_network(monkeypatch, labels)
    out = segment(ct, tmp_path / "out.nii.gz", model=model, allow_untrained=True, levels=True, levels_by="counting")
    assert out.provenance["levels"]["source"] == "levels by counting from the sacrum"
    assert out.provenance["settings"]["levels_by"] == "counting"
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out_levels.nii.gz")))
    assert _calls(written, structures) == {n: n for n in TRUTH_LEVELS}
    sidecars = [p for p in tmp_path.iterdir() if p.name.endswith(".json") and p.name.startswith("out")]
    assert any("levels by counting" in p.read_text() for p in sidecars)
    # auto: no level model at hand -> counting too
    auto = segment(ct, model=model, allow_untrained=True, levels=True)
    assert auto.provenance["levels"]["reference"] == "sacrum"
    assert json.dumps(auto.provenance["levels"])  # JSON-ready


def test_segment_levels_by_counting_refuses_a_crop_and_writes_nothing(phantom, tmp_path, monkeypatch, capsys):
    from spinect.cli import main
    from test_levels import _save_tiny

    from spinect.plan import CLASS_NAMES

    structures, labels = phantom
    lo = int(np.nonzero((structures == 4).any(axis=(1, 2)))[0].mean())
    hi = int(np.nonzero((structures == 2).any(axis=(1, 2)))[0].mean())
    crop = labels[:, :, lo:hi]
    sitk.WriteImage(sitk.Cast(crop, sitk.sitkFloat32) * 1000.0 - 500.0, str(tmp_path / "ct.nii.gz"))
    model = _save_tiny(tmp_path / "three.pt", CLASS_NAMES)
    _fake_network(monkeypatch, sitk.ReadImage(str(tmp_path / "ct.nii.gz")) > 0)
    before = sorted(p.name for p in tmp_path.iterdir())
    for name in ("out.nii.gz", "out.seg.nrrd"):
        code = main(["segment", str(tmp_path / "ct.nii.gz"), str(tmp_path / name), "--model", str(model), "--levels",
                     "--levels-by", "counting"])
        assert code == 3
        assert "levels cannot be counted: neither the sacrum nor a rib-bearing vertebra" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    code = main(["segment", str(tmp_path / "ct.nii.gz"), str(tmp_path / "out.nii.gz"), "--model", str(model),
                 "--levels-by", "counting"])
    assert code != 0 and "--levels-by is used only with --levels" in capsys.readouterr().err
    code = main(["segment", str(tmp_path / "ct.nii.gz"), str(tmp_path / "out.nii.gz"), "--model", str(model),
                 "--levels", "--levels-by", "counting", "--level-model", str(model)])
    assert code != 0 and "--levels-by counting uses no level model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_auto_counts_from_the_sacrum_only(phantom):
    # a rib on L1 and no sacrum: explicit counting goes down from the rib, auto refuses and says why
    from spinect.postprocess.levels_counting import LevelCountError, count_levels

    structures, labels = phantom
    bone = _add_rib(sitk.GetArrayFromImage(labels) == 1, structures, code=1)
    top_of_s1 = int(np.nonzero((structures == 5).any(axis=(1, 2)))[0].min()) + 4
    with pytest.raises(LevelCountError, match="from the sacrum: it is not in the field of view.*--levels-by counting"):
        count_levels(bone[top_of_s1:], SPACING, references=("sacrum",))
    counted = count_levels(bone, SPACING, references=("sacrum",))  # sacrum in view: the rib is not used
    assert counted.reference == "sacrum" and _calls(counted.levels, structures) == {n: n for n in TRUTH_LEVELS}


def _close_foramina(bone: np.ndarray, structures: np.ndarray, disc_code: int) -> np.ndarray:
    """Bone over the foramina beside the canal, from 4 mm below the disc ``disc_code`` to 12 mm above it."""
    zs = np.nonzero((structures == disc_code).any(axis=(1, 2)))[0]
    out = bone.copy()
    for z in range(max(zs.min() - 2, 0), min(zs.max() + 7, bone.shape[0])):
        sac = np.argwhere(structures[z] == 30)  # dural sac: the canal's centre
        yc, xc = sac.mean(axis=0) if sac.size else np.argwhere(structures[zs[0]] == 30).mean(axis=0)
        yy, xx = np.ogrid[:bone.shape[1], :bone.shape[2]]
        dx, dy = np.abs(xx - xc) * SPACING[2], np.abs(yy - yc) * SPACING[1]
        out[z] |= (dx >= 6.0) & (dx <= 26.0) & (dy <= 10.0)
    return out


def test_a_disc_bridged_in_front_of_the_canal_is_found_at_its_foramina(phantom):
    # the L3/L4 disc (structure code 22) segmented as bone: the body profile misses it, but the
    # foramina between the L3 and L4 pedicles are open, so the merged body is split there and
    # every level keeps its name (the chest CT's model bone bridges its thoracic discs this way)
    from spinect.postprocess.levels_counting import count_levels

    structures, labels = phantom
    bone = (sitk.GetArrayFromImage(labels) == 1) | (structures == 22)
    counted = count_levels(bone, SPACING)
    assert _calls(counted.levels, structures) == {n: n for n in TRUTH_LEVELS}
    split = [v["name"] for v in counted.vertebrae if v["split_at_foramina"]]
    assert split == ["L4", "L3"], counted.vertebrae
    assert any("told apart at the foramina" in note for note in counted.notes), counted.notes
    assert all(15.0 <= v["height_mm"] <= 45.0 for v in counted.vertebrae[1:-1])


def test_a_missed_disc_stops_the_count_instead_of_shifting_it(phantom):
    # the L3/L4 disc segmented as bone and its foramina closed too: nothing shows where L3 ends, the
    # merged L3+L4 body is too tall, so it and everything above must stay unnamed (they would be
    # called one level too low); L5 and the sacrum below keep their names
    from spinect.postprocess.levels_counting import count_levels

    structures, labels = phantom
    bone = _close_foramina((sitk.GetArrayFromImage(labels) == 1) | (structures == 22), structures, 22)
    counted = count_levels(bone, SPACING)
    calls = _calls(counted.levels, structures)
    assert calls["L5"] == "L5" and calls["sacrum"] == "sacrum"
    for name, codes in TRUTH_LEVELS.items():  # no vertebra is mostly named wrong (unnamed is allowed)
        named = counted.levels[np.isin(structures, codes)]
        wrong = (named != 0) & (named != LEVEL_MAP_NAMES.index(name))
        assert wrong.mean() < 0.25, (name, calls)
    assert np.mean(counted.levels[np.isin(structures, (1, 2, 3))] != 0) < 0.01  # L1-L3: past the merged body
    assert any("implausible body height" in note and "left unnamed" in note for note in counted.notes), counted.notes


def test_thoracic_names_stop_at_an_implausible_body(phantom):
    # a rib on L4 and no sacrum: L4 is counted as T12 and the vertebrae above it as T11, T10 ...
    # (record only, no map code). With the L2/L3 disc bridged and its foramina closed, the merged
    # "T11" body is too tall for a thoracic vertebra: it and everything above it stay unnamed
    from spinect.postprocess.levels_counting import count_levels

    structures, labels = phantom
    bone = _add_rib(sitk.GetArrayFromImage(labels) == 1, structures, code=4)
    top_of_s1 = int(np.nonzero((structures == 5).any(axis=(1, 2)))[0].min()) + 4
    plain = count_levels(bone[top_of_s1:], SPACING)
    assert plain.reference == "last rib"
    assert [v["name"] for v in plain.vertebrae][-4:] == ["T12", "T11", "T10", "T9"], plain.vertebrae
    bridged = _close_foramina(bone | (structures == 21), structures, 21)[top_of_s1:]
    counted = count_levels(bridged, SPACING)
    names = [v["name"] for v in counted.vertebrae]
    assert "T12" in names and names[names.index("T12") + 1:] == ["?"] * (len(names) - names.index("T12") - 1), names
    assert any("expected for a thoracic vertebra" in note for note in counted.notes), counted.notes
    assert np.array_equal(counted.levels > 0, plain.levels > 0)  # L5 below T12 keeps its code; the rest has none
