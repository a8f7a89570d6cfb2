"""The lumbosacral column: one frame per vertebra, stacked from the sacrum up.

Body coordinates (mm) are LPS-aligned before the pose: +x left, +y posterior, +z superior,
origin at the centre of the S1 superior endplate. A sagittal tilt ``tau`` (degrees, positive =
the cranial axis leans anteriorly) turns the local axes into lateral ``(1, 0, 0)``, posterior
``(0, cos tau, sin tau)`` and cranial ``(0, -sin tau, cos tau)``. The S1 endplate leans by the
sacral slope; each disc and each wedge-shaped body takes some of it back (the lordosis). Posterior
vertebral walls are aligned (no listhesis).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spinect.phantom.params import PhantomParams
from spinect.phantom.structures import DISC_NAMES, VERTEBRA_NAMES

__all__ = ["VertebraFrame", "Endplate", "tilt_axes", "build_column"]


def tilt_axes(tau_deg: float) -> np.ndarray:
    """(3, 3) rows: lateral, posterior, cranial unit axes for a sagittal tilt ``tau_deg``."""
    t = np.radians(tau_deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), np.sin(t)], [0.0, -np.sin(t), np.cos(t)]])


@dataclass(frozen=True)
class Endplate:
    """A flat endplate: centre (3,) and outward unit normal (3,), body coordinates."""

    centre: np.ndarray
    normal: np.ndarray
    tilt_deg: float


@dataclass(frozen=True)
class VertebraFrame:
    """Where one vertebra sits.

    Attributes:
        name: ``L1`` .. ``L5`` or ``S1``.
        centre: (3,) body-centre, body coordinates (mm).
        axes: (3, 3) rows = lateral, posterior, cranial axes of the body (mean tilt).
        inferior, superior: the endplates (outward normals: caudal, cranial).
    """

    name: str
    centre: np.ndarray
    axes: np.ndarray
    inferior: Endplate
    superior: Endplate

    def point(self, lateral: float, posterior: float, cranial: float) -> np.ndarray:
        """Body coordinates of a point given in this vertebra's frame (mm)."""
        return self.centre + np.array([lateral, posterior, cranial]) @ self.axes

    def local(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) or (3,) body points -> this frame's (lateral, posterior, cranial) coordinates."""
        return (np.asarray(points, float) - self.centre) @ self.axes.T

    def direction(self, lateral: float, posterior: float, cranial: float) -> np.ndarray:
        """Body-coordinate vector of a direction given in this frame."""
        return np.array([lateral, posterior, cranial]) @ self.axes


def _vertebra_above(lower_sup: Endplate, b_lower: float, b_upper: float, disc: tuple[float, float]) -> Endplate:
    """Inferior endplate of the next vertebra up: posterior corners separated by the disc's
    posterior height, tilted back by the disc wedge."""
    post_h, ant_h = disc
    b_mean = 0.5 * (b_lower + b_upper)
    wedge = np.degrees(np.arctan2(ant_h - post_h, 2.0 * b_mean))
    tau_up = lower_sup.tilt_deg - wedge
    mid = tilt_axes(0.5 * (lower_sup.tilt_deg + tau_up))
    corner = lower_sup.centre + b_lower * tilt_axes(lower_sup.tilt_deg)[1] + post_h * mid[2]
    axes_up = tilt_axes(tau_up)
    centre = corner - b_upper * axes_up[1]
    return Endplate(centre, -axes_up[2], tau_up)


def _body(name: str, inferior: Endplate, b: float, h_post: float, h_ant: float) -> VertebraFrame:
    wedge = np.degrees(np.arctan2(h_ant - h_post, 2.0 * b))
    tau_sup = inferior.tilt_deg - wedge
    mid = tilt_axes(0.5 * (inferior.tilt_deg + tau_sup))
    corner = inferior.centre + b * tilt_axes(inferior.tilt_deg)[1] + h_post * mid[2]
    sup_axes = tilt_axes(tau_sup)
    sup = Endplate(corner - b * sup_axes[1], sup_axes[2], tau_sup)
    return VertebraFrame(name, 0.5 * (inferior.centre + sup.centre), mid, inferior, sup)


def build_column(params: PhantomParams) -> tuple[dict[str, VertebraFrame], dict[str, tuple[float, float]]]:
    """Frames of S1 and L5 .. L1 and the disc heights actually used.

    Returns:
        (frames by vertebra name, (posterior, anterior) disc height by disc name). Disc heights
        include a degenerated disc's height loss.
    """
    discs = dict(params.discs)
    degen = params.degeneration
    if degen is not None and degen.disc_height_loss > 0:
        post, ant = discs[degen.level]
        loss = degen.disc_height_loss * post
        discs[degen.level] = (post - loss, ant - 0.5 * loss)
    s1p = params.vertebrae["S1"]
    tau = params.sacral_slope
    s1_sup = Endplate(np.zeros(3), tilt_axes(tau)[2], tau)
    s1_axes = tilt_axes(tau)
    s1_inf = Endplate(-s1p.h_post * s1_axes[2], -s1_axes[2], tau)
    frames = {"S1": VertebraFrame("S1", -0.5 * s1p.h_post * s1_axes[2], s1_axes, s1_inf, s1_sup)}
    lower = "S1"
    for name, disc in zip(reversed(VERTEBRA_NAMES[:-1]), reversed(DISC_NAMES)):
        vp, lp = params.vertebrae[name], params.vertebrae[lower]
        inferior = _vertebra_above(frames[lower].superior, lp.b, vp.b, discs[disc])
        frames[name] = _body(name, inferior, vp.b, vp.h_post, vp.h_ant)
        lower = name
    return frames, discs
