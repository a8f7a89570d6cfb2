"""One self-contained HTML page per case (pictures inlined: SVG windows, base64 heat maps), and a PDF of it.

The page can be filed as it is: it loads nothing from the network and needs no other file.
Coordinates are LPS mm (SimpleITK/DICOM; RAS = (-x, -y, z)). Every number keeps its unit, its
definition (from the measurement JSON) and whether it is projected in the named view or true 3D.
The PDF is printed by a headless Chromium when one is installed (:func:`find_chromium`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from spinect.errors import OutputError
from spinect.io.atomic import atomic_output, check_output_path
from spinect.report.content import CaseReport, Measurement

__all__ = ["render_html", "write_report", "find_chromium", "DISCLAIMER", "QUANTITY_NAMES"]

#: Shown at the top of every page.
DISCLAIMER = ("Research software, not validated for clinical use. spinect's default model was trained on "
              "synthetic anatomy (a lumbosacral CT phantom), not on patients. Check every number against the images.")

#: Readable names of the measurement quantities (JSON key -> label).
QUANTITY_NAMES = {
    "projected_triangle_area_mm2": "Triangle area, projected",
    "true_triangle_area_mm2": "Triangle area, true 3D",
    "triangle_inradius_mm": "Triangle inradius",
    "free_area_mm2": "Free window area",
    "usable_area_mm2": "Usable area (instrument centre)",
    "inscribed_radius_mm": "r* (widest free needle radius)",
}

_UNITS = {"mm2": "mm²", "mm": "mm"}
_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Flags for a headless Chromium on a machine without network (docs of the workplace, Chromium's own).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable (``SPINECT_CHROMIUM`` first), or None."""
    given = os.environ.get("SPINECT_CHROMIUM")
    if given:
        return given if shutil.which(given) else None
    for name in _CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def write_report(report: CaseReport, path: str | os.PathLike, *, pdf: str | os.PathLike | None = None,
                 overwrite: bool = True) -> dict[str, Path]:
    """Write the HTML page (and the PDF) atomically.

    Raises:
        OutputError: unwritable folder, existing file with ``overwrite=False``, a PDF asked for
            without a Chromium, or a failed PDF print (then neither file is written).
    """
    if Path(path).suffix.lower() not in (".html", ".htm"):
        raise OutputError(f"the report is an HTML page; name it .html, not {Path(path).name}")
    if pdf is not None and Path(pdf).suffix.lower() != ".pdf":
        raise OutputError(f"--pdf needs a .pdf file name, not {Path(pdf).name}")
    path = check_output_path(path, overwrite=overwrite)
    if pdf is not None:
        pdf = check_output_path(pdf, overwrite=overwrite)
        browser = find_chromium()
        if browser is None:
            raise OutputError("a PDF needs a headless Chromium to print the page, and none was found (chromium, "
                              "google-chrome, or SPINECT_CHROMIUM); install one (Debian: apt-get install chromium) "
                              "or leave out --pdf and print the HTML page from a browser")
    page = render_html(report)
    written: dict[str, Path] = {}
    if pdf is not None:
        written["pdf"] = _print_pdf(page, Path(pdf), browser, overwrite=overwrite)
    with atomic_output(path, verify=_verify_html, overwrite=overwrite) as tmp:
        tmp.write_text(page, encoding="utf-8")
    written["html"] = path
    return written


def render_html(report: CaseReport) -> str:
    """The whole page as one string (UTF-8 HTML5)."""
    from spinect import __version__

    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"<h1>Spine CT measurement report: {_e(report.case_id)}</h1>",
        f'<p class="meta">Made {created} by spinect {_e(__version__)}. Coordinates: LPS mm (RAS = −x, −y, z).</p>',
        f'<div class="warning" id="disclaimer"><strong>{_e(DISCLAIMER)}</strong>{_model_warning(report)}</div>',
        _inputs_section(report),
        _volumes_section(report),
    ]
    parts += [_measurement_section(m, number) for number, m in enumerate(report.measurements, start=1)]
    body = "\n".join(part for part in parts if part)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>spinect report {_e(report.case_id)}</title>\n<style>{_CSS}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


# --- sections ----------------------------------------------------------------------------------


def _model_warning(report: CaseReport) -> str:
    model = (report.provenance or {}).get("model") or {}
    status = model.get("training_status")
    if status and status != "trained":
        return f"<br>The model used here is marked <strong>{_e(status)}</strong>: its labels are not meaningful."
    return ""


