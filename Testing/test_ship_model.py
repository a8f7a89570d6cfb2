"""scripts/ship_default_model.py: a new default model ships only if it beats the old one on every real case."""

from __future__ import annotations

import json

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def ship():
    return load_script("ship_default_model")


def _results(candidate: dict[str, float], shipped: dict[str, float]) -> dict:
    def method(dice):
        return {"dice": dice, "hd95_mm": 3.0, "surface_dice": 0.5, "recall_by_hu": {"<100": {"recall": 0.2}},
                "fp_volume_ml": 1.0, "nerve": {"share_nerve_near_canal": 0.5, "share_canal_labelled_nerve": 0.1}}

    return {"cases": {c: {"methods": {"threshold": method(0.6), "shipped": method(shipped[c]), "new": method(candidate[c])}}
                      for c in candidate}}


def test_a_candidate_worse_on_one_real_case_is_refused_and_nothing_is_written(ship, tmp_path):
    results = tmp_path / "r.json"
    results.write_text(json.dumps(_results({"crop": 0.7, "chest": 0.30}, {"crop": 0.5, "chest": 0.31})))
    models = tmp_path / "models"
    code = ship.main(["no_such.pt", "--name", "new", "--results", str(results), "--training-note", "x",
                      "--models-dir", str(models)])
    assert code == 2 and not models.exists()
    with pytest.raises(ship.ShipError, match=r"chest \(0\.300 <= 0\.310\)"):
        ship.check_candidate(json.loads(results.read_text()), "new", "shipped")


def test_a_method_missing_from_the_run_is_named(ship):
    results = _results({"crop": 0.7}, {"crop": 0.5})
    del results["cases"]["crop"]["methods"]["new"]
    with pytest.raises(ship.ShipError, match="'new' was not scored on crop"):
        ship.check_candidate(results, "new", "shipped")


def test_goals_are_judged_against_the_issue_thresholds(ship):
    results = _results({"crop": 0.91, "chest": 0.80}, {"crop": 0.5, "chest": 0.3})
    assert ship.check_candidate(results, "new", "shipped") == {"crop": (0.91, 0.5), "chest": (0.80, 0.3)}
    lines = "\n".join(ship.goal_lines(results, "new", []))
    assert "crop (real L3): bone Dice: 0.910 (met" in lines
    assert "chest (real vertebrae + ribs): bone Dice: 0.800 (MISSED" in lines
    assert "crop: nerve near canal: 0.500 (MISSED" in lines
