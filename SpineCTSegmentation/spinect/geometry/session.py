"""A triangle measurement session: open a segmentation once, then measure many views.

What does not depend on the view is done once per session: reading the label map (and the CT and
level map), cropping it around the level, the obstacle distance fields
(:meth:`ObstacleFields.from_image`, the slow step: about 1 s for the 50 mm crop of an
anatomical window, 4-6 s on 2 cores for the 110 mm crop that reaches the skin) and the endplate frame. A
view change (θ, φ), a moved point or the best-view search then only projects the fields
(:meth:`TriangleSession.measure`, :meth:`TriangleSession.optimize`).

:func:`spinect.geometry.measure.measure_triangle` (and so ``spinect triangles``) is
``TriangleSession.open`` + ``measure`` (+ ``optimize``): the same crop, fields and frame give the
same numbers, bit for bit.

Two crops. An anatomical window needs bone and nerve within about 30 mm of the target: it is
always measured on the *local* crop (:data:`LOCAL_ROI_RADIUS_MM` = 50 mm half-size), and the
endplate frame is always fitted there. A reachable window and the view search need them from the
skin: they use the *reach* crop (:data:`ROI_RADIUS_MM` = 110 mm), built at open with
``reach_skin=True`` or the first time one of them asks for it. So a view gives the same numbers
whether or not a search ran before or after it (with and without ``--optimize``), and the search
uses the very frame the measurements use. A crop is rebuilt around a new target when the target
moves more than a quarter of its half-size from its centre (the window then still lies well
inside it); moved points within that distance are measured on the same fields, which differ from
a crop centred on them only by floating-point rounding (relative differences about 1e-7).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import SimpleITK as sitk

from spinect.errors import InputError
from spinect.geometry.frame import EndplateFrame
from spinect.geometry.measure import (
    LOCAL_ROI_RADIUS_MM,
    ROI_RADIUS_MM,
    TrianglesResult,
    _check_overlap,
    _frame,
    _nerve_near_target,
    _read_ct,
    _read_labels,
    crop_around,
)
from spinect.geometry.projection import ObstacleFields
from spinect.geometry.trajectory import SearchSettings, TrajectoryResult, search_trajectory
from spinect.geometry.triangles import LEVELS, TRIANGLES, check_choice, measure_points, measure_seed
from spinect.geometry.window import WindowSettings, _check_range

__all__ = ["TriangleSession", "MODES", "RECROP_FRACTION", "check_target"]

logger = logging.getLogger(__name__)

MODES = ("points", "seed", "auto")
#: The crop is rebuilt when the target moves more than this fraction of its half-size from its centre.
RECROP_FRACTION = 0.25
#: With ``prefetch_reach``, the background build of the reach crop starts after this many seconds
#: without a request (a dragged point sends one every 0.3 s), so it does not slow a drag down.
PREFETCH_IDLE_S = 1.0
#: progress(stage, overall fraction 0..1, message)
ProgressCallback = Callable[[str, float, str], None]


@dataclass(frozen=True)
class _Crop:
    centre_lps_mm: np.ndarray
    radius_mm: float
    labels: sitk.Image
    fields: ObstacleFields
    surfaces: dict = field(default_factory=dict)  # the crop's bone surfaces for frame fits (see _frame)

    def holds(self, centre_lps_mm: np.ndarray, radius_mm: float) -> bool:
        """This crop serves a target at ``centre_lps_mm`` that needs ``radius_mm``."""
        moved = float(np.linalg.norm(np.asarray(centre_lps_mm, float) - self.centre_lps_mm))
        return self.radius_mm >= radius_mm and moved <= RECROP_FRACTION * self.radius_mm


class TriangleSession:
    """One segmentation opened for many triangle measurements (see the module docstring).

    Create it with :meth:`open`. Not thread-safe: one measurement at a time.

    Attributes:
        level, side, triangle: what is measured (fixed for the session).
        labels: the whole label map; structures: the level map or None; ct: the CT or None.
        fields_built: how many times the obstacle fields were built (1 for a session that never
            re-cropped; tests and the benchmark read it); ``fields_prefetched``: those built in
            the background (``prefetch_reach``), not counted in ``fields_built``.
    """

    def __init__(self, labels: sitk.Image, *, level: str, side: str, triangle: str, ct: sitk.Image | None,
                 structures: sitk.Image | None, endplate_lps_mm: np.ndarray | None, frame: EndplateFrame | None,
                 allow_missing_nerve: bool, progress: ProgressCallback | None):
        self.labels = labels
        self.level, self.side, self.triangle = level, side, triangle
        self.ct = ct
        self.structures = structures
        self.endplate_lps_mm = None if endplate_lps_mm is None else np.asarray(endplate_lps_mm, float).reshape(-1, 3)
        self.given_frame = frame
        self.allow_missing_nerve = allow_missing_nerve
        self.progress: ProgressCallback = progress or (lambda stage, fraction, message: None)
        self.fields_built = 0
        self.fields_prefetched = 0  # reach crops built in the background (prefetch_reach)
        self._crops: dict[str, _Crop] = {}  # "local" (anatomical windows, frame), "reach" (search)
        self._auto_points: np.ndarray | None = None
        self._frames: dict[bytes | None, tuple[EndplateFrame, str]] = {}
        self._nerve: dict[tuple, tuple[int, list[str]]] = {}
        self._ct_source = None  # the CT is read when the first crop is built (after the nerve check)
        self.prefetch_reach = False  # build the reach crop in the background once the target is known
        self._reach_lock = threading.Lock()  # one builder of the reach crop at a time
        self._prefetch: threading.Thread | None = None
        self._last_request = time.monotonic()  # the prefetch waits for a pause in the requests

    # ------------------------------------------------------------------------------ open

    @classmethod
    def open(
        cls,
        seg: str | os.PathLike | sitk.Image,
        *,
        level: str,
        side: str,
        triangle: str = "kambin",
        ct: str | os.PathLike | sitk.Image | None = None,
        structures: str | os.PathLike | sitk.Image | None = None,
        endplate_lps_mm: np.ndarray | None = None,
        frame: EndplateFrame | None = None,
        around_lps_mm: np.ndarray | None = None,
        auto: bool = False,
        reach_skin: bool = False,
        allow_missing_nerve: bool = False,
        progress: ProgressCallback | None = None,
        prefetch_reach: bool = False,
    ) -> TriangleSession:
        """Read the images and, when the target is known, crop and build the fields and frame.

        Args:
            seg: label map (0 background, 1 bone, 2 nerve): file (incl. ``.seg.nrrd``) or image.
            level: ``"L4L5"`` or ``"L5S1"``; side: ``"left"``/``"right"``; triangle:
                ``"kambin"``/``"safe"``.
            ct: CT (file or image), for the skin entry of the planned path; optional.
            structures: level map (needed by ``auto`` mode; gives the endplate frame).
            endplate_lps_mm, frame: the endplate (as :func:`measure_triangle`).
            around_lps_mm: (3,) or (N, 3) points near the target (the crop's centre is their
                mean): the clicked points or seed. None with ``auto``: the automatic vertices.
                None otherwise: the fields are built at the first measurement.
            auto: find the vertices from the level map now (they centre the crop).
            reach_skin: also build the reach crop (:data:`ROI_RADIUS_MM`, for reachable windows
                and the view search) now, not at the first search (about 10 times the local
                crop's cost).
            allow_missing_nerve: measure even when no nerve is labelled near the target (flagged).
            progress: called with (stage, overall fraction, message).
            prefetch_reach: once the target is known (at open, or after the first measurement),
                build the reach crop in a background thread, so that a later search or reachable
                window finds it ready (an interactive worker: the user looks at the first views
                meanwhile). The same crop a search would build; a search waits for it.

        Raises:
            InputError: bad level, side, triangle or files; ``auto`` without a level map; no nerve
                near the target (unless allowed); a CT that does not overlap the label map.
        """
        level = check_choice("level", level, tuple(LEVELS))
        triangle = check_choice("triangle", triangle, TRIANGLES)
        side = check_choice("side", side, ("left", "right"))
        report = progress or (lambda stage, fraction, message: None)
        report("read", 0.0, "reading the label map")
        labels = _read_labels(seg)
        structures_image = _read_labels(structures, what="level map", any_values=True) if structures is not None else None
        session = cls(labels, level=level, side=side, triangle=triangle, ct=None, structures=structures_image,
                      endplate_lps_mm=endplate_lps_mm, frame=frame, allow_missing_nerve=allow_missing_nerve,
                      progress=progress)
        session.prefetch_reach = bool(prefetch_reach)
        if auto:
            around_lps_mm = session.auto_points()
        session._ct_source = ct
        if around_lps_mm is not None:
            centre = _centre(around_lps_mm)
            session._nerve_check(centre)
            session._ensure_crop(centre, "local")
            if reach_skin:
                session._reach_crop(centre)
            else:
                session._start_prefetch(centre)
        return session

    # ------------------------------------------------------------------------------ queries

    def auto_points(self) -> np.ndarray:
        """The automatic vertices A, B, C (3, 3) LPS mm from the level map (found once)."""
        if self._auto_points is None:
            if self.structures is None:
                raise InputError("--auto needs a level map (--structures) to find the vertebrae and roots")
            from spinect.geometry.landmarks import auto_landmarks

            self._auto_points = auto_landmarks(self.structures, level=self.level, side=self.side, triangle=self.triangle)
        return self._auto_points

    def fields(self, kind: str = "local") -> ObstacleFields | None:
        """The obstacle fields of the ``"local"`` or ``"reach"`` crop (None before it is built)."""
        crop = self._crops.get(kind)
        return None if crop is None else crop.fields

    def measure(
        self,
        mode: str = "points",
        *,
        theta_deg: float = 0.0,
        phi_deg: float = 0.0,
        points_lps_mm: np.ndarray | None = None,
        seed_lps_mm: np.ndarray | None = None,
        upper_line_lps_mm: np.ndarray | None = None,
        settings: WindowSettings | None = None,
    ) -> TrianglesResult:
        """Measure one view.

        Args:
            mode: ``"points"`` (needs ``points_lps_mm`` (3, 3): A, B, C), ``"seed"`` (needs
                ``seed_lps_mm`` (3,); ``upper_line_lps_mm`` optionally bounds it above) or
                ``"auto"`` (the level map's vertices).
            theta_deg, phi_deg: the view (obliquity 0..90, cranio-caudal tilt -60..60 degrees).
            settings: window sampling (``depth_before_mm=None``: reachable window).

        Returns:
            A :class:`TrianglesResult` without trajectory or files.
        """
        self._last_request = time.monotonic()
        _check_range("theta (--theta, obliquity)", theta_deg, 0.0, 90.0, "degrees")
        _check_range("phi (--phi, cranio-caudal tilt)", phi_deg, -60.0, 60.0, "degrees")
        mode = check_choice("mode", mode, MODES)
        points, seed = self._target(mode, points_lps_mm, seed_lps_mm)
        centre = _centre(points if points is not None else seed)
        nerve_near, warnings = self._nerve_check(centre)
        frame, frame_source = self._frame_for(centre, points)
        reach = settings is not None and settings.depth_before_mm is None
        crop = self._reach_crop(centre) if reach else self._ensure_crop(centre, "local")
        self.progress("measure", 0.2, f"measuring at theta={theta_deg:g}, phi={phi_deg:g}")
        common = dict(triangle=self.triangle, level=self.level, side=self.side, theta_deg=theta_deg, phi_deg=phi_deg,
                      settings=settings)
        if points is not None:
            measurement = measure_points(crop.fields, frame, points, **common)
        else:
            measurement = measure_seed(crop.fields, frame, seed, upper_line_lps_mm=upper_line_lps_mm, **common)
        if mode == "auto":
            measurement = replace(measurement, mode="auto")
        self._start_prefetch(centre)
        return TrianglesResult(measurement, None, frame_source, {}, list(warnings), nerve_near)

    def optimize(
        self,
        mode: str = "points",
        *,
        points_lps_mm: np.ndarray | None = None,
        seed_lps_mm: np.ndarray | None = None,
        upper_line_lps_mm: np.ndarray | None = None,
        settings: WindowSettings | None = None,
        search: SearchSettings | None = None,
    ) -> TrajectoryResult:
        """Search the best view and plan the path, on the session's fields (the large crop).

        Arguments as :meth:`measure` (``settings`` are the final measurement's), plus the search
        settings. The frame is the one :meth:`measure` uses for the same points.
        """
        points, seed = self._target(mode, points_lps_mm, seed_lps_mm)
        centre = _centre(points if points is not None else seed)
        self._nerve_check(centre)
        frame, _ = self._frame_for(centre, points)
        crop = self._reach_crop(centre)
        report = self.progress
        return search_trajectory(
            crop.fields, frame, side=self.side, triangle=self.triangle, level=self.level,
            points_lps_mm=points, seed_lps_mm=seed if points is None else None,
            upper_line_lps_mm=upper_line_lps_mm, search=search, measure=settings,
            progress=lambda done, total: report("search", 0.25 + 0.7 * done / max(total, 1), f"view {done}/{total}"),
        )

    # ------------------------------------------------------------------------------ internals

    def _target(self, mode, points, seed) -> tuple[np.ndarray | None, np.ndarray | None]:
        if check_choice("mode", mode, MODES) == "auto":
            if points is not None or seed is not None:
                raise InputError("auto mode finds the vertices itself; give no points or seed")
            return self.auto_points(), None
        return check_target(mode, points, seed)

    def _nerve_check(self, centre: np.ndarray) -> tuple[int, list[str]]:
        key = tuple(np.round(centre, 6))
        if key not in self._nerve:
            self._nerve[key] = _nerve_near_target(self.labels, centre, self.allow_missing_nerve)
        return self._nerve[key]

    def _reach_crop(self, centre: np.ndarray) -> _Crop:
        """The reach crop around ``centre``: waits for a background build, else builds it."""
        with self._reach_lock:
            return self._ensure_crop(centre, "reach")

    def _start_prefetch(self, centre: np.ndarray) -> None:
        """With ``prefetch_reach``: build the reach crop around ``centre`` in a background thread.

        Most of the build runs in SimpleITK, SciPy and scikit-image code that releases the GIL,
        so measurements go on meanwhile; it starts after a pause of ``PREFETCH_IDLE_S`` in the
        requests (not while the user drags a point), and its distance maps use one ITK thread
        (:func:`spinect.geometry.distance.run_in_background`), leaving a core to the user. It reports no progress (another
        request's stream may be open) and swallows errors: a search that needs the crop builds
        it again and reports them.
        """
        self._last_request = time.monotonic()  # called as a request ends: the pause starts now
        if not self.prefetch_reach or (self._prefetch is not None and self._prefetch.is_alive()):
            return
        crop = self._crops.get("reach")
        if crop is not None and crop.holds(centre, ROI_RADIUS_MM):
            return
        centre = np.asarray(centre, float).copy()

        def build() -> None:
            from spinect.geometry.distance import run_in_background

            run_in_background()  # one core for this, one for the user's next view or point move
            while time.monotonic() - self._last_request < PREFETCH_IDLE_S:  # not while the user drags
                time.sleep(0.1)
            try:
                with self._reach_lock:
                    self._ensure_crop(centre, "reach", quiet=True)
            except Exception as exc:  # noqa: BLE001 - reported by the search that needs the crop
                logger.debug("background reach crop failed: %s", exc)

        self._prefetch = threading.Thread(target=build, name="spinect-reach-crop", daemon=True)
        self._prefetch.start()

    def _ensure_crop(self, centre: np.ndarray, kind: str, *, quiet: bool = False) -> _Crop:
        radius = ROI_RADIUS_MM if kind == "reach" else LOCAL_ROI_RADIUS_MM
        crop = self._crops.get(kind)
        if crop is not None and crop.holds(centre, radius):
            return crop
        labels = crop_around(self.labels, centre, radius)
        if self.ct is None and self._ct_source is not None:
            self.ct = _read_ct(self._ct_source)
        if self.ct is not None:
            _check_overlap(self.ct, labels)
        if not quiet:
            self.progress("distance", 0.05, "signed distance maps of bone and nerve")
        fields = ObstacleFields.from_image(labels, ct=self.ct)
        if quiet:
            self.fields_prefetched += 1
        else:
            self.fields_built += 1
        self._crops[kind] = crop = _Crop(np.asarray(centre, float).copy(), radius, labels, fields)
        if kind == "local":
            self._frames.clear()
        return crop

    def _frame_for(self, centre: np.ndarray, points: np.ndarray | None) -> tuple[EndplateFrame, str]:
        """The endplate frame, always fitted on the local crop (the same with and without a search)."""
        crop = self._ensure_crop(centre, "local")
        uses_points = self.given_frame is None and self.structures is None and self.endplate_lps_mm is None
        key = points.tobytes() if (uses_points and points is not None) else None
        if key not in self._frames:
            if len(self._frames) >= 32:  # points moved many times: forget the oldest frames
                self._frames.pop(next(iter(self._frames)))
            label_points = points if uses_points else None
            self._frames[key] = _frame(self.given_frame, self.structures, self.endplate_lps_mm, label_points,
                                       crop.fields, crop.labels, self.level, triangle=self.triangle,
                                       surfaces=crop.surfaces)
        return self._frames[key]


def check_target(mode: str, points, seed) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(points (3, 3), None) in points mode, (None, seed (3,)) in seed mode; InputError if they do not fit."""
    mode = check_choice("mode", mode, MODES)
    if mode == "points":
        if points is None or seed is not None:
            raise InputError("points mode needs the three vertices A, B, C (--points) and no seed")
        pts = np.asarray(points, float)
        if pts.size != 9 or not np.all(np.isfinite(pts)):
            raise InputError(f"expected 3 finite 3D points (LPS mm); got an array of shape {pts.shape}")
        return pts.reshape(3, 3), None
    if mode == "seed":
        if seed is None or points is not None:
            raise InputError("seed mode needs one seed point (--seed) and no vertices")
        s = np.asarray(seed, float)
        if s.size != 3 or not np.all(np.isfinite(s)):
            raise InputError(f"expected 1 finite 3D seed point (LPS mm); got an array of shape {s.shape}")
        return None, s.reshape(3)
    raise InputError("auto mode takes no points: use TriangleSession.auto_points()")


def _centre(points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, float)
    if pts.size == 0 or pts.size % 3 or not np.all(np.isfinite(pts)):
        raise InputError(f"expected finite 3D points (LPS mm) near the target; got an array of shape {pts.shape}")
    return pts.reshape(-1, 3).mean(axis=0)
