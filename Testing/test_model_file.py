"""Model files carry their plan, load with weights_only, and refuse bad or untrained models."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_tiny_model
from spinect.errors import ModelError
from spinect.model_file import load_model, load_plan, sha256_of_file, sidecar_path
from spinect.plan import ModelPlan


def test_plan_round_trips_through_dict_and_json():
    plan = ModelPlan(architecture={"name": "spinect_unet", "base_width": 8}, intensity_mean=12.5, intensity_std=300.0,
                     training_status="trained", provenance={"data": "phantom"})
    again = ModelPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    assert again.patch_size_zyx == (32, 64, 64) and again.stride_zyx == (20, 40, 40)


def test_plan_rejects_unknown_fields_and_newer_schema():
    data = ModelPlan(architecture={}).to_dict()
    with pytest.raises(ValueError, match="unknown plan fields"):
        ModelPlan.from_dict({**data, "surprise": 1})
    with pytest.raises(ValueError, match="newer"):
        ModelPlan.from_dict({**data, "schema_version": 99})


def test_saved_model_loads_with_identical_weights_and_plan(tmp_path):
    path = make_tiny_model(tmp_path / "m.pt")
    network, plan = load_model(path)
    assert plan.training_status == "test-only" and plan.architecture["base_width"] == 4
    payload = torch.load(path, weights_only=True)
    for key, value in network.state_dict().items():
        assert torch.equal(value, payload["state_dict"][key])
    sidecar = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    assert sidecar["sha256"] == sha256_of_file(path)
    assert load_plan(path) == plan


def test_untrained_model_is_refused_unless_allowed(tmp_path):
    path = make_tiny_model(tmp_path / "u.pt", training_status="untrained")
    with pytest.raises(ModelError, match="untrained"):
        load_model(path)
    load_model(path, allow_untrained=True)


def test_corrupt_missing_and_tampered_models_give_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "none.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="cannot read"):
        load_model(garbage)
    path = make_tiny_model(tmp_path / "t.pt")
    with open(path, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match="checksum"):
        load_model(path)
