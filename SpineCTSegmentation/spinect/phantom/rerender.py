"""A new CT image from a phantom's structure map, in torch, on any device (SynthSeg-style re-rendering).

Making a phantom's anatomy and its partial-volume image takes seconds per case on one core
(``benchmarks/bench_phantom.py``); its structure map (``case_XXX_structures.nii.gz``: a code per
voxel for every bone, disc, root and soft tissue) is enough to paint many more images of the same
labelled anatomy. This module paints one in a few tensor operations, so training can re-render
every patch it draws (``spinect train --rerender P``) on the CPU or on the GPU that trains:

1. a value per structure code: in ``ct`` mode from the physical HU ranges of its tissue
   (:data:`spinect.phantom.appearance.HU_RANGES` and the surroundings' and thorax's ranges;
   IV contrast in 30 % of draws); in ``random`` mode from the wide CT-aware priors
   (:data:`~spinect.phantom.appearance.RANDOM_PRIORS`) or from anything (-950..1600 HU), every
   code independently (SynthSeg);
2. bone sub-regions: a marrow value per bone (``ct``: the age model of the phantom, -50..350 HU),
   the bone's outer voxel layer as cortex (the partial-volume rim of a 0.3-0.8 mm shell, 250-900
   HU in ``ct``), and marrow islands (fatty or sclerotic) from a thresholded smooth field;
3. texture: a smooth Gaussian field per voxel scaled by a per-code SD (trabecular bone 25-70 HU);
4. the scanner: a Gaussian point-spread (in-plane 0.35-0.8 mm) and slice profile (slice
   thickness 0.6-5 mm as FWHM), an optional sharp-kernel overshoot (unsharp mask), correlated
   noise (SD 8-60 HU, log-uniform: the real chest CT reads 14-16 HU in muscle, the real lumbar
   crop 62 HU) and a calibration offset of +-30 HU; ``random`` mode adds a multiplicative bias
   field and a gamma, and maps the result back to a CT-like range.

What it cannot do, and why the full generator stays the source of truth: the structure map holds
no sub-voxel geometry, so edges are the voxel staircase blurred by the point-spread (the
generator draws partial volume from the signed distances), and there are no metal streaks, beam
hardening, soft-tissue texture fields or ligamentum flavum. Labels are the structure map's
(:func:`spinect.phantom.structures.labels_from_structures`): re-rendering never changes them.

Arrays are (Z, Y, X); spacing is (z, y, x) mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from spinect.errors import SpinectError
from spinect.phantom.appearance import HU_RANGES, MARROW_LIMITS_HU, _random_prior, marrow_mean_hu, sample_age
from spinect.phantom.structures import BONE_CODES, STRUCTURE_TISSUE, TISSUE_FALLBACK
from spinect.phantom.surroundings import SURROUNDING_HU_RANGES
from spinect.phantom.thorax import THORAX_HU_RANGES

__all__ = ["RERENDER_MODES", "RenderDraw", "draw_render", "render_structures", "rerender_ct", "smooth_noise_torch"]

#: ``ct``: physical values and a CT scanner; ``random``: SynthSeg-style random values, bias and gamma;
#: ``mixed``: either, with equal chance, per draw.
RERENDER_MODES: tuple[str, ...] = ("ct", "random", "mixed")

#: Share of ``ct`` draws with IV contrast (vessels, kidneys, liver and heart enhance).
IV_CONTRAST_SHARE = 0.3
#: Share of ``ct`` draws with thick slices (2-5 mm); the others are 0.6-1.5 mm.
THICK_SLICE_SHARE = 0.35
#: Share of ``ct`` draws with a sharp kernel's overshoot.
SHARP_KERNEL_SHARE = 0.3

_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))
_BONE = np.zeros(256, bool)
_BONE[list(BONE_CODES)] = True

# Physical HU range per tissue class (ct mode): the generator's, plus what the surroundings and
# thorax add; "*_contrast" entries replace their tissue under IV contrast.
_CT_RANGES: dict[str, tuple[float, float]] = {
    **{k: v for k, v in HU_RANGES.items() if k not in ("bone", "cancellous")},
    **SURROUNDING_HU_RANGES, **THORAX_HU_RANGES,
}
_CONTRAST = {"blood": "blood_contrast", "kidney": "kidney_contrast", "liver": "liver_contrast",
             "myocardium": "myocardium_contrast"}


@dataclass(frozen=True)
class RenderDraw:
    """What one re-rendering draws (the record of an image).

    Attributes:
        mode: ``ct`` or ``random``.
        table_hu: (256,) float32 value per structure code; bone codes hold their marrow value.
        cortex_hu: value of the bones' outer voxel layer.
        island_fraction / island_hu / island_mm: share of the bone interior that is marrow
            islands, their value, and the correlation length of the field that places them.
        texture_sd_hu: (256,) float32 SD of the texture per code; texture_mm its correlation (sigma).
        psf_sigma_zyx_mm: Gaussian point-spread and slice profile (sigma, mm).
        sharpen: unsharp-mask amount (0: smooth kernel).
        noise_sd_hu: noise SD (``ct``: HU; ``random``: of the [0, 1] image); noise_sigma_vox its
            in-plane correlation (voxels).
        offset_hu: calibration offset (``ct``).
        iv_contrast: whether the ``ct`` values are enhanced.
        bias_amplitude / bias_mm / gamma / range_hu: ``random`` mode's multiplicative bias field
            (log-amplitude, correlation sigma), gamma, and the (floor, span) the image is mapped to.
    """

    mode: str
    table_hu: np.ndarray
    cortex_hu: float
    island_fraction: float
    island_hu: float
    island_mm: float
    texture_sd_hu: np.ndarray
    texture_mm: float
    psf_sigma_zyx_mm: tuple[float, float, float]
    sharpen: float
    noise_sd_hu: float
    noise_sigma_vox: float
    offset_hu: float = 0.0
    iv_contrast: bool = False
    bias_amplitude: float = 0.0
    bias_mm: float = 60.0
    gamma: float = 1.0
    range_hu: tuple[float, float] = (-1024.0, 3000.0)


def _check_mode(mode: str) -> str:
    if mode not in RERENDER_MODES:
        raise SpinectError(f"unknown re-rendering mode {mode!r}: use one of {', '.join(RERENDER_MODES)}")
    return mode


def _ct_range(tissue: str, iv_contrast: bool) -> tuple[float, float]:
    if iv_contrast and tissue in _CONTRAST:
        return _CT_RANGES[_CONTRAST[tissue]]
    if tissue in _CT_RANGES:
        return _CT_RANGES[tissue]
    return _CT_RANGES[TISSUE_FALLBACK[tissue]]


def draw_render(rng: np.random.Generator, mode: str = "ct") -> RenderDraw:
    """Draw one image's values, bone sub-regions, texture and scanner.

    Args:
        rng: the draw's random stream. mode: ``ct``, ``random`` or ``mixed`` (:data:`RERENDER_MODES`).

    Raises:
        SpinectError: unknown mode.
    """
    if _check_mode(mode) == "mixed":
        mode = "ct" if rng.random() < 0.5 else "random"
    table = np.zeros(256, np.float32)
    sd = np.zeros(256, np.float32)
    codes = sorted(STRUCTURE_TISSUE)
    if mode == "ct":
        iv = bool(rng.random() < IV_CONTRAST_SHARE)
        for code in codes:
            tissue = STRUCTURE_TISSUE[code]
            if tissue != "bone":
                table[code] = rng.uniform(*_ct_range(tissue, iv))
                sd[code] = rng.uniform(5.0, 15.0) if tissue == "fat" else rng.uniform(3.0, 12.0)
        mean = float(np.clip(marrow_mean_hu(sample_age(rng)) + 40.0 * rng.standard_normal(), *MARROW_LIMITS_HU))
        for code in BONE_CODES:
            table[code] = np.clip(mean + rng.normal(0.0, 15.0), *MARROW_LIMITS_HU)
            sd[code] = rng.uniform(25.0, 70.0)
        sclerotic = rng.random() < 0.3
        thick = rng.random() < THICK_SLICE_SHARE
        slice_mm = rng.uniform(2.0, 5.0) if thick else rng.uniform(0.6, 1.5)
        psf_xy = rng.uniform(0.35, 0.8)
        return RenderDraw(
            mode="ct", table_hu=table, cortex_hu=float(rng.uniform(250.0, 900.0)),
            island_fraction=float(rng.uniform(0.0, 0.15)),
            island_hu=float(rng.uniform(400.0, 800.0) if sclerotic else rng.uniform(-100.0, 60.0)),
            island_mm=float(rng.uniform(1.5, 4.0)), texture_sd_hu=sd, texture_mm=float(rng.uniform(0.6, 1.5)),
            psf_sigma_zyx_mm=(float(math.hypot(slice_mm / _FWHM, psf_xy)), float(psf_xy), float(psf_xy)),
            sharpen=float(rng.uniform(0.3, 1.0)) if rng.random() < SHARP_KERNEL_SHARE else 0.0,
            noise_sd_hu=float(math.exp(rng.uniform(math.log(8.0), math.log(60.0)))),
            noise_sigma_vox=float(rng.uniform(0.4, 0.9)), offset_hu=float(rng.uniform(-30.0, 30.0)), iv_contrast=iv,
        )
    ct_aware = bool(rng.random() < 0.5)
    for code in codes:
        tissue = STRUCTURE_TISSUE[code]
        table[code] = rng.uniform(*(_random_prior(tissue) if ct_aware else (-950.0, 1600.0)))
        sd[code] = rng.uniform(0.0, 60.0)
    for code in BONE_CODES:
        table[code] = rng.uniform(-250.0, 600.0) if ct_aware else rng.uniform(-950.0, 1600.0)
    sigma = rng.uniform(0.3, 1.5, 3)
    return RenderDraw(
        mode="random", table_hu=table, cortex_hu=float(rng.uniform(150.0, 2000.0) if ct_aware else rng.uniform(-950.0, 1600.0)),
        island_fraction=float(rng.uniform(0.0, 0.3)), island_hu=float(rng.uniform(-500.0, 800.0)),
        island_mm=float(rng.uniform(2.0, 8.0)), texture_sd_hu=sd, texture_mm=float(rng.uniform(0.5, 3.0)),
        psf_sigma_zyx_mm=(float(sigma[0]), float(sigma[1]), float(sigma[2])),
        sharpen=float(rng.uniform(0.3, 1.5)) if rng.random() < 0.4 else 0.0,
        noise_sd_hu=float(rng.uniform(0.0, 0.03)), noise_sigma_vox=float(rng.uniform(0.0, 0.8)),
        bias_amplitude=float(rng.uniform(0.0, 0.25)), bias_mm=float(rng.uniform(40.0, 100.0)),
        gamma=float(math.exp(rng.uniform(math.log(0.6), math.log(1.7)))),
        range_hu=(float(rng.uniform(-1024.0, -900.0)), float(rng.uniform(1500.0, 4000.0))),
    )


def _gaussian_blur(x: torch.Tensor, sigma_vox: Sequence[float], truncate: float = 3.0) -> torch.Tensor:
    """Separable Gaussian filter of a (Z, Y, X) float tensor (edges replicated); sigmas below 0.1 voxel skip that axis.

    Written as shifted in-place adds: on one CPU core that is 5-15x faster than torch's ``conv3d``
    / ``conv1d`` with a one-dimensional kernel (and than padding a copy), and it runs unchanged on a GPU.
    """
    y = x
    for axis, s in enumerate(sigma_vox):
        if s < 0.1:
            continue
        r = max(1, int(truncate * s + 0.5))
        weights = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
        weights /= weights.sum()
        n = y.shape[axis]
        x, y = y, y * float(weights[r])
        for j in range(1, r + 1):  # the two neighbours at distance j; beyond the ends, the end value
            w = float(weights[r + j])
            if j < n:
                y.narrow(axis, 0, n - j).add_(x.narrow(axis, j, n - j), alpha=w)
                y.narrow(axis, j, n - j).add_(x.narrow(axis, 0, n - j), alpha=w)
            k = min(j, n)
            y.narrow(axis, n - k, k).add_(x.narrow(axis, n - 1, 1), alpha=w)
            y.narrow(axis, 0, k).add_(x.narrow(axis, 0, 1), alpha=w)
    return y


def smooth_noise_torch(shape_zyx: Sequence[int], sigma_vox: Sequence[float] | float, generator: torch.Generator,
                       *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Zero-mean, unit-SD Gaussian-correlated noise (float32 (Z, Y, X)) on ``device``.

    Correlation lengths of several voxels are drawn on a coarser grid (steps of up to sigma / 1.5)
    and upsampled trilinearly, which costs a fraction of filtering the full grid.
    """
    shape = [int(n) for n in shape_zyx]
    sigma = np.broadcast_to(np.asarray(sigma_vox, float), (3,))
    step = np.clip(np.floor(sigma / 1.5), 1, 16).astype(int)
    coarse = [-(-n // int(s)) + 2 for n, s in zip(shape, step)]
    field = torch.randn(coarse, generator=generator, device=device, dtype=torch.float32)
    field = _gaussian_blur(field, sigma / step)
    if np.any(step > 1):
        size = [c * int(s) for c, s in zip(coarse, step)]
        field = F.interpolate(field[None, None], size=size, mode="trilinear", align_corners=True)[0, 0]
    field = field[: shape[0], : shape[1], : shape[2]]
    return (field - field.mean()) / field.std().clamp_min(1e-6)


def _erode(mask: torch.Tensor) -> torch.Tensor:
    """Erosion of a bool (Z, Y, X) mask by a 3 x 3 x 3 box (three 1-D erosions); voxels beyond the
    array count as inside, so a patch's border is not drawn as cortex."""
    m = mask
    for axis in range(3):
        n = m.shape[axis]
        edge = torch.ones_like(m.narrow(axis, 0, 1))
        padded = torch.cat([edge, m, edge], dim=axis)
        m = padded.narrow(axis, 0, n) & padded.narrow(axis, 1, n) & padded.narrow(axis, 2, n)
    return m


def render_structures(
    structures_zyx: np.ndarray | torch.Tensor,
    spacing_zyx_mm: Sequence[float],
    draw: RenderDraw,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    scanner: bool = True,
) -> torch.Tensor:
    """Paint one image of a structure map with the values ``draw`` holds.

    Args:
        structures_zyx: (Z, Y, X) structure codes (uint8 array or integer tensor).
        spacing_zyx_mm: voxel size (z, y, x), mm.
        draw: from :func:`draw_render`.
        generator: torch generator on ``device`` for the noise fields (None: torch's default).
        device: where to paint (default: the tensor's device, or CPU).
        scanner: False gives the ideal image: the values, cortex and islands only (no texture,
            point-spread, noise, offset, bias or gamma).

    Returns:
        (Z, Y, X) float32 tensor in HU, clipped to [-1024, 3071].
    """
    codes = torch.as_tensor(structures_zyx)
    if codes.ndim != 3 or min(codes.shape) < 1:
        raise SpinectError(f"a structure map must be a non-empty (Z, Y, X) array, got shape {tuple(codes.shape)}")
    spacing = np.asarray(spacing_zyx_mm, float)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise SpinectError(f"spacing must be 3 positive sizes in mm (z, y, x), got {list(np.ravel(spacing_zyx_mm))}")
    device = torch.device(device) if device is not None else codes.device
    codes = codes.to(device=device, dtype=torch.long)
    shape = tuple(codes.shape)
    table = torch.as_tensor(draw.table_hu, device=device)
    image = table[codes]
    bone = torch.as_tensor(_BONE, device=device)[codes]
    if bool(bone.any()):
        interior = bone & _erode(bone)
        image = torch.where(bone & ~interior, torch.tensor(draw.cortex_hu, device=device), image)
        if draw.island_fraction > 0 and bool(interior.any()):
            field = smooth_noise_torch(shape, draw.island_mm / spacing, generator, device=device)
            inside = field[interior]
            inside = inside[:: max(1, inside.numel() // 200_000)]  # torch.quantile takes at most 16 M values
            cut = torch.quantile(inside, 1.0 - draw.island_fraction)
            image = torch.where(interior & (field > cut), torch.tensor(draw.island_hu, device=device), image)
    if not scanner:
        return image.clamp_(-1024.0, 3071.0)
    texture = smooth_noise_torch(shape, draw.texture_mm / spacing, generator, device=device)
    image = image + texture * torch.as_tensor(draw.texture_sd_hu, device=device)[codes]
    image = _gaussian_blur(image, np.asarray(draw.psf_sigma_zyx_mm) / spacing)
    if draw.sharpen > 0:  # a sharp kernel's overshoot at edges
        image = image + draw.sharpen * (image - _gaussian_blur(image, 1.0 / spacing))
    if draw.mode == "ct":
        noise = smooth_noise_torch(shape, (0.3, draw.noise_sigma_vox, draw.noise_sigma_vox), generator, device=device)
        image = image + draw.noise_sd_hu * noise + draw.offset_hu
        return image.clamp_(-1024.0, 3071.0)
    lo, hi = image.min(), image.max()
    x = (image - lo) / (hi - lo).clamp_min(1.0)
    if draw.bias_amplitude > 0:
        x = x * torch.exp(draw.bias_amplitude * smooth_noise_torch(shape, draw.bias_mm / spacing, generator, device=device))
    x = x.clamp_min(0.0) ** draw.gamma
    if draw.noise_sd_hu > 0:
        x = x + draw.noise_sd_hu * smooth_noise_torch(shape, (0.0, draw.noise_sigma_vox, draw.noise_sigma_vox), generator,
                                                      device=device)
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-6)
    floor, span = draw.range_hu
    return (x * span + floor).clamp_(-1024.0, 3071.0)


def rerender_ct(
    structures_zyx: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    seed: int | np.random.SeedSequence | None = None,
    *,
    mode: str = "ct",
    device: torch.device | str = "cpu",
    scanner: bool = True,
) -> tuple[np.ndarray, RenderDraw]:
    """One new CT image of a structure map: :func:`draw_render` then :func:`render_structures`.

    The same seed gives the same image on the same device.

    Returns:
        ((Z, Y, X) float32 HU array, the draw).

    Raises:
        SpinectError: unknown mode, a structure map that is not 3D, or a bad spacing.
    """
    rng = np.random.default_rng(seed)
    draw = draw_render(rng, mode)
    generator = torch.Generator(device=device).manual_seed(int(rng.integers(2**63 - 1)))
    with torch.no_grad():
        image = render_structures(structures_zyx, spacing_zyx_mm, draw, generator=generator, device=device, scanner=scanner)
    return image.cpu().numpy(), draw
