"""``spinect report``: the page shows every number of its inputs, with definitions, and the disclaimer.

A phantom case's exact labels are measured (Kambin L5/S1, best-view search on a coarse grid) and
the page is checked against the measurement JSON, the provenance sidecar and volumes counted here.
Where a headless Chromium is installed, the page is also rendered (DOM dump, screenshot) and printed
to PDF by the real browser.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from spinect.api import report, segment
from spinect.errors import InputError, OutputError
from spinect.geometry.trajectory import SearchSettings, carm_angles
from spinect.report import DISCLAIMER, find_chromium, gather_report, render_html

phantom = pytest.importorskip("spinect.phantom")


@pytest.fixture(scope="module")
def case_files(tmp_path_factory):
    """A phantom's truth labels (label map + provenance from a real segment run's sidecar), a Kambin
    measurement with search, heat map and needle path, and a second measurement without search."""
    from spinect.geometry.measure import measure_triangle

    from conftest import make_tiny_model

    root = tmp_path_factory.mktemp("report")
    case = phantom.generate_case(phantom.case_seed(0, 0), window_tables=False, anatomy="primitive")
    labels = root / "case.nii.gz"
    sitk.WriteImage(case.labels, str(labels))
    # a provenance sidecar as `spinect segment` writes it (tiny model on a small CT)
    small = root / "small.nii.gz"
    sitk.WriteImage(case.ct[100:160, 100:160, 80:120], str(small))
    model = make_tiny_model(root / "tiny.pt")
    segment(small, root / "small_seg.nii.gz", model=model, device="cpu")
    sidecar = root / "small_seg.nii.gz.provenance.json"
    search = SearchSettings(step_deg=10.0, refine_step_deg=0.0)
    best = root / "kambin_right.json"
    measure_triangle(case.labels, ct=case.ct, structures=case.structures, auto=True, level="L5S1", side="right",
                     optimize=True, search=search, json_path=best, heatmap_path=root / "kambin_right.png")
    plain = root / "kambin_left.json"
    measure_triangle(case.labels, structures=case.structures, auto=True, level="L5S1", side="left", theta_deg=30.0,
                     json_path=plain)
    return {"root": root, "labels": labels, "sidecar": sidecar, "best": best, "plain": plain,
            "truth_labels": sitk.GetArrayFromImage(case.labels), "spacing": case.labels.GetSpacing()}


class _Page(HTMLParser):
    """Text, images and SVG attributes of a page (stdlib parser)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.images: list[str] = []
        self.svgs: list[dict] = []
        self.paths: list[str] = []
        self.circles: list[dict] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "svg":
            self.svgs.append(attrs)
        elif tag == "path" and attrs.get("class") == "free-window":
            self.paths.append(attrs["d"])
        elif tag == "circle" and attrs.get("class") == "r-star":
            self.circles.append(attrs)

    def handle_data(self, data):
        self.text.append(data)

    @property
    def plain(self) -> str:
        return re.sub(r"\s+", " ", " ".join(self.text))


def _polygon_area_px2(d: str) -> float:
    """Area of an SVG path of closed polygons (``M x,y x,y ... Z``), outer minus holes (even-odd)."""
    total = 0.0
    for ring in re.findall(r"M ([^Z]+) Z", d):
        points = np.array([[float(v) for v in pair.split(",")] for pair in ring.split()])
        x, y = points[:, 0], points[:, 1]
        total += 0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return abs(total)


