"""The endplate frame from three clicks on a label map without levels (spinect.geometry.endplate)."""

from __future__ import annotations

import numpy as np
import pytest

from spinect.geometry.session import TriangleSession
from spinect.phantom import case_seed, generate_case


@pytest.mark.parametrize("index, level, side", [(0, "L4L5", "right"), (9, "L5S1", "left"), (2, "L4L5", "left")])
def test_the_frame_grows_over_the_endplate_not_a_rim_piece(index, level, side):
    """Phantom v9 cases (warped arches) where the fit from the clicks was 12-27 deg off: the RANSAC
    plane's supporting point nearest the triangle lay on the posterolateral rim, 3-4 mm below the
    endplate, and the widening passes followed that piece. The truth's endplate normal is exact."""
    case = generate_case(case_seed(0, index), shape_zyx=(110, 150, 150), window_tables=False)
    entry = case.truth["levels"][level]
    normal = np.asarray(entry["viewing_frame"]["normal"], float)
    pts = np.array(list(entry[side]["kambin"]["points_lps_mm"].values()), float)
    session = TriangleSession.open(case.labels, level=level, side=side, triangle="kambin", around_lps_mm=pts,
                                   allow_missing_nerve=True)
    session.measure("points", points_lps_mm=pts, theta_deg=0.0, phi_deg=0.0)
    frame = next(iter(session._frames.values()))[0]
    error_deg = np.degrees(np.arccos(np.clip(frame.normal @ normal / np.linalg.norm(normal), -1.0, 1.0)))
    assert error_deg < 4.0
