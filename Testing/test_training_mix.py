"""scripts/make_training_mix.py: the phantom mix of the fine-tunes, made in parallel, independent of the worker count."""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def mix():
    return load_script("make_training_mix")


def test_the_mix_keeps_its_proportions_at_any_size(mix):
    counts = Counter((field, fov) for field, fov, _ in mix.case_specs(46))
    assert counts == {(field, fov): n for field, fov, _, n in mix.MIX}  # 46 = the mix itself
    for n in (2, 5, 23, 64, 100):
        specs = mix.case_specs(n)
        assert len(specs) == n
        shares = Counter(field for field, _, _ in specs)
        assert abs(shares["chest"] - n * 8 / 46) < 1.0 and abs(shares["lumbosacral"] - n * 32 / 46) < 1.0
    thorax = Counter(field for field, _, _ in mix.case_specs(14, ("chest", "thoracolumbar")))
    assert thorax == {"chest": 8, "thoracolumbar": 6}
    with pytest.raises(ValueError, match="no field of the mix"):
        mix.case_specs(4, ("pelvis",))


def test_a_case_depends_only_on_seed_and_index(mix, tmp_path):
    # the small 1.5 mm crop field keeps this fast; two runs with other worker counts write the same case
    import SimpleITK as sitk

    crop = next(spec for spec in mix.MIX if spec[2] is not None)
    a = mix.make_one(str(tmp_path / "a"), 7, 5, 12, crop[0], crop[1], crop[2])
    b = mix.make_one(str(tmp_path / "b"), 7, 5, 12, crop[0], crop[1], crop[2])
    assert a["extra"]["split"] == "val" and a["extra"]["spacing_zyx_mm"] == [1.5, 1.5, 1.5]
    assert a["extra"] == b["extra"]
    for key in ("image", "label"):
        assert (sitk.GetArrayFromImage(sitk.ReadImage(a[key])) == sitk.GetArrayFromImage(sitk.ReadImage(b[key]))).all()
    assert mix.make_one(str(tmp_path / "c"), 7, 1, 2, *crop[:3])["extra"]["split"] == "val"  # n <= 5: the last


def test_too_few_cases_are_refused(mix, tmp_path, capsys):
    with pytest.raises(SystemExit):
        mix.main([str(tmp_path / "x"), "--n", "1"])
    assert "--n must be >= 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