def _inputs_section(report: CaseReport) -> str:
    rows = [("CT (input)", report.ct or "not given"),
            ("Segmentation", str(report.segmentation) if report.segmentation else "not given")]
    record = report.provenance
    if record is None:
        note = ('<p class="note">No provenance sidecar was found, so the model and settings that made this '
                "segmentation are unknown.</p>") if report.segmentation else ""
        return f"<h2>Inputs and model</h2>{_table(rows, ('item', 'value'))}{note}"
    model, software = record.get("model") or {}, record.get("software") or {}
    rows += [
        ("Model", f"{model.get('name', '?')} (version {model.get('model_version', '?')}, "
                  f"training status {model.get('training_status', '?')})"),
        ("Model sha256", f"<code>{_e(model.get('sha256', '?'))}</code>"),
        ("Model file", model.get("file", "?")),
        ("Software", f"spinect {software.get('version', '?')}, PyTorch {software.get('torch', '?')}, "
                     f"Python {software.get('python', '?')}; device {record.get('device', '?')}"),
        ("Segmented", record.get("created_utc", "?")),
        ("Settings", "; ".join(f"{k} = {_value_text(v)}" for k, v in (record.get("settings") or {}).items())),
        ("Provenance file", str(report.provenance_path)),
    ]
    ensemble = record.get("ensemble") or []
    if ensemble:
        rows.append(("Ensemble members", "; ".join(f"{m.get('name')} sha256 {m.get('sha256', '')[:16]}…" for m in ensemble)))
    return f"<h2>Inputs and model</h2>{_table(rows, ('item', 'value'), raw_values={'Model sha256'})}"


def _volumes_section(report: CaseReport) -> str:
    if report.segmentation is None:
        return ""
    rows = [(v.name, f"{v.volume_ml:.2f}", f"{v.voxels:,}") for v in report.volumes]
    voxel = f"{report.voxel_mm3:.4g} mm³" if report.voxel_mm3 else "?"
    return (f"<h2>Segment volumes</h2>{_table(rows, ('segment', 'volume (mL)', 'voxels'))}"
            f'<p class="note">Volume = voxels × voxel volume ({voxel}).</p>')


