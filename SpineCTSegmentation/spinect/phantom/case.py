"""One phantom case in memory: CT (HU), labels, structure map and truth, from a seed."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk

from spinect.errors import SpinectError
from spinect.profiling import maybe_stage
from spinect.phantom import appearance as A
from spinect.phantom.anatomy import Anatomy, build_anatomy
from spinect.phantom.mesh_anatomy import build_mesh_anatomy
from spinect.phantom.meshes import check_anatomy, sample_mesh_params
from spinect.phantom.osteophytes import sample_marginal
from spinect.phantom.params import sample_params
from spinect.phantom.render import Grid, make_grid, rasterise, supersampling_factors
from spinect.phantom.structures import STRUCTURE_CODES, VERTEBRA_NAMES, labels_from_structures
from spinect.phantom.surroundings import add_metal_artefacts, apply_circular_fov, apply_surrounding_values, surrounding_values
from spinect.phantom.thorax import DEFAULT_FIELD, FIELDS, attach_thorax, build_thorax, check_field, thorax_values
from spinect.phantom.structures import THORAX_STRUCTURES
from spinect.phantom.truth import build_truth
from spinect.phantom.warps import sample_arch_warps

__all__ = ["PhantomCase", "generate_case", "case_seed", "check_grid", "DEFAULT_SHAPE_ZYX", "PHANTOM_VERSION", "FIELDS"]

#: Bumped whenever the same seed would give a different case.
PHANTOM_VERSION = "14"
#: Default grid: 200 x 300 x 300 voxels at 1 mm hold L2-S3, both iliac crests and most of the body.
DEFAULT_SHAPE_ZYX = (200, 300, 300)


@dataclass
class PhantomCase:
    """One generated case.

    Attributes:
        seed: the case seed.
        ct: int16 CT in HU (identity direction, LPS).
        labels: UInt8 SPINECT labels (0 background, 1 bone, 2 nerve) on the same grid.
        structures: UInt8 structure codes (:data:`spinect.phantom.STRUCTURE_CODES`).
        truth: landmarks and metadata (the ``case_XXX_truth.json`` content).
        anatomy: the implicit geometry (body coordinates) for exact queries.
        grid: the output grid and pose.
    """

    seed: int
    ct: sitk.Image
    labels: sitk.Image
    structures: sitk.Image
    truth: dict[str, Any]
    anatomy: Anatomy = field(repr=False)
    grid: Grid = field(repr=False)


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a run started with ``seed`` (independent, reproducible)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def check_grid(shape_zyx: Sequence[int], spacing_zyx_mm: Sequence[float]) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Validated (shape, spacing) of a phantom grid.

    Raises:
        SpinectError: not 3 values, a size below 8 voxels or a spacing outside 0.1-10 mm.
    """
    shape = tuple(int(v) for v in shape_zyx)
    spacing = tuple(float(v) for v in spacing_zyx_mm)
    if len(shape) != 3 or min(shape) < 8:
        raise SpinectError(f"phantom shape must be 3 integers >= 8 (D H W), got {tuple(shape_zyx)}")
    if len(spacing) != 3 or not all(0.1 <= s <= 10.0 for s in spacing):
        raise SpinectError(f"phantom spacing must be 3 values in 0.1-10 mm (z y x), got {tuple(spacing_zyx_mm)}")
    return shape, spacing  # type: ignore[return-value]


def _image(array: np.ndarray, grid: Grid) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(grid.spacing_zyx_mm)))
    image.SetOrigin(grid.origin_xyz_mm)
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image