def test_page_shows_every_measured_number_with_its_definition_view_and_the_disclaimer(case_files, tmp_path):
    out = tmp_path / "case.html"
    written = report(out, seg=case_files["labels"], triangles=[case_files["best"], case_files["plain"]],
                     provenance=case_files["sidecar"], case_id="phantom 0")
    assert written == {"html": out}
    page = _Page(out.read_text(encoding="utf-8"))
    text = page.plain
    assert DISCLAIMER in text and "not validated for clinical use" in text
    assert "test-only" in text  # the tiny model's status is flagged on the page
    record = json.loads(case_files["sidecar"].read_text())
    assert record["model"]["sha256"] in text and record["software"]["torch"] in text

    # volumes: counted here from the truth labels
    voxel_mm3 = float(np.prod(case_files["spacing"]))
    for value, name in ((1, "bone"), (2, "nerve")):
        ml = np.count_nonzero(case_files["truth_labels"] == value) * voxel_mm3 / 1000.0
        assert re.search(rf"{name} {ml:.2f} ", text), f"{name} {ml:.2f} mL not on the page"

    data = json.loads(case_files["best"].read_text())
    for m in (data["measurement"], data["trajectory"]["measurement"]):
        view = m["view"]
        carm = carm_angles(np.asarray(view["direction_lps"]), view["side"])
        assert f"{carm['oblique_deg']:.1f}° towards the right" in text
        assert f"{carm['tilt_deg']:.1f}°" in text
        for q in m["quantities"].values():
            assert f"{q['value']:.2f}" in text
            assert q["definition"].replace("  ", " ") in text
        assert f"projected along the view (θ {view['theta_deg']:.1f}°, φ {view['phi_deg']:.1f}°)" in text
    assert data["measurement"]["triangle_definition"] in text
    path = data["trajectory"]["path"]
    assert f"{path['path_length_mm']:.1f} mm" in text
    assert "(" + ", ".join(f"{v:.1f}" for v in path["skin_entry_lps_mm"]) + ")" in text
    # the heat map is inlined, byte for byte
    heatmap = (case_files["root"] / "kambin_right.png").read_bytes()
    assert any(src == "data:image/png;base64," + base64.b64encode(heatmap).decode() for src in page.images)
    # 3 window pictures (measured + best view, plain measurement); each free window's drawn area is
    # the measured free area, and the r* circle has the measured radius
    plain = json.loads(case_files["plain"].read_text())["measurement"]
    measured = [data["measurement"], data["trajectory"]["measurement"], plain]
    assert len(page.svgs) == len(page.paths) == len(page.circles) == 3
    for svg, d, circle, m in zip(page.svgs, page.paths, page.circles, measured):
        mm_per_px = float(svg["data-mm-per-px"])
        assert _polygon_area_px2(d) * mm_per_px**2 == pytest.approx(m["quantities"]["free_area_mm2"]["value"], rel=0.02)
        assert float(circle["r"]) * mm_per_px == pytest.approx(m["quantities"]["inscribed_radius_mm"]["value"], abs=0.05)


def test_segment_volumes_of_a_slicer_segmentation_and_its_own_sidecar(tmp_path, tiny_model, synthetic_ct_path):
    seg = tmp_path / "ct.seg.nrrd"
    result = segment(synthetic_ct_path, seg, model=tiny_model, device="cpu")
    content = gather_report(seg=seg)
    assert content.provenance_path == tmp_path / "ct.seg.nrrd.provenance.json"  # found by itself
    counts = result.voxel_counts()
    voxel_mm3 = float(np.prod(result.labels.GetSpacing()))
    by_name = {v.name: v for v in content.volumes}
    for name in ("bone", "nerve"):
        assert by_name[name].voxels == counts[name]
        assert by_name[name].volume_ml == pytest.approx(counts[name] * voxel_mm3 / 1000.0)
    assert content.ct == str(synthetic_ct_path)
    assert "No provenance sidecar" not in render_html(content)


def test_bad_report_requests_fail_clearly_and_write_nothing(case_files, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="nothing to report"):
        report(tmp_path / "a.html")
    with pytest.raises(InputError, match="not a `spinect triangles --json` result"):
        report(tmp_path / "a.html", triangles=[case_files["sidecar"]])
    with pytest.raises(OutputError, match="name it .html"):
        report(tmp_path / "a.txt", seg=case_files["labels"])
    monkeypatch.setenv("SPINECT_CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(OutputError, match="needs a headless Chromium"):
        report(tmp_path / "a.html", seg=case_files["labels"], pdf=tmp_path / "a.pdf")
    done = subprocess.run([sys.executable, "-m", "spinect", "report", str(tmp_path / "b.html"), "--triangles",
                           str(tmp_path / "missing.json")], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "missing.json does not exist" in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(find_chromium() is None, reason="no headless Chromium (Debian: apt-get install chromium)")
def test_real_headless_chromium_renders_and_prints_the_page(case_files, tmp_path):
    out, pdf = tmp_path / "case.html", tmp_path / "case.pdf"
    done = subprocess.run([sys.executable, "-m", "spinect", "report", str(out), "--seg", str(case_files["labels"]),
                           "--triangles", str(case_files["best"]), "--provenance", str(case_files["sidecar"]),
                           "--pdf", str(pdf)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert pdf.read_bytes().startswith(b"%PDF-") and pdf.stat().st_size > 20_000
    from spinect.report.html import CHROMIUM_FLAGS

    browser = [find_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browser, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'id="disclaimer"' in dom and dom.count("<svg") == 2 and "data:image/png;base64," in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*browser, "--hide-scrollbars", "--window-size=1000,1400", f"--screenshot={shot}", out.as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (1400, 1000)
    # the disclaimer's amber box (#fff3cd) is drawn near the top of the page
    amber = np.all(np.abs(pixels[:400] - np.array([255, 243, 205])) <= 3, axis=-1)
    assert amber.sum() > 20_000
