"""Case reports: one self-contained HTML page (and a PDF where Chromium is installed) per case.

``spinect report OUT.html --seg SEG --triangles T.json ...`` gathers the inputs and model provenance,
the segment volumes and every triangle measurement (definition, view θ/φ, C-arm angles, projected
and true areas, r*, the projected window picture, the search heat map and the planned needle path)
into a page a physician can file. See :mod:`spinect.report.content` and :mod:`spinect.report.html`.
"""

from spinect.report.content import CaseReport, Measurement, SegmentVolume, gather_report
from spinect.report.html import DISCLAIMER, find_chromium, render_html, window_svg, write_report

__all__ = ["CaseReport", "Measurement", "SegmentVolume", "gather_report", "render_html", "write_report",
           "window_svg", "find_chromium", "DISCLAIMER"]
