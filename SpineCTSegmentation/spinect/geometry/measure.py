"""One call for ``spinect triangles``: label map (and CT) in, measurement (and best view) out.

:func:`measure_triangle` opens a :class:`~spinect.geometry.session.TriangleSession` (reads or takes
the images, crops a region around the target, builds the obstacle fields, finds the endplate
frame), measures in the requested mode and view, optionally searches the best view on the same
session, and writes the JSON report and PNGs atomically. Interactive callers keep the session
open and measure many views on it. A Slicer Logic can call
it with markup positions converted to LPS mm and read :class:`TrianglesResult` (or its JSON).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from spinect.errors import InputError
from spinect.geometry.endplate import endplate_frame_from_structures, endplate_frame_near
from spinect.geometry.frame import EndplateFrame, frame_from_endplate_points
from spinect.geometry.results import TriangleMeasurement
from spinect.geometry.trajectory import SearchSettings, TrajectoryResult
from spinect.geometry.triangles import LEVELS, TRIANGLES, check_choice
from spinect.geometry.window import WindowSettings

__all__ = ["TrianglesResult", "measure_triangle", "crop_around", "ROI_RADIUS_MM", "LOCAL_ROI_RADIUS_MM"]

logger = logging.getLogger(__name__)

#: Half-size of the region cropped around the target when the skin must be reached (search, or a
#: reachable window): enough for oblique paths through the flank.
ROI_RADIUS_MM = 110.0
#: Half-size for an anatomical-window measurement (15 mm before the target, plus margins).
LOCAL_ROI_RADIUS_MM = 50.0
#: Nerve must be labelled within this half-size box (mm) around the target, else the window
#: would be measured against bone alone and come out far too large.
NERVE_CHECK_RADIUS_MM = 30.0
#: progress(stage, overall fraction 0..1, message), as ``spinect.commands.progress`` displays it.
ProgressCallback = Callable[[str, float, str], None]


@dataclass(frozen=True)
class TrianglesResult:
    """What :func:`measure_triangle` produced.

    Attributes:
        measurement: the measurement in the requested view (θ, φ).
        trajectory: the best-view search result, or None without ``optimize``.
        frame_source: where the endplate frame came from.
        files: paths written (json, heatmap png).
    """

    measurement: TriangleMeasurement
    trajectory: TrajectoryResult | None
    frame_source: str
    files: dict[str, Path]
    warnings: list[str] = field(default_factory=list)
    nerve_voxels_near_target: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "spinect_triangles_version": 1,
            "coordinate_system": "LPS mm (SimpleITK/DICOM); RAS = (-x, -y, z)",
            "warnings": list(self.warnings),
            "obstacles": {"nerve_voxels_within_mm": NERVE_CHECK_RADIUS_MM,
                          "nerve_voxels_near_target": self.nerve_voxels_near_target,
                          "nerve_checked": not self.warnings},
            "frame_source": self.frame_source,
            "measurement": self.measurement.to_dict(),
            "trajectory": None if self.trajectory is None else self.trajectory.to_dict(),
        }


def crop_around(image: sitk.Image, centre_lps_mm: np.ndarray, radius_mm: float) -> sitk.Image:
    """The part of ``image`` within a box of half-size ``radius_mm`` (mm) around a point."""
    corners = [
        np.asarray(centre_lps_mm, float) + np.array([sx, sy, sz]) * radius_mm
        for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)
    ]
    index = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(c)) for c in corners])
    size = np.array(image.GetSize())
    lo = np.clip(np.floor(index.min(axis=0)).astype(int), 0, size - 1)
    hi = np.clip(np.ceil(index.max(axis=0)).astype(int) + 1, lo + 1, size)
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])


def measure_triangle(
    seg: str | os.PathLike | sitk.Image,
    *,
    level: str,
    side: str,
    triangle: str = "kambin",
    ct: str | os.PathLike | sitk.Image | None = None,
    points_lps_mm: np.ndarray | None = None,
    seed_lps_mm: np.ndarray | None = None,
    auto: bool = False,
    structures: str | os.PathLike | sitk.Image | None = None,
    endplate_lps_mm: np.ndarray | None = None,
    frame: EndplateFrame | None = None,
    theta_deg: float = 0.0,
    phi_deg: float = 0.0,
    upper_line_lps_mm: np.ndarray | None = None,
    settings: WindowSettings | None = None,
    optimize: bool = False,
    search: SearchSettings | None = None,
    json_path: str | os.PathLike | None = None,
    heatmap_path: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    allow_missing_nerve: bool = False,
) -> TrianglesResult:
    """Measure a Kambin or safe triangle and optionally find the best oblique view.

    Exactly one of ``points_lps_mm`` (3, 3), ``seed_lps_mm`` (3,) or ``auto`` (needs
    ``structures``) bounds the window.

    The endplate frame comes from, in order: ``frame``; ``structures`` (the lower vertebra's
    cranial surface); ``endplate_lps_mm`` ((3,) a point on the endplate → local fit; (N ≥ 3, 3)
    points → plane fit); near the midpoint of B and C, else B, else C (points mode: B, C on the endplate).

    Args:
        seg: label map (0 background, 1 bone, 2 nerve): file (incl. ``.seg.nrrd``) or image.
        level: ``"L4L5"`` or ``"L5S1"``; side: ``"left"`` or ``"right"``; triangle: ``"kambin"``
            or ``"safe"``.
        ct: CT (file or image) for the skin entry point; optional.
        points_lps_mm, seed_lps_mm, auto, structures: the bounding mode (see above).
        endplate_lps_mm, frame: the endplate (see above).
        theta_deg, phi_deg: the view measured (obliquity, cranio-caudal tilt; degrees).
        upper_line_lps_mm: (3,) the pedicle's lowest point, bounding a seed window from above.
        settings: window sampling; search: angle search settings.
        optimize: also search the best view and plan the path.
        json_path: write the JSON report here (atomically); heatmap_path: write the heat map PNG.
        progress: called with (stage, overall fraction, message).
        allow_missing_nerve: measure even when no nerve is labelled near the target (the window
            is then bounded by bone only; flagged in ``warnings`` and the JSON).

    Returns:
        The :class:`TrianglesResult`.

    Raises:
        InputError: bad mode, points, level, side or files; no nerve labelled within
            :data:`NERVE_CHECK_RADIUS_MM` of the target (unless ``allow_missing_nerve``); a CT
            that does not overlap the label map.
    """
    from spinect.io import check_output_path

    from spinect.geometry.window import _check_range

    _check_range("theta (--theta, obliquity)", theta_deg, 0.0, 90.0, "degrees")
    _check_range("phi (--phi, cranio-caudal tilt)", phi_deg, -60.0, 60.0, "degrees")
    level = check_choice("level", level, tuple(LEVELS))
    triangle = check_choice("triangle", triangle, TRIANGLES)
    check_choice("side", side, ("left", "right"))
    if sum(x is not None for x in (points_lps_mm, seed_lps_mm)) + bool(auto) != 1:
        raise InputError("give exactly one of: three points (--points), one seed (--seed) or --auto")
    for path in (json_path, heatmap_path):
        if path is not None:
            check_output_path(path)
    from spinect.geometry.session import TriangleSession, check_target

    report = progress or (lambda stage, fraction, message: None)
    mode = "points" if points_lps_mm is not None else "seed" if seed_lps_mm is not None else "auto"
    around = None if auto else next(p for p in check_target(mode, points_lps_mm, seed_lps_mm) if p is not None)
    reach_skin = optimize or (settings is not None and settings.depth_before_mm is None)
    # open + measure (+ optimize): a TriangleSession held open (Slicer, the benchmark) gives the
    # same numbers for the same crop
    session = TriangleSession.open(
        seg, level=level, side=side, triangle=triangle, ct=ct, structures=structures,
        endplate_lps_mm=endplate_lps_mm, frame=frame, around_lps_mm=around, auto=auto, reach_skin=reach_skin,
        allow_missing_nerve=allow_missing_nerve, progress=report,
    )
    target = dict(points_lps_mm=around if mode == "points" else None, seed_lps_mm=around if mode == "seed" else None,
                  upper_line_lps_mm=upper_line_lps_mm, settings=settings)
    measured = session.measure(mode, theta_deg=theta_deg, phi_deg=phi_deg, **target)
    measurement, frame_source = measured.measurement, measured.frame_source
    warnings, nerve_near = measured.warnings, measured.nerve_voxels_near_target
    trajectory = session.optimize(mode, search=search, **target) if optimize else None
    result = TrianglesResult(measurement, trajectory, frame_source, {}, warnings, nerve_near)
    files = _write(result, json_path, heatmap_path)
    report("done", 1.0, "done")
    return TrianglesResult(measurement, trajectory, frame_source, files, warnings, nerve_near)


def _read_labels(source, *, what: str = "label map", any_values: bool = False) -> sitk.Image:
    if isinstance(source, sitk.Image):
        return source
    if any_values:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{what} {path} does not exist; check the path")
        from spinect.io.atomic import full_suffix
        from spinect.io.reading import check_nifti_integrity

        if full_suffix(path) in (".nii", ".nii.gz"):
            check_nifti_integrity(path)
        try:
            return sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"cannot read {what} {path} as an image; give a label image (.nii.gz, .nrrd, .mha)") from exc
    from spinect.io import read_labelmap

    return read_labelmap(source)


def _read_ct(source) -> sitk.Image:
    if isinstance(source, sitk.Image):
        return source
    from spinect.io import read_ct

    return read_ct(source)


def _frame(frame, structures, endplate, points, fields, labels, level, *, triangle: str = "kambin",
           surfaces: dict | None = None) -> tuple[EndplateFrame, str]:
    if frame is not None:
        return frame, "given"
    if structures is not None:
        lower = LEVELS[level][1]
        code = _vertebra_code(lower)
        resampled = sitk.Resample(structures, labels, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        array = sitk.GetArrayViewFromImage(resampled)
        return endplate_frame_from_structures(array, fields.index_to_lps, code), f"level map ({lower} cranial surface)"
    label_array = sitk.GetArrayViewFromImage(labels)
    if endplate is not None:
        pts = np.asarray(endplate, float).reshape(-1, 3)
        if len(pts) >= 3:
            return frame_from_endplate_points(pts), f"plane fit on {len(pts)} endplate points"
        return endplate_frame_near(fields, label_array, pts[0]), "bone surface near the endplate point"
    if points is not None:
        # the lower vertebra's superior endplate, found from the clicks and fitted over the whole
        # endplate (a local fit near B and C was 12-19 deg off on real bone shapes, 78-80 deg at S1)
        from spinect.geometry.endplate import endplate_frame_from_clicks

        pts = np.asarray(points, float).reshape(3, 3)
        frame = endplate_frame_from_clicks(fields, label_array, pts, triangle=triangle, surfaces=surfaces)
        where = "through B and C" if triangle == "kambin" else "below the clicked points"
        return frame, f"bone surface: the endplate {where}, fitted over the whole endplate"
    raise InputError("the endplate is unknown: give --endplate (a point on the lower vertebra's endplate) or --structures")


def _vertebra_code(name: str) -> int:
    from spinect.phantom.structures import STRUCTURE_CODES

    return STRUCTURE_CODES[name]


def _nerve_near_target(labels: sitk.Image, centre_lps_mm: np.ndarray, allow_missing: bool) -> tuple[int, list[str]]:
    """Count nerve voxels (label 2) near the target; refuse (or warn) when there are none."""
    # a copy, not a view: a view of the temporary crop would read freed memory once the crop is
    # collected (seen in CI as phantom nerve voxels in a bone-only label map)
    near = sitk.GetArrayFromImage(crop_around(labels, centre_lps_mm, NERVE_CHECK_RADIUS_MM))
    count = int(np.count_nonzero(near == 2))
    if count:
        return count, []
    message = (f"no nerve is labelled within {NERVE_CHECK_RADIUS_MM:g} mm of the target: the window is bounded by bone "
               "only and is far larger than the real safe window")
    if not allow_missing:
        raise InputError(
            f"{message}. Segment the nerves first (spinect segment), or pass --allow-missing-nerve to measure "
            "against bone alone (flagged in the report)"
        )
    logger.warning("%s", message)
    return count, [message]


def _check_overlap(ct: sitk.Image, labels: sitk.Image) -> None:
    """The CT gives the skin entry point: it must cover the measured region."""
    def box(image: sitk.Image) -> np.ndarray:
        size = np.array(image.GetSize()) - 1
        corners = [image.TransformIndexToPhysicalPoint([int(c) for c in corner])
                   for corner in np.array(np.meshgrid(*[[0, s] for s in size])).T.reshape(-1, 3)]
        return np.array([np.min(corners, axis=0), np.max(corners, axis=0)])

    a, b = box(ct), box(labels)
    if np.any(a[1] < b[0]) or np.any(b[1] < a[0]):
        raise InputError(
            f"the CT (LPS {np.round(a[0], 1).tolist()} .. {np.round(a[1], 1).tolist()} mm) does not overlap the label map "
            f"around the target (LPS {np.round(b[0], 1).tolist()} .. {np.round(b[1], 1).tolist()} mm); pass the CT the "
            "segmentation was made from"
        )


def _write(result: TrianglesResult, json_path, heatmap_path) -> dict[str, Path]:
    from spinect.io import atomic_output

    files: dict[str, Path] = {}
    if heatmap_path is not None and result.trajectory is not None:
        from spinect.geometry.plot import save_objective_heatmap

        files["heatmap_png"] = save_objective_heatmap(result.trajectory, heatmap_path)
    if json_path is not None:
        payload = result.to_dict()
        payload["files"] = {k: str(v) for k, v in files.items()}
        with atomic_output(json_path) as tmp:
            Path(tmp).write_text(json.dumps(payload, indent=2), encoding="utf-8")
        files["json"] = Path(json_path)
    return files
