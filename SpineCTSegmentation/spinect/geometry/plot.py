"""Pictures of triangle results: the objective heat map over (θ, φ) and the window in one view."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spinect.io.atomic import atomic_output

__all__ = ["save_objective_heatmap", "save_window_figure"]


def save_objective_heatmap(result, path: str | os.PathLike) -> Path:
    """Write a PNG of J(θ, φ) and J_rob(θ, φ) with the chosen view marked.

    Args:
        result: a :class:`spinect.geometry.trajectory.TrajectoryResult`.
        path: PNG file (written atomically).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit = "mm" if result.objective == "radius" else "mm²"
    label = "r* (inscribed radius)" if result.objective == "radius" else "usable area"
    thetas, phis = result.theta_grid_deg, result.phi_grid_deg
    step_t = thetas[1] - thetas[0] if len(thetas) > 1 else 1.0
    step_p = phis[1] - phis[0] if len(phis) > 1 else 1.0
    extent = (thetas[0] - step_t / 2, thetas[-1] + step_t / 2, phis[0] - step_p / 2, phis[-1] + step_p / 2)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    for ax, data, title in (
        (axes[0], result.objective_map, f"{label}, {unit}"),
        (axes[1], result.robust_map, f"robust (min over ±2.5° neighbours), {unit}"),
    ):
        image = ax.imshow(data, origin="lower", extent=extent, aspect="auto", cmap="viridis")
        ax.plot(result.theta_deg, result.phi_deg, marker="*", color="red", markersize=14, markeredgecolor="white")
        ax.set_xlabel("θ obliquity from PA (deg, towards target side)")
        ax.set_ylabel("φ cranio-caudal tilt (deg, 0 = endplate squared)")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax)
    m = result.measurement
    fig.suptitle(
        f"{m.triangle} {m.level} {m.side}: best θ={result.theta_deg:.1f}°, φ={result.phi_deg:.1f}° "
        f"(C-arm oblique {result.carm['oblique_deg']:.1f}°, tilt {result.carm['tilt_deg']:.1f}°)",
        fontsize=10,
    )
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def save_window_figure(window, measurement, path: str | os.PathLike) -> Path:
    """Write a PNG of the clearance image of one view with the free outline and r* circle.

    Args:
        window: the :class:`spinect.geometry.window.BoundedWindow` measured.
        measurement: the :class:`spinect.geometry.results.TriangleMeasurement`.
        path: PNG file (written atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = window.image
    fig, ax = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
    u, v = image.u_mm, image.v_mm
    blocked = np.where(image.bone_mm < 0, 1.0, np.nan)
    nerve = np.where(image.nerve_mm < 0, 1.0, np.nan)
    extent = (u[0], u[-1], v[0], v[-1])
    ax.imshow(blocked, origin="lower", extent=extent, cmap="Greys", vmin=0, vmax=1.5, alpha=0.8)
    ax.imshow(nerve, origin="lower", extent=extent, cmap="autumn", vmin=0, vmax=1, alpha=0.7)
    for outline in measurement.outlines_lps_mm:
        uv, _ = window.view.project(outline, window.origin_lps_mm)
        ax.plot(*np.vstack([uv, uv[:1]]).T, color="tab:green", lw=1.5)
    if window.triangle_uv_mm is not None:
        tri = np.vstack([window.triangle_uv_mm, window.triangle_uv_mm[:1]])
        ax.plot(*tri.T, color="tab:blue", lw=1, ls="--")
    if measurement.inscribed_centre_lps_mm is not None:
        c, _ = window.view.project(measurement.inscribed_centre_lps_mm, window.origin_lps_mm)
        r = measurement.value("inscribed_radius_mm") or 0.0
        ax.add_patch(plt.Circle(c, r, fill=False, color="tab:red", lw=1.2))
    area = measurement.value("free_area_mm2")
    ax.set_title(
        f"{measurement.triangle} {measurement.level} {measurement.side}, θ={window.view.theta_deg:.1f}° "
        f"φ={window.view.phi_deg:.1f}°\nfree area {'unbounded' if area is None else f'{area:.1f} mm²'}",
        fontsize=9,
    )
    ax.set_xlabel("u (mm)")
    ax.set_ylabel("v (mm, cranial)")
    ax.set_aspect("equal")
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