def generate_case(
    seed: int,
    *,
    shape_zyx: Sequence[int] = DEFAULT_SHAPE_ZYX,
    spacing_zyx_mm: Sequence[float] = (1.0, 1.0, 1.0),
    randomise_appearance: bool = False,
    degeneration: bool | None = None,
    supersample: int = 1,
    noise: bool = True,
    window_tables: bool = True,
    progress: Callable[[float], None] | None = None,
    appearance: str | None = None,
    appearance_overrides: dict[str, Any] | None = None,
    surroundings: bool = True,
    anatomy: str = "mesh",
    metal: bool | None = None,
    field: str = DEFAULT_FIELD,
    timer=None,
) -> PhantomCase:
    """Generate one phantom case.

    Args:
        seed: case seed; the same seed and :data:`PHANTOM_VERSION` give the same case. Anatomy
            does not depend on the grid, so one seed on two grids is one patient scanned twice.
        shape_zyx: grid size (Z, Y, X); the field of view is centred on the L4-S1 region.
        spacing_zyx_mm: voxel size (z, y, x) in mm; thick slices get sub-slice averaging.
        randomise_appearance: legacy switch; True means ``appearance="random"``.
        degeneration: True = always one degenerated level, False = never, None = 30 % of cases.
        supersample: odd in-plane supersampling factor of the partial-volume model (1 is fast;
            3 is closer to the continuous image).
        noise: False gives a noise-free and blur-free image (tests of tissue values).
        window_tables: compute the unobstructed-window tables of the truth (ray casting).
        progress: optional callback receiving the fraction done (0-1).
        appearance: ``"ct"`` (default: CT-realistic marrow, thin cortex, kernels, offset),
            ``"v1"`` (the first physical mode, reproduces old cases) or ``"random"``
            (SynthSeg-style randomised intensities); see :mod:`spinect.phantom.appearance`.
        appearance_overrides: ``ct`` mode only, e.g. ``{"marrow_hu": (10, 110)}``,
            ``{"kernel": "sharp"}``, ``{"iv_contrast": True}`` (:data:`appearance.OVERRIDE_KEYS`).
        surroundings: ribs, femoral heads, liver, kidneys, oral/IV contrast, CT table, metal
            screws with streaks and a circular field of view, drawn per case
            (:mod:`spinect.phantom.surroundings`); False gives the version-1 anatomy.
        anatomy: ``"mesh"`` (default, phantom v2: real bone shapes, :mod:`spinect.phantom.meshes`)
            or ``"primitive"`` (bones made of geometric primitives, the first phantom's skeleton).
        metal: with ``surroundings``: True = always pedicle screws and rods (stress tests),
            False = never, None = drawn per case (10 %).
        field: ``"lumbosacral"`` (default: the field of view centred on L4-S1, no thorax),
            ``"thoracolumbar"`` (centred on T12/L1) or ``"chest"`` (centred on T7/T8): these two
            add the thorax (T1-T12, ribs 1-12, costal cartilage, sternum, lungs, heart,
            mediastinum; :mod:`spinect.phantom.thorax`) from a random stream of its own, so the
            lumbosacral anatomy of a seed is the same in every field.
        timer: optional :class:`spinect.profiling.StageTimer`: seconds per generation stage
            (``benchmarks/bench_phantom.py`` prints them).

    Returns:
        The case, with CT, labels and structure map on the same grid and the truth dict.

    Raises:
        SpinectError: invalid shape, spacing, supersampling factor, appearance, override or
            anatomy or field, or unreadable bone data.
    """
    field_name = check_field(field)
    anatomy_kind = check_anatomy(anatomy)
    if metal is not None and not isinstance(metal, (bool, np.bool_)):
        raise SpinectError(f"metal must be True, False or None, not {metal!r}")
    if metal and not surroundings:
        raise SpinectError("metal=True needs surroundings=True (screws and rods are part of the surroundings)")
    shape, spacing = check_grid(shape_zyx, spacing_zyx_mm)
    mode = A.appearance_mode(appearance, randomise_appearance)
    A.check_overrides(appearance_overrides)
    try:
        supersampling_factors(spacing, supersample)
    except ValueError as exc:
        raise SpinectError(str(exc)) from exc
    # spawn(5)'s first three streams equal spawn(3)'s: geometry, appearance and noise as in version 1
    geo_ss, look_ss, noise_ss, sur_ss, tex_ss = np.random.SeedSequence(int(seed)).spawn(5)
    geo_rng, look_rng, noise_rng, sur_rng, tex_rng = (np.random.default_rng(s) for s in (geo_ss, look_ss, noise_ss, sur_ss, tex_ss))
    with maybe_stage(timer, "anatomy"):
        if anatomy_kind == "mesh":
            params = sample_mesh_params(geo_rng, degeneration=degeneration)
            params = _with_osteophytes_and_arch_warps(params, seed, look_ss)
            anatomy = build_mesh_anatomy(params, geo_rng, surroundings=surroundings, metal=metal)
        else:
            params = sample_params(geo_rng, degeneration=degeneration)
            anatomy = build_anatomy(params, geo_rng, surroundings=surroundings, metal=metal)
        thorax = None
        if field_name != DEFAULT_FIELD:
            # a sixth stream (spawn(6)'s first five equal spawn(5)'s): the default case is unchanged
            th_rng = np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(6)[5])
            thorax = build_thorax(anatomy, field_name, th_rng)
            attach_thorax(anatomy, thorax)
        grid = make_grid(anatomy, shape, spacing, None if thorax is None else thorax.anchor())  # thorax: T12/L1 or T7/T8
    sur = anatomy.surroundings
    overrides = dict(appearance_overrides or {})
    if mode == "ct" and sur is not None and sur.iv_contrast:
        overrides.setdefault("iv_contrast", True)
    with maybe_stage(timer, "appearance draw"):
        look = A.sample_look(mode, look_rng, spacing, overrides or None)
        if mode != "random" and sur is not None:
            apply_surrounding_values(look.values.table, surrounding_values(sur, sur_rng))
        if thorax is not None and mode != "random":
            iv = bool(overrides.get("iv_contrast", False)) or (sur is not None and sur.iv_contrast)
            thorax_values(th_rng, iv, look.values.table)
    report = (lambda f: progress(0.8 * f)) if progress else None
    structures, hu = rasterise(anatomy, grid, look.values, noise_rng, supersample=supersample, progress=report,
                               texture_rng=tex_rng, timer=timer)
    with maybe_stage(timer, "scanner: metal streaks, kernel, noise, offset, field of view"):
        if sur is not None and sur.metal_levels and noise:
            add_metal_artefacts(hu, structures, spacing, sur_rng)
        hu = look.finish(hu, structures, spacing, noise_rng, noise=noise)
        if sur is not None and sur.fov_fraction is not None:
            apply_circular_fov(hu, structures, spacing, sur.fov_fraction)
    with maybe_stage(timer, "labels and truth (triangles, tables, window)"):
        labels = labels_from_structures(structures)
        truth = _truth(seed, anatomy, grid, labels if window_tables else None, look, noise, thorax)
    if progress:
        progress(1.0)
    return PhantomCase(int(seed), _image(A.to_int16(hu), grid), _image(labels, grid), _image(structures, grid), truth, anatomy, grid)


