"""TriangleSession (issue 16, item 1): one segmentation opened once, many views measured on it.

Truth: the one-shot :func:`measure_triangle` (what ``spinect triangles`` ran before the session
existed, and what the validation table is built on) on the same phantom case, mode, points and
view; the numbers must be equal, not close. Also: with and without ``--optimize`` the same view
gives the same numbers, and the printed report shows the measured view's and the best view's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from spinect.errors import InputError
from spinect.geometry.measure import crop_around, measure_triangle
from spinect.geometry.session import TriangleSession
from spinect.geometry.trajectory import SearchSettings

phantom = pytest.importorskip("spinect.phantom")

VIEWS = [(0.0, 0.0), (30.0, 0.0), (45.0, -10.0), (20.0, 15.0)]
#: a coarse search: the test checks consistency, not the optimum
COARSE = SearchSettings(step_deg=30.0, refine_step_deg=0.0, robust_deg=0.0)


@pytest.fixture(scope="module")
def case():
    return phantom.generate_case(0, shape_zyx=(96, 128, 128), window_tables=False)


@pytest.fixture(scope="module")
def primitive_case():
    """Automatic landmarks are tuned on the primitive skeleton (docs/triangles.md, known limits)."""
    return phantom.generate_case(0, shape_zyx=(96, 128, 128), window_tables=False, anatomy="primitive")


def _points(case, level: str, side: str) -> np.ndarray:
    entry = case.truth["levels"][level][side]["kambin"]
    return np.array(list(entry["points_lps_mm"].values()), float)


def _numbers(result) -> str:
    """Everything a measurement reports, as text: equal text = equal numbers, bit for bit."""
    return json.dumps({"measurement": result.measurement.to_dict(), "frame_source": result.frame_source},
                      sort_keys=True, default=str)


@pytest.mark.parametrize("level, side", [("L5S1", "left"), ("L4L5", "right")])
def test_points_session_equals_the_one_shot_function_in_every_view(case, level, side):
    pts = _points(case, level, side)
    session = TriangleSession.open(case.labels, level=level, side=side, around_lps_mm=pts)
    for theta, phi in VIEWS:
        ours = session.measure("points", points_lps_mm=pts, theta_deg=theta, phi_deg=phi)
        one_shot = measure_triangle(case.labels, level=level, side=side, points_lps_mm=pts, theta_deg=theta, phi_deg=phi)
        assert _numbers(ours) == _numbers(one_shot)
        assert ours.measurement.view.theta_deg == theta and ours.measurement.view.phi_deg == phi
        assert ours.nerve_voxels_near_target == one_shot.nerve_voxels_near_target > 0
    assert session.fields_built == 1  # the view changes reused the fields
    # the views really differ (the comparison is not between copies of one number)
    areas = {round(session.measure("points", points_lps_mm=pts, theta_deg=t, phi_deg=p).measurement
                   .value("projected_triangle_area_mm2"), 6) for t, p in VIEWS}
    assert len(areas) == len(VIEWS)


def test_seed_and_auto_sessions_equal_the_one_shot_function(primitive_case):
    case = primitive_case
    level, side = "L5S1", "left"
    pts = _points(case, level, side)
    seed = pts.mean(axis=0)
    seeded = TriangleSession.open(case.labels, level=level, side=side, structures=case.structures, around_lps_mm=seed)
    auto = TriangleSession.open(case.labels, level=level, side=side, structures=case.structures, auto=True)
    for theta, phi in VIEWS[:3]:
        ours = seeded.measure("seed", seed_lps_mm=seed, theta_deg=theta, phi_deg=phi)
        one_shot = measure_triangle(case.labels, level=level, side=side, structures=case.structures, seed_lps_mm=seed,
                                    theta_deg=theta, phi_deg=phi)
        assert _numbers(ours) == _numbers(one_shot) and ours.measurement.mode == "seed"
        ours = auto.measure("auto", theta_deg=theta, phi_deg=phi)
        one_shot = measure_triangle(case.labels, level=level, side=side, structures=case.structures, auto=True,
                                    theta_deg=theta, phi_deg=phi)
        assert _numbers(ours) == _numbers(one_shot) and ours.measurement.mode == "auto"
        assert ours.frame_source.startswith("level map")
    assert seeded.fields_built == auto.fields_built == 1


def test_moved_points_reuse_the_fields_until_the_target_leaves_the_crop(case):
    level, side = "L5S1", "left"
    pts = _points(case, level, side)
    session = TriangleSession.open(case.labels, level=level, side=side, around_lps_mm=pts)
    moved = pts + np.array([0.0, 0.0, 0.0, 1.5, -1.0, 0.5, 0.0, 0.0, 0.0]).reshape(3, 3)  # B dragged by 1.9 mm
    ours = session.measure("points", points_lps_mm=moved, theta_deg=30.0)
    assert session.fields_built == 1
    one_shot = measure_triangle(case.labels, level=level, side=side, points_lps_mm=moved, theta_deg=30.0)
    # the moved triangle is measured (not the old one), on fields cropped around the old target:
    # the same numbers up to floating-point rounding
    np.testing.assert_array_equal(ours.measurement.triangle_lps_mm, moved)
    for name, q in one_shot.measurement.quantities.items():
        assert ours.measurement.value(name) == pytest.approx(q.value, rel=1e-5, abs=1e-6), name
    assert ours.measurement.value("true_triangle_area_mm2") != pytest.approx(
        session.measure("points", points_lps_mm=pts, theta_deg=30.0).measurement.value("true_triangle_area_mm2"))
    # far from the crop's centre (more than a quarter of its 50 mm half-size): a new crop, exact again
    far = pts + np.array([0.0, 0.0, -14.0])
    session.allow_missing_nerve = True  # the shifted triangle may lie off the roots; only the crop matters here
    result = session.measure("points", points_lps_mm=far, theta_deg=30.0)
    assert session.fields_built == 2
    assert _numbers(result) == _numbers(measure_triangle(case.labels, level=level, side=side, points_lps_mm=far,
                                                         theta_deg=30.0, allow_missing_nerve=True))


def test_session_refuses_bad_requests_clearly(case):
    pts = _points(case, "L5S1", "left")
    session = TriangleSession.open(case.labels, level="L5S1", side="left", around_lps_mm=pts)
    with pytest.raises(InputError, match="three vertices"):
        session.measure("points")
    with pytest.raises(InputError, match="seed"):
        session.measure("seed", points_lps_mm=pts)
    with pytest.raises(InputError, match="3 finite"):
        session.measure("points", points_lps_mm=pts[:2])
    with pytest.raises(InputError, match="3 finite"):
        session.measure("points", points_lps_mm=np.where(np.eye(3, dtype=bool), np.nan, pts))
    with pytest.raises(InputError, match="level map"):
        session.measure("auto")
    with pytest.raises(InputError, match="mode"):
        session.measure("sideways", points_lps_mm=pts)
    with pytest.raises(InputError, match="theta"):
        session.measure("points", points_lps_mm=pts, theta_deg=120.0)
    with pytest.raises(InputError, match="level"):
        TriangleSession.open(case.labels, level="L3L4", side="left")
    # the session still serves after refusing
    assert session.measure("points", points_lps_mm=pts).measurement.value("free_area_mm2") >= 0.0


@pytest.fixture(scope="module")
def small_files(case, tmp_path_factory):
    """The small case on disk: larger than the 50 mm local crop, so the search's crop differs from it."""
    folder = tmp_path_factory.mktemp("session_cli")
    pts = _points(case, "L5S1", "left")
    seg, ct = folder / "labels.nrrd", folder / "ct.nrrd"
    local = crop_around(case.labels, pts.mean(axis=0), 50.0)
    assert np.prod(local.GetSize()) < 0.8 * np.prod(case.labels.GetSize())
    sitk.WriteImage(case.labels, str(seg))
    sitk.WriteImage(case.ct, str(ct))
    return dict(folder=folder, seg=seg, ct=ct, pts=pts)