def _measurement_section(item: Measurement, number: int) -> str:
    data, m = item.data, item.data["measurement"]
    notes = list(data.get("warnings") or []) + list(m.get("notes") or [])
    parts = [
        f'<section class="measurement" id="measurement-{number}"><h2>{_e(item.title)}</h2>',
        f"<p><strong>Definition.</strong> {_e(m.get('triangle_definition', ''))}</p>",
        f"<p>Landmarks: {_e(m.get('mode', '?'))}; endplate frame from {_e(data.get('frame_source', '?'))}. "
        f"Window: {_e(_window_text(m.get('window') or {}))}. File: {_e(str(item.path))}.</p>",
    ]
    if notes:
        parts.append('<div class="note">' + "<br>".join(_e(n) for n in notes) + "</div>")
    parts.append(_view_block("Measured view", m, None))
    trajectory = data.get("trajectory")
    if trajectory:
        parts.append(_view_block("Best view found by the search", trajectory["measurement"], trajectory))
        parts.append(_path_block(trajectory.get("path") or {}))
        heatmap = item.heatmap_path()
        if heatmap is not None:
            parts.append(f'<h3>Search heat map</h3><img class="heatmap" alt="objective over theta and phi" '
                         f'src="data:image/png;base64,{base64.b64encode(heatmap.read_bytes()).decode()}">')
        else:
            parts.append('<p class="note">No heat map file next to the JSON (run `spinect triangles --optimize '
                         "--heatmap FILE`).</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _view_block(title: str, m: dict[str, Any], trajectory: dict[str, Any] | None) -> str:
    from spinect.geometry.trajectory import carm_angles

    view = m["view"]
    carm = carm_angles(np.asarray(view["direction_lps"], float), view["side"])
    angles = [("θ obliquity", f"{view['theta_deg']:.1f}°"), ("φ cranio-caudal tilt", f"{view['phi_deg']:.1f}°"),
              ("C-arm oblique", f"{carm['oblique_deg']:.1f}° towards the {view['side']}"),
              ("C-arm tilt", f"{carm['tilt_deg']:.1f}° (positive: line of sight runs cranially going anteriorly)")]
    if trajectory:
        unit = "mm" if trajectory.get("objective") == "radius" else "mm²"
        angles += [("Search objective", f"{trajectory.get('objective')}: {trajectory.get('objective_value', 0):.2f} {unit}, "
                                        f"robust {trajectory.get('robust_objective_value', 0):.2f} {unit}"),
                   ("Robust value", trajectory.get("robust_definition", "")),
                   ("Angles", trajectory.get("angles_definition", ""))]
    rows = []
    for key, q in (m.get("quantities") or {}).items():
        value = "unbounded" if q.get("value") is None else f"{q['value']:.2f}"
        kind = ("true 3D" if q.get("kind") == "true_3d"
                else f"projected along the view (θ {view['theta_deg']:.1f}°, φ {view['phi_deg']:.1f}°)")
        rows.append((QUANTITY_NAMES.get(key, key), value, _UNITS.get(q.get("unit"), q.get("unit", "")), kind,
                     q.get("definition", "")))
    return (f"<h3>{_e(title)}</h3>{_table(angles, ('view', 'value'))}"
            f"{_table(rows, ('quantity', 'value', 'unit', 'kind', 'definition'), css='quantities')}"
            f'<figure>{window_svg(m)}<figcaption>Projected window seen along the view: free window (green), '
            f"projected triangle (blue, dashed), r* circle and needle axis (red). u: image right, v: cranial "
            f"(mm).</figcaption></figure>")


def _path_block(path: dict[str, Any]) -> str:
    if not path:
        return ""
    rows = [("Skin entry (LPS mm)", _point(path.get("skin_entry_lps_mm"))),
            ("Target (LPS mm)", _point(path.get("target_lps_mm"))),
            ("Path length", _mm(path.get("path_length_mm"))),
            ("Smallest distance to nerve", _mm(path.get("min_nerve_clearance_mm"))),
            ("Smallest distance to bone", _mm(path.get("min_bone_clearance_mm"))),
            ("Clear of bone and nerve", "yes" if path.get("clear_of_bone_and_nerve") else "NO"),
            ("Skin entry", path.get("skin_entry_definition", "")),
            ("Distances", path.get("clearance_definition", ""))]
    return f"<h3>Planned needle path</h3>{_table(rows, ('item', 'value'))}"


# --- the window picture ------------------------------------------------------------------------


def window_svg(m: dict[str, Any], *, size_px: int = 360) -> str:
    """SVG of the free window in the view's image plane (u right, v cranial), 1 mm grid lines every 5 mm.

    Args:
        m: a measurement dict of the triangles JSON (``view.image_u_lps``, ``image_v_lps``,
            ``plane_origin_lps_mm``, ``outlines_lps_mm``, ``triangle_projected_lps_mm``,
            ``inscribed_centre_lps_mm`` and the ``inscribed_radius_mm`` quantity).
    """
    u_axis, v_axis = np.asarray(m["view"]["image_u_lps"], float), np.asarray(m["view"]["image_v_lps"], float)
    origin = np.asarray(m.get("plane_origin_lps_mm") or [0, 0, 0], float)

    def uv(points) -> np.ndarray:
        p = np.asarray(points, float).reshape(-1, 3) - origin
        return np.column_stack([p @ u_axis, p @ v_axis])

    outlines = [uv(o) for o in m.get("outlines_lps_mm") or [] if o]
    triangle = uv(m["triangle_projected_lps_mm"]) if m.get("triangle_projected_lps_mm") else None
    centre = uv(m["inscribed_centre_lps_mm"])[0] if m.get("inscribed_centre_lps_mm") else None
    radius = ((m.get("quantities") or {}).get("inscribed_radius_mm") or {}).get("value") or 0.0
    shapes = outlines + ([triangle] if triangle is not None else [])
    if not shapes:
        return '<p class="note">No window outline in this measurement.</p>'
    everything = np.vstack(shapes + ([centre[None]] if centre is not None else []))
    low, high = everything.min(axis=0) - 3.0, everything.max(axis=0) + 3.0
    span = float(max(high - low))
    scale = size_px / span
    height_px = max(int(round((high[1] - low[1]) * scale)), 60)  # the picture keeps the window's aspect ratio

    def xy(points: np.ndarray) -> str:
        return " ".join(f"{(p[0] - low[0]) * scale:.1f},{(high[1] - p[1]) * scale:.1f}" for p in points)

    elements = [f'<rect width="{size_px}" height="{height_px}" fill="#f4f4f4"/>']
    for tick in np.arange(np.ceil(low[0] / 5) * 5, high[0], 5.0):
        x = (tick - low[0]) * scale
        elements.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height_px}" stroke="#ddd"/>')
    for tick in np.arange(np.ceil(low[1] / 5) * 5, high[1], 5.0):
        y = (high[1] - tick) * scale
        elements.append(f'<line x1="0" y1="{y:.1f}" x2="{size_px}" y2="{y:.1f}" stroke="#ddd"/>')
    if outlines:
        d = " ".join(f"M {xy(o)} Z" for o in outlines)
        elements.append(f'<path class="free-window" d="{d}" fill="#4caf50" fill-opacity="0.45" fill-rule="evenodd" '
                        'stroke="#1b5e20" stroke-width="1.5"/>')
    if triangle is not None:
        elements.append(f'<polygon class="triangle" points="{xy(triangle)}" fill="none" stroke="#1565c0" '
                        'stroke-width="1.5" stroke-dasharray="6 4"/>')
    if centre is not None:
        cx, cy = (centre[0] - low[0]) * scale, (high[1] - centre[1]) * scale
        elements.append(f'<circle class="r-star" cx="{cx:.1f}" cy="{cy:.1f}" r="{radius * scale:.1f}" fill="none" '
                        'stroke="#c62828" stroke-width="1.5"/>')
        elements.append(f'<circle class="needle" cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="#c62828"/>')
    elements.append(f'<text x="6" y="{height_px - 6}" font-size="11" fill="#555">grid 5 mm; '
                    f"{high[0] - low[0]:.0f} mm across</text>")
    return (f'<svg class="window" xmlns="http://www.w3.org/2000/svg" width="{size_px}" height="{height_px}" '
            f'viewBox="0 0 {size_px} {height_px}" data-mm-per-px="{1.0 / scale:.6f}" role="img" '
            f'aria-label="projected window">{"".join(elements)}</svg>')