def _with_osteophytes_and_arch_warps(params, seed: int, look_ss: np.random.SeedSequence):
    """``params`` with the case's marginal osteophytes (``extras['osteophytes']``), the warps of
    its L1-L5 arches (``extras['arch_warp']``, :mod:`spinect.phantom.warps`) and its facet joint
    space (``extras['facet_gap_mm']``), drawn from a
    seventh stream (``spawn(7)``'s first six are the streams above and the thorax's), so every
    other draw of the case is unchanged. Their prevalence follows the patient's age: the age the
    ``ct`` appearance draws first from the appearance stream (read from a copy of it). The
    anatomy does not depend on the appearance: every mode, and an ``age_years`` override (which
    changes the look only), gives the same osteophytes."""
    ost_rng = np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(7)[6])
    age = A.sample_age(np.random.default_rng(look_ss))
    osteophytes = sample_marginal(ost_rng, age)
    warps = sample_arch_warps(ost_rng, [n for n in VERTEBRA_NAMES if n != "S1"])  # drawn after the osteophytes
    # the facet joints' space (CT: about 1-2 mm; it was 1 mm in every case, which blinded readers saw as
    # arches fused into one blob), drawn after the warps
    gap_mm = round(float(ost_rng.uniform(1.0, 2.0)), 3)
    return replace(params, extras={**params.extras, "osteophytes": osteophytes, "arch_warp": warps,
                                   "facet_gap_mm": gap_mm})


def _truth(seed, anatomy: Anatomy, grid: Grid, labels, look: A.Look, noise: bool, thorax=None) -> dict[str, Any]:
    truth: dict[str, Any] = {
        "format": "spinect-phantom-truth", "phantom_version": PHANTOM_VERSION, "seed": int(seed),
        "coordinate_system": "LPS", "units": "mm",
        "grid": {"shape_zyx": list(grid.shape_zyx), "spacing_zyx_mm": list(grid.spacing_zyx_mm),
                 "origin_xyz_mm": [round(v, 6) for v in grid.origin_xyz_mm], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
        "pose": {"rotation_body_to_world": np.round(grid.rotation, 9).tolist(), "translation_mm": grid.translation.tolist(),
                 "rotation_deg_xyz": list(anatomy.params.rotation_deg)},
        "label_values": {"background": 0, "bone": 1, "nerve": 2},
        # a default case lists the codes it can hold, as before the thorax (bit-identical truth)
        "structure_codes": dict(STRUCTURE_CODES) if thorax is not None else
        {k: v for k, v in STRUCTURE_CODES.items() if k not in THORAX_STRUCTURES},
        "appearance": look.record(noise=noise),
        "parameters": anatomy.params.to_dict(),
        "surroundings": None if anatomy.surroundings is None else anatomy.surroundings.to_dict(),
        "soft_tissue_geometry": None if anatomy.soft is None else anatomy.soft.to_dict(),
    }
    if thorax is not None:  # absent in default cases: "field" is then "lumbosacral"
        truth["field"] = thorax.settings.field
        truth["thorax"] = thorax.to_dict()
    truth.update(build_truth(anatomy, grid, labels=labels))
    return truth