def test_optimize_keeps_the_measured_view_and_prints_both_views(small_files, capsys):
    """Issue 16, "Optimize is inconsistent": the requested view's numbers must not change with
    --optimize (they did: another crop and frame), and the report must print the best view's."""
    from spinect.cli import main

    f = small_files
    base = ["triangles", str(f["seg"]), "--level", "L5S1", "--side", "left", "--points", *map(str, f["pts"].ravel()),
            "--theta", "30", "--phi", "-5", "--progress-lines"]
    assert main(base + ["--json", str(f["folder"] / "plain.json")]) == 0
    plain_out = capsys.readouterr().out
    assert main(base + ["--json", str(f["folder"] / "opt.json"), "--optimize", "--step", "30", "--ct", str(f["ct"])]) == 0
    opt_out = capsys.readouterr().out
    plain = json.loads((f["folder"] / "plain.json").read_text())
    opt = json.loads((f["folder"] / "opt.json").read_text())
    assert plain["measurement"] == opt["measurement"]  # every number and outline, exactly
    assert plain["frame_source"] == opt["frame_source"]
    assert "through B and C" in plain["frame_source"]
    assert plain["trajectory"] is None and opt["trajectory"] is not None

    def block(text: str, start: str, stop: str | None) -> list[str]:
        lines = [line for line in text.splitlines() if not line.startswith("SPINECT_PROGRESS")]
        i = next(k for k, line in enumerate(lines) if line.startswith(start))
        j = next((k for k, line in enumerate(lines) if stop and line.startswith(stop)), len(lines))
        return lines[i:j]

    measured = block(plain_out, "measured view", None)
    assert measured[0].startswith("measured view: theta=30.0 phi=-5.0")
    assert block(opt_out, "measured view", "best view") == measured  # printed numbers identical too
    best = block(opt_out, "best view", None)
    t = opt["trajectory"]
    assert best[0].startswith(f"best view: theta={t['theta_deg']:.2f} phi={t['phi_deg']:.2f}")
    # the best view's own numbers are printed, as measured (the JSON's trajectory measurement)
    for name, q in t["measurement"]["quantities"].items():
        assert any(line.split()[:2] == [name, f"{q['value']:.2f}"] for line in best), name
    assert f"{t['objective']}={t['objective_value']:.2f}" in best[1] and "grid" in best[1]