# --- helpers -----------------------------------------------------------------------------------


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str], *, css: str = "", raw_values: set[str] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell if (i == 1 and row[0] in raw_values) else _e(cell)}</td>" for i, cell in enumerate(row))
        + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _value_text(value: Any) -> str:
    return " × ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def _window_text(window: dict[str, Any]) -> str:
    if not window:
        return "?"
    return (f"{window.get('kind')}, depth {window.get('depth_before_target_mm')} mm before to "
            f"{window.get('depth_after_target_mm')} mm after the target, instrument radius "
            f"{window.get('instrument_radius_mm')} mm, sampling {window.get('pixel_mm')} mm")


def _point(values) -> str:
    return "—" if not values else "(" + ", ".join(f"{float(v):.1f}" for v in values) + ")"


def _mm(value) -> str:
    return "—" if value is None else f"{float(value):.1f} mm"


def _verify_html(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if not text.rstrip().endswith("</html>") or 'id="disclaimer"' not in text:
        raise ValueError("the report page read back is incomplete")


def _print_pdf(page: str, pdf: Path, browser: str, *, overwrite: bool, timeout_s: float = 120.0) -> Path:
    """Print ``page`` to ``pdf`` with a headless Chromium (temporary HTML and profile, removed after)."""
    with tempfile.TemporaryDirectory(prefix="spinect-report-") as work:
        source = Path(work) / "report.html"
        source.write_text(page, encoding="utf-8")
        with atomic_output(pdf, verify=_verify_pdf, overwrite=overwrite) as tmp:
            command = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={Path(work) / 'profile'}", "--no-pdf-header-footer",
                       f"--print-to-pdf={tmp}", source.as_uri()]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise OutputError(f"Chromium could not print the PDF ({exc}); leave out --pdf") from exc
            if done.returncode != 0:
                raise OutputError(f"Chromium could not print the PDF (exit {done.returncode}: "
                                  f"{done.stderr.strip()[-300:]}); leave out --pdf")
    return pdf


def _verify_pdf(path: Path) -> None:
    with open(path, "rb") as handle:
        if handle.read(5) != b"%PDF-":
            raise ValueError("the PDF written is empty or not a PDF")


_CSS = """
body { font-family: "DejaVu Sans", Arial, sans-serif; max-width: 60rem; margin: 1.5rem auto; color: #222;
       font-size: 14px; line-height: 1.4; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; } h2 { border-bottom: 2px solid #888; margin-top: 1.6rem; }
.meta { color: #555; margin-top: 0; }
.warning { background: #fff3cd; border: 2px solid #c77700; padding: 0.6rem 0.8rem; margin: 0.8rem 0; }
.note { color: #6b4e00; }
table { border-collapse: collapse; margin: 0.4rem 0 0.8rem; }
th, td { border: 1px solid #bbb; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #eee; }
table.quantities td:nth-child(2) { text-align: right; font-weight: bold; white-space: nowrap; }
table.quantities td:nth-child(5) { color: #444; font-size: 0.9em; }
figure { display: inline-block; margin: 0.4rem 1rem 0.8rem 0; } figcaption { font-size: 0.85em; max-width: 360px; }
img.heatmap { max-width: 100%; border: 1px solid #ccc; }
section.measurement { page-break-inside: auto; }
@media print { body { margin: 0.5cm; } h2 { page-break-after: avoid; } }
"""
