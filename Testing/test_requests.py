"""Typed requests (issue 16, item 2): one frozen class per verb holds the options; the CLI, the API,
JSON and ``spinect serve`` are derived from it and agree."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from spinect.cli import build_parser, main
from spinect.errors import InputError, SpinectError
from spinect.requests import (
    REQUESTS,
    EvaluateRequest,
    PhantomRequest,
    SEGMENT_BATCH_OPTIONS,
    RequestError,
    SegmentBatchRequest,
    SegmentRequest,
    TrainRequest,
    TrianglesRequest,
    add_arguments,
    from_args,
)

# The smallest valid request of each verb (its required options).
MINIMAL = {
    "segment": dict(input="ct.nii.gz", output="labels.seg.nrrd"),
    "triangles": dict(seg="seg.nrrd", level="L5S1", side="left", seed_lps_mm=(1.0, 2.0, 3.0), json_path="t.json"),
    "evaluate": dict(out_dir="report", pred="pred", labels="labels"),
    "phantom": dict(out_dir="phantoms"),
    "report": dict(output="case.html"),
    "train": dict(data="data", out="run"),
    "segment-batch": dict(out_dir="out"),
}


def _subparser(verb: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[verb.replace("_", "-")]


@pytest.mark.parametrize("verb", sorted(REQUESTS))
def test_cli_defaults_and_help_are_the_request_class(verb):
    cls = REQUESTS[verb]
    minimal = cls(**MINIMAL[verb])
    parser = _subparser(verb)
    args = parser.parse_args(minimal.to_argv())
    assert from_args(cls, args) == minimal  # every default the CLI gives equals the class's
    help_text = " ".join(parser.format_help().split())
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        flag = (f.metadata.get("metavar") or f.name) if f.metadata.get("positional") else (f.metadata.get("negative_flag") if f.default is True
                                                            else f.metadata.get("flag") or "--" + f.name.replace("_", "-"))
        assert flag in help_text, (verb, flag)
        first_words = " ".join(f.metadata["help"].split()[:3])
        assert first_words in help_text, (verb, f.name)
        if f.default not in (None, False, True, (), dataclasses.MISSING) and not f.metadata.get("positional") \
                and not f.metadata.get("default_text"):
            shown = f.default if not isinstance(f.default, tuple) else ",".join(f.default)
            shown = f"{shown:g}" if isinstance(shown, float) else str(shown)
            assert f"(default: {shown})" in help_text, (verb, f.name, shown)


def test_every_option_round_trips_through_argv_and_json():
    examples = [
        SegmentRequest(input="ct dir/ct.nii.gz", output="out.nii.gz", model="m.pt", device="cpu", smoothing_mm=0.0,
                       blend="gaussian", stride_zyx=(10, 20, 30), batch_size=2, precision="fp32", tta=True,
                       ensemble=("a.pt", "b.pt"), uncertainty_output="u.nii.gz", review_output="r.csv",
                       review_top_k=5, keep_islands=True, whole_volume=True, levels=True, level_model="l.pt",
                       dicom_seg_output="s.dcm", overwrite=False, allow_gaps=True, force=True),
        TrianglesRequest(seg="s.nrrd", ct="ct.nrrd", level="L4L5", side="right", triangle="safe",
                         points_lps_mm=np.arange(9.0).reshape(3, 3) + 0.1, structures="map.nrrd",
                         endplate_lps_mm=[1, 2, 3, 4, 5, 6, 7, 8, 9.5], upper_line_lps_mm=[0, 0, -1.25],
                         theta_deg=33.3, phi_deg=-12.5, optimize=True, step_deg=5, objective="free_area",
                         reachable=True, instrument_radius_mm=0.5, pixel_mm=0.2, allow_missing_nerve=True,
                         json_path="t.json", heatmap_path="h.png"),
        EvaluateRequest(out_dir="r", model="m.pt", data="d", cases="a, b", device="cpu", class_names="bg,bone,nerve",
                        resample_prediction=True, overwrite=True),
        PhantomRequest(out_dir="p", n=3, seed=7, shape_zyx=(40, 50, 60), spacing_zyx_mm=(3, 0.8, 0.8),
                       appearance="random", degeneration=False, anatomy="primitive", preview=True),
        TrainRequest(data="data dir", out="run", fold=2, folds=4, iterations=7, iterations_per_epoch=3, val_every=5,
                     max_val_cases=2, base_width=8, norm="instance", device="cpu", resume=True, init="default",
                     classes="levels", spacing_zyx_mm=(3, 3, 3.5), patch_size_zyx=(16, 32, 48), stride_zyx=(8, 16, 24),
                     early_nerve_weight=2.5, stop_at=4, seed=9, batch_size=2, lr=1e-3, num_threads=2, precision="bf16",
                     show_progress=False),
        TrainRequest(data="d", out="r", epochs=3),
        SegmentBatchRequest(inputs=("a.nii.gz", "b dir"), list_file="cases.csv", out_dir="out", suffix=".seg.nrrd",
                            csv_path="c.csv", ray="auto", ray_cpus_per_actor=2, model="m.pt", device="cpu",
                            smoothing_mm=0.0, blend="gaussian", stride_zyx=(10, 20, 30), batch_size=2, precision="fp32",
                            tta=True, ensemble=("a.pt",), keep_islands=True, whole_volume=True, levels=True,
                            level_model="l.pt", allow_gaps=True, force=True),
        SegmentBatchRequest(out_dir="out", list_file="cases.csv", ray="local"),
    ]
    for request in examples:
        cls = type(request)
        assert from_args(cls, _subparser(cls.verb).parse_args(request.to_argv())) == request
        text = request.to_json()
        assert cls.from_json(text) == request
        assert json.loads(text) == request.to_dict()
        assert all(isinstance(v, (str, int, float, bool, list, type(None))) for v in json.loads(text).values())
        with pytest.raises(dataclasses.FrozenInstanceError):
            request.seed = 1  # frozen


def test_values_are_normalised_so_the_cli_the_api_and_json_make_equal_requests():
    by_api = SegmentRequest(input=Path("ct.nii.gz"), output="o.nrrd", stride_zyx=np.array([20, 40, 40]),
                            ensemble=["m.pt"], smoothing_mm=np.float32(1.0))
    by_json = SegmentRequest.from_dict({"input": "ct.nii.gz", "output": "o.nrrd", "stride_zyx": [20, 40, 40],
                                        "ensemble": ["m.pt"], "smoothing_mm": 1})
    assert by_api == by_json and by_api.stride_zyx == (20, 40, 40) and by_api.ensemble == (Path("m.pt"),)
    assert TrianglesRequest(**{**MINIMAL["triangles"], "level": "l4l5"}).level == "L4L5"


def test_ras_flips_x_and_y_of_every_coordinate():
    request = TrianglesRequest(seg="s", level="L5S1", side="left", points_lps_mm=[1, 2, 3, 4, 5, 6, 7, 8, 9],
                               endplate_lps_mm=[1, 1, 1], upper_line_lps_mm=[2, 2, 2])
    flipped = request.from_ras()
    assert flipped.points_lps_mm[1] == (-4.0, -5.0, 6.0)
    assert flipped.endplate_lps_mm == ((-1.0, -1.0, 1.0),) and flipped.upper_line_lps_mm == (-2.0, -2.0, 2.0)
    assert flipped.from_ras() == request


@pytest.mark.parametrize("cls, changes, words, error", [
    (SegmentRequest, {"smoothing_mm": 11}, ("--smoothing-mm", "0-10"), RequestError),
    (SegmentRequest, {"batch_size": 0}, ("--batch-size", "1-1024"), RequestError),
    (SegmentRequest, {"stride_zyx": (0, 40, 40)}, ("--stride", "positive integers"), RequestError),
    (SegmentRequest, {"precision": "half"}, ("--precision", "auto, fp32, bf16"), RequestError),
    (SegmentRequest, {"tta": "yes"}, ("--tta", "true or false"), RequestError),
    (SegmentRequest, {"review_output": "r.csv"}, ("--tta or --ensemble",), RequestError),
    (SegmentRequest, {"level_model": "l.pt"}, ("--level-model is used only with --levels",), RequestError),
    (TrianglesRequest, {"theta_deg": 91}, ("--theta", "0-90"), InputError),
    (TrianglesRequest, {"seed_lps_mm": (1, 2)}, ("--seed", "1 point"), InputError),
    (TrianglesRequest, {"auto": True}, ("exactly one of", "--points", "--seed", "--auto"), InputError),
    (TrianglesRequest, {"seed_lps_mm": None, "auto": True}, ("--auto needs a level map", "--structures"), InputError),
    (EvaluateRequest, {"data": "d"}, ("not both",), InputError),
    (EvaluateRequest, {"class_names": "background"}, ("--classes", "at least one class"), InputError),
    (PhantomRequest, {"n": 0}, ("--n", ">= 1"), RequestError),
    (TrainRequest, {"folds": 0}, ("--folds", ">= 1"), InputError),
    (TrainRequest, {"fold": 5}, ("--fold must be in 0..4",), InputError),
    (TrainRequest, {"epochs": 0}, ("--epochs", ">= 1"), InputError),
    (TrainRequest, {"epochs": 2, "iterations": 3}, ("--epochs or --iterations, not both",), InputError),
    (TrainRequest, {"batch_size": 0}, ("--batch-size", ">= 1"), InputError),
    (TrainRequest, {"spacing_zyx_mm": (0.1, 1, 1)}, ("--spacing must be 3 voxel sizes within 0.3-10 mm",), InputError),
    (TrainRequest, {"patch_size_zyx": (40, 64, 64)}, ("--patch must be 3 multiples of 16",), InputError),
    (TrainRequest, {"stride_zyx": (20, 80, 40)}, ("--stride", "no larger than the window"), InputError),
    (TrainRequest, {"early_nerve_weight": 0.0}, ("--early-nerve-weight must be a finite number > 0",), InputError),
    (TrainRequest, {"early_nerve_weight": float("nan")}, ("--early-nerve-weight",), InputError),
    (TrainRequest, {"precision": "half"}, ("--precision", "fp32, auto, bf16"), InputError),
    (SegmentBatchRequest, {"ray_cpus_per_actor": 2}, ("--ray-cpus-per-actor is for --ray runs",), RequestError),
    (SegmentBatchRequest, {"ray": "local", "ray_cpus_per_actor": 0}, ("--ray-cpus-per-actor", ">= 1"), RequestError),
    (SegmentBatchRequest, {"smoothing_mm": 11}, ("--smoothing-mm", "0-10"), RequestError),
    (SegmentBatchRequest, {"suffix": ".png"}, ("--suffix", ".nii.gz"), RequestError),
    (SegmentBatchRequest, {"level_model": "l.pt"}, ("--level-model is used only with --levels",), RequestError),
])
def test_invalid_values_are_refused_with_a_message_naming_the_option(cls, changes, words, error):
    with pytest.raises(error) as caught:
        cls(**{**MINIMAL[cls.verb], **changes})
    assert isinstance(caught.value, SpinectError)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def test_unknown_options_and_bad_json_are_refused_by_name():
    with pytest.raises(RequestError, match=r"unknown option\(s\) colour; accepted: .*smoothing_mm"):
        SegmentRequest.from_dict({**MINIMAL["segment"], "colour": "red"})
    with pytest.raises(RequestError, match="needs input"):
        SegmentRequest.from_dict({"output": "o.nrrd"})
    with pytest.raises(RequestError, match="must be JSON"):
        SegmentRequest.from_json("{not json")
    with pytest.raises(RequestError, match="JSON object"):
        SegmentRequest.from_json("[1, 2]")
    with pytest.raises(RequestError, match="in-memory image"):
        SegmentRequest(input=sitk.Image(4, 4, 4, sitk.sitkInt16)).to_json()
    from spinect import api

    with pytest.raises(RequestError, match=r"unknown option\(s\) colour"):
        api.segment("ct.nii.gz", colour="red")


@pytest.mark.parametrize("argv, words, code", [
    (["segment", "ct.nii.gz", "o.nrrd", "--batch-size", "0"], ("--batch-size", "1-1024"), 2),
    (["segment", "ct.nii.gz", "o.nrrd", "--review", "r.csv"], ("--tta or --ensemble",), 2),
    (["triangles", "s.nrrd", "--level", "L5S1", "--side", "left", "--auto", "--json", "t.json"],
     ("--auto needs a level map",), 3),
    (["evaluate", "--out", "r", "--data", "d", "--pred", "p"], ("not both",), 3),
    (["phantom", "p", "--n", "0"], ("--n must be",), 2),
    (["train", "data", "--out", "run", "--patch", "40", "64", "64"], ("--patch must be 3 multiples of 16",), 3),
    (["train", "data", "--out", "run", "--fold", "5"], ("--fold must be in 0..4",), 3),
    (["train", "data", "--out", "run"], ("dataset folder data not found",), 3),
    (["segment-batch", "ct.nii.gz", "--out", "o", "--batch-size", "0"], ("--batch-size", "1-1024"), 2),
    (["segment-batch", "ct.nii.gz", "--out", "o", "--level-model", "l.pt"], ("--level-model is used only",), 2),
])
def test_invalid_cli_values_exit_non_zero_with_the_request_message(argv, words, code, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith(f"spinect {argv[0]}: error: ") and "Traceback" not in err
    for word in words:
        assert word in err
    assert list(tmp_path.iterdir()) == []


def test_the_same_request_by_cli_and_api_gives_identical_outputs_and_provenance(tmp_path, tiny_model, synthetic_ct_path):
    from spinect import api

    request = SegmentRequest(input=synthetic_ct_path, output=tmp_path / "api.nii.gz", model=tiny_model, device="cpu",
                             smoothing_mm=0.5, precision="fp32", keep_islands=True, stride_zyx=(16, 32, 32))
    result = api.segment(request)
    assert result.request == request and result.settings.precision == "fp32"
    cli_request = request.replace(output=tmp_path / "cli.nii.gz")
    assert main(["segment", *cli_request.to_argv()]) == 0
    api_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "api.nii.gz")))
    np.testing.assert_array_equal(api_labels, sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli.nii.gz"))))
    records = [json.loads((tmp_path / f"{name}.nii.gz.provenance.json").read_text()) for name in ("api", "cli")]
    for record in records:
        for key in ("output", "created_utc"):
            record.pop(key)
    assert records[0] == records[1]
    settings = records[0]["settings"]
    # the label-changing settings, as applied
    assert settings["precision"] == "fp32" and settings["precision_applied"] == "float32"
    assert settings["remove_islands"] is False and settings["island_rules"] is None
    assert settings["skip_air"] is True and settings["bone_margin_mm"] == 30.0 and settings["bone_hu"] == 150.0
    assert settings["stride_zyx"] == [16, 32, 32] and settings["smoothing_mm"] == 0.5
    # keyword arguments are the same request
    again = api.segment(synthetic_ct_path, model=tiny_model, device="cpu", smoothing_mm=0.5, precision="fp32",
                        keep_islands=True, stride_zyx=(16, 32, 32))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again.labels), api_labels)
    assert again.request == request.replace(output=None)


def test_island_rules_are_recorded_when_islands_are_removed(tmp_path, tiny_model, synthetic_ct_path):
    from spinect import api
    from spinect.pipeline import island_rules

    result = api.segment(synthetic_ct_path, model=tiny_model, device="cpu")
    rules = result.provenance["settings"]["island_rules"]
    assert rules == island_rules() and rules["min_bone_volume_mm3"] > 0
    assert result.settings.island_rules == rules and result.provenance["settings"]["precision"] == "auto"
    assert result.provenance["settings"]["precision_applied"] in ("float32", "bfloat16")


def test_inference_settings_are_built_once_from_the_plan_and_the_request():
    from spinect.pipeline import BONE_MARGIN_MM, InferenceSettings
    from spinect.plan import ModelPlan

    plan = ModelPlan(architecture={"name": "spinect_unet"}, smoothing_mm=1.5, stride_zyx=(20, 40, 40))
    default = InferenceSettings.from_plan(plan, SegmentRequest(input="ct.nii.gz"))
    assert (default.smoothing_mm, default.stride_zyx, default.blend) == (1.5, (20, 40, 40), "sum")
    assert default.bone_margin_mm == BONE_MARGIN_MM and default.remove_islands and default.amp is None
    chosen = InferenceSettings.from_plan(plan, SegmentRequest(input="ct.nii.gz", smoothing_mm=0, whole_volume=True,
                                                              keep_islands=True, precision="bf16", stride_zyx=(8, 8, 8)))
    assert (chosen.smoothing_mm, chosen.stride_zyx, chosen.bone_margin_mm, chosen.island_rules, chosen.amp) == \
        (0.0, (8, 8, 8), None, None, True)
    # the legacy keywords of segment_image build the same settings
    assert InferenceSettings.from_plan(plan, smoothing_mm=0, bone_margin_mm=None, remove_islands=False, amp=True,
                                       stride_zyx=(8, 8, 8)) == chosen


def test_triangle_defaults_match_the_geometry_defaults():
    from spinect.geometry.trajectory import SearchSettings
    from spinect.geometry.window import WindowSettings

    request = TrianglesRequest(**MINIMAL["triangles"])
    window, search = WindowSettings(), SearchSettings()
    assert (request.pixel_mm, request.instrument_radius_mm) == (window.pixel_mm, window.instrument_radius_mm)
    assert (request.step_deg, request.objective) == (search.step_deg, search.objective)


def test_the_triangles_cli_and_api_write_the_same_report(tmp_path, triangle_case):
    from spinect import api

    seg = tmp_path / "seg.nrrd"
    sitk.WriteImage(triangle_case.labels, str(seg))
    entry = triangle_case.truth["levels"]["L5S1"]["left"]["kambin"]
    points = np.array(list(entry["points_lps_mm"].values()), float)
    request = TrianglesRequest(seg=seg, level="L5S1", side="left", points_lps_mm=points, theta_deg=20.0,
                               json_path=tmp_path / "api.json")
    api.triangles(request)
    assert main(["triangles", *request.replace(json_path=tmp_path / "cli.json").to_argv()]) == 0
    # --ras: the same points in RAS give the same numbers
    ras = request.replace(points_lps_mm=points * [-1, -1, 1], json_path=tmp_path / "ras.json")
    assert main(["triangles", *ras.to_argv(), "--ras"]) == 0
    reports = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("api", "cli", "ras")]
    assert reports[0]["measurement"]["quantities"] == reports[1]["measurement"]["quantities"]
    assert reports[0]["measurement"]["quantities"] == reports[2]["measurement"]["quantities"]


def test_serve_takes_the_request_json_for_segment_and_triangles(tmp_path, tiny_model, synthetic_ct_path):
    from spinect.serve import Worker

    out = io.StringIO()
    worker = Worker(out)
    request = SegmentRequest(input=synthetic_ct_path, output=tmp_path / "w.nii.gz", model=tiny_model, device="cpu",
                             precision="fp32")
    worker.handle({"id": 1, "verb": "segment", "args": request.to_dict()})
    worker.handle({"id": 2, "verb": "segment", "args": {**request.to_dict(), "colour": 1}})
    worker.handle({"id": 3, "verb": "triangles", "args": {"seg": str(synthetic_ct_path), "level": "L5S1",
                                                          "side": "left", "theta_deg": 95, "seed_lps_mm": [0, 0, 0]}})
    answers = {m["id"]: m for m in map(json.loads, out.getvalue().splitlines()) if "progress" not in m}
    assert answers[1]["ok"] and answers[1]["result"]["request"] == request.to_dict()
    assert answers[1]["result"]["settings"]["precision_applied"] == "float32"
    assert not answers[2]["ok"] and "unknown option(s) colour" in answers[2]["error"]
    assert not answers[3]["ok"] and "--theta" in answers[3]["error"] and answers[3]["kind"] == "RequestInputError"


def test_the_api_imports_nothing_from_the_cli():
    code = ("import sys, spinect.api, spinect.requests, spinect.pipeline, spinect.metrics.runner, spinect.serve\n"
            "print(sorted(m for m in sys.modules if m.startswith('spinect.commands') or m == 'spinect.cli'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_requests_import_only_the_standard_library():
    code = ("import sys; before = set(sys.modules); import spinect.requests\n"
            "print(sorted(m.split('.')[0] for m in set(sys.modules) - before if m.split('.')[0] in "
            "('numpy', 'torch', 'SimpleITK', 'monai', 'scipy')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_train_request_makes_the_trainers_default_config(tmp_path):
    from spinect.requests import TRAIN_PRECISIONS
    from spinect.train import PRECISIONS, TrainingConfig

    assert TRAIN_PRECISIONS == PRECISIONS
    request = TrainRequest(data=tmp_path, out=tmp_path / "run")
    assert request.to_config() == TrainingConfig(data=tmp_path, out=tmp_path / "run")  # same defaults
    chosen = request.replace(iterations=7, patch_size_zyx=(16, 32, 32), stride_zyx=(8, 16, 16), precision="auto",
                             show_progress=False, num_threads=2).to_config(command="spinect train x")
    assert (chosen.iterations, chosen.total_iterations, chosen.patch_size_zyx, chosen.stride_zyx) == \
        (7, 7, (16, 32, 32), (8, 16, 16))
    assert chosen.amp is None and not chosen.show_progress and chosen.num_threads == 2 and not chosen.grid_from_init
    assert chosen.command == "spinect train x"
    with pytest.raises(InputError, match=r"--init model .*nope.pt not found"):
        request.replace(init=tmp_path / "nope.pt").to_config()


def test_segment_batch_per_case_options_are_the_segment_requests():
    from spinect.batch import SEGMENT_OPTIONS

    assert SEGMENT_OPTIONS == SEGMENT_BATCH_OPTIONS
    batch_fields = {f.name: f for f in dataclasses.fields(SegmentBatchRequest)}
    for f in dataclasses.fields(SegmentRequest):
        if f.name in SEGMENT_BATCH_OPTIONS:
            assert batch_fields[f.name].default == f.default and batch_fields[f.name].metadata == f.metadata
    assert {"input", "output", "overwrite", "uncertainty_output", "review_output"}.isdisjoint(SEGMENT_BATCH_OPTIONS)
    request = SegmentBatchRequest(out_dir="out", smoothing_mm=0.5, precision="fp32", levels=True)
    case = request.segment_request("ct.nii.gz", "out/ct.nii.gz")
    assert case == SegmentRequest(input="ct.nii.gz", output="out/ct.nii.gz", smoothing_mm=0.5, precision="fp32",
                                  levels=True, overwrite=True)