def test_session_optimize_equals_the_one_shot_search(small_files):
    f = small_files
    pts = f["pts"]
    one_shot = measure_triangle(f["seg"], ct=f["ct"], level="L5S1", side="left", points_lps_mm=pts, theta_deg=30.0,
                                optimize=True, search=COARSE)
    session = TriangleSession.open(f["seg"], ct=f["ct"], level="L5S1", side="left", around_lps_mm=pts)
    before = session.measure("points", points_lps_mm=pts, theta_deg=30.0)
    trajectory = session.optimize("points", points_lps_mm=pts, search=COARSE)
    after = session.measure("points", points_lps_mm=pts, theta_deg=30.0)
    assert json.dumps(trajectory.to_dict(), sort_keys=True) == json.dumps(one_shot.trajectory.to_dict(), sort_keys=True)
    assert _numbers(before) == _numbers(after) == _numbers(one_shot)  # the search changed nothing
    for name in ("centre_lps_mm", "normal", "left", "anterior"):  # the search used the measurements' frame
        np.testing.assert_array_equal(getattr(trajectory.measurement.frame, name), getattr(before.measurement.frame, name))
    assert session.fields_built == 2  # the local crop, then the search's crop once
    session.optimize("points", points_lps_mm=pts, search=COARSE)
    assert session.fields_built == 2


def test_the_api_opens_the_same_session(case):
    from spinect import api

    pts = _points(case, "L5S1", "right")
    session = api.open_triangles(case.labels, level="L5S1", side="right")  # no target yet: fields at first use
    assert isinstance(session, TriangleSession) and session.fields() is None and session.fields_built == 0
    ours = session.measure("points", points_lps_mm=pts, theta_deg=40.0, phi_deg=10.0)
    assert session.fields_built == 1 and session.fields("reach") is None
    assert _numbers(ours) == _numbers(api.triangles(case.labels, level="L5S1", side="right", points_lps_mm=pts,
                                                    theta_deg=40.0, phi_deg=10.0))
    with pytest.raises(InputError, match="finite 3D points"):
        api.open_triangles(case.labels, level="L5S1", side="right", around_lps_mm=[1.0, 2.0])


def test_prefetched_reach_crop_gives_the_same_search_without_building_it_again(case):
    """prefetch_reach (the worker's sessions): the 110 mm crop is built in the background after
    open; measurements go on meanwhile, and the search uses that crop: the same numbers as a
    session that builds it on demand, and no second build."""
    pts = _points(case, "L5S1", "left")
    search = SearchSettings(step_deg=20.0, refine_step_deg=0.0)
    plain = TriangleSession.open(case.labels, level="L5S1", side="left", ct=case.ct, around_lps_mm=pts)
    expected = plain.optimize("points", points_lps_mm=pts, search=search)
    session = TriangleSession.open(case.labels, level="L5S1", side="left", ct=case.ct, around_lps_mm=pts,
                                   prefetch_reach=True)
    measured = session.measure("points", points_lps_mm=pts, theta_deg=20.0)  # while the crop is built
    assert _numbers(measured) == _numbers(plain.measure("points", points_lps_mm=pts, theta_deg=20.0))
    session._prefetch.join(timeout=120)
    assert session.fields_prefetched == 1 and session.fields("reach") is not None
    found = session.optimize("points", points_lps_mm=pts, search=search)
    assert session.fields_built == 1  # only the local crop was built in the foreground
    assert json.dumps(found.to_dict(), sort_keys=True) == json.dumps(expected.to_dict(), sort_keys=True)
