"""CT appearance: HU per tissue, scanner blur and noise, and a domain-randomised mode.

Physical mode draws one value per tissue and case inside published ranges (the issue's table:
cortical bone 1000-1500, cancellous 150-400, disc 70-100, muscle 40-60, nerve/CSF 0-40, fat
-120 to -80, air -1000 HU), blurs with a Gaussian scanner PSF and adds correlated noise of
standard deviation 10-40 HU (white noise blurred with the same PSF, rescaled).

Domain-randomised mode (SynthSeg, Billot et al. 2023) gives every structure code a random
intensity and texture, then applies a random smooth multiplicative bias field, a random gamma
contrast, random blur and random noise, so a network trained on it must rely on shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spinect.phantom.render import TissueValues
from spinect.phantom.structures import BONE_CODES, structure_lookup

__all__ = ["HU_RANGES", "ScannerSettings", "physical_values", "random_values", "sample_scanner", "apply_scanner",
           "randomise_contrast", "to_int16"]

#: Physical HU range per tissue class (per-case values are drawn inside these).
HU_RANGES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0), "gas": (-980.0, -850.0), "fat": (-115.0, -85.0), "skin": (20.0, 60.0),
    "muscle": (42.0, 58.0), "viscera": (20.0, 45.0), "blood": (35.0, 50.0), "calcium": (400.0, 900.0),
    "disc": (72.0, 98.0), "csf": (5.0, 20.0), "nerve": (20.0, 38.0), "ligament": (55.0, 75.0),
    "bone": (1050.0, 1450.0),  # cortical
    "cancellous": (160.0, 380.0),
}


@dataclass(frozen=True)
class ScannerSettings:
    """Scanner model: Gaussian PSF (FWHM per axis z, y, x in mm) and noise SD (HU)."""

    fwhm_zyx_mm: tuple[float, float, float]
    noise_hu: float


def physical_values(rng: np.random.Generator) -> TissueValues:
    """One value per tissue class inside :data:`HU_RANGES`; cancellous varies a little per bone."""
    values = {t: float(rng.uniform(*r)) for t, r in HU_RANGES.items() if t != "cancellous"}
    # Room for per-bone variation (+-15 HU) and trabecular texture (+-12 %) inside the range.
    canc = float(rng.uniform(HU_RANGES["cancellous"][0] + 30, HU_RANGES["cancellous"][1] - 50))
    cancellous = {c: canc + float(rng.uniform(-15, 15)) for c in BONE_CODES}
    return TissueValues(structure_lookup(values, default=values["fat"]), cancellous, cancellous_texture=0.08)


def random_values(rng: np.random.Generator) -> TissueValues:
    """SynthSeg-style: an independent random intensity for every structure code."""
    table = rng.uniform(-950.0, 1600.0, 256).astype(np.float32)
    cancellous = {c: float(rng.uniform(-950.0, 1600.0)) for c in BONE_CODES}
    return TissueValues(table, cancellous, cancellous_texture=float(rng.uniform(0.0, 0.25)))


def sample_scanner(rng: np.random.Generator, *, randomise: bool = False) -> ScannerSettings:
    """Physical: in-plane FWHM 0.6-1.1 mm, along z 0.6-1.2 mm, noise 10-40 HU; randomised: wider."""
    if randomise:
        return ScannerSettings(tuple(float(v) for v in rng.uniform(0.3, 2.5, 3)), float(rng.uniform(0.0, 80.0)))
    inplane = float(rng.uniform(0.6, 1.1))
    return ScannerSettings((float(rng.uniform(0.6, 1.2)), inplane, inplane), float(rng.uniform(10.0, 40.0)))


def _sigma_voxels(settings: ScannerSettings, spacing_zyx_mm) -> np.ndarray:
    return np.asarray(settings.fwhm_zyx_mm) / 2.3548 / np.asarray(spacing_zyx_mm, float)


def _noise_gain(sigma: np.ndarray) -> float:
    """Standard deviation of white noise after scipy's Gaussian filter with these sigmas."""
    gain = 1.0
    for s in sigma:
        if s <= 0:
            continue
        r = int(4.0 * s + 0.5)
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
        k /= k.sum()
        gain *= float(np.sqrt(np.sum(k * k)))
    return gain


def apply_scanner(hu: np.ndarray, settings: ScannerSettings, spacing_zyx_mm, rng: np.random.Generator) -> np.ndarray:
    """Blur with the PSF and add noise correlated by the same PSF (in place; returns ``hu``).

    Args:
        hu: (Z, Y, X) float32 HU. spacing_zyx_mm: voxel size. rng: noise stream.
    """
    sigma = _sigma_voxels(settings, spacing_zyx_mm)
    if settings.noise_hu > 0:
        # Uniform white noise (unit variance) is cheaper to draw than Gaussian and becomes
        # Gaussian-like once summed by the PSF kernel (central limit).
        noise = rng.random(hu.shape, dtype=np.float32)
        noise -= np.float32(0.5)
        noise *= np.float32(np.sqrt(12.0) * settings.noise_hu / _noise_gain(sigma))
        hu += noise
        del noise
    if np.any(sigma > 0.05):
        ndimage.gaussian_filter(hu, np.where(sigma > 0.05, sigma, 0.0), output=hu, truncate=4.0)
    return hu


def _smooth_1d(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)
    out = np.zeros(n, np.float32)
    for k in range(1, 4):
        out += np.float32(rng.normal(0.0, 1.0 / k)) * np.cos(np.float32(np.pi * k) * t + np.float32(rng.uniform(0, 2 * np.pi)))
    return out


def randomise_contrast(hu: np.ndarray, structures: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-structure texture noise, smooth bias field and gamma contrast (in place; returns ``hu``).

    Args:
        hu: (Z, Y, X) float32 intensities from :func:`random_values`.
        structures: (Z, Y, X) uint8 structure codes (for per-structure texture SD).
    """
    sd = rng.uniform(0.0, 60.0, 256).astype(np.float32)
    tex = rng.standard_normal(hu.shape, dtype=np.float32)
    tex *= sd[structures]
    hu += tex
    del tex
    lo = np.float32(-1000.0)
    field = np.zeros(hu.shape, np.float32)
    strength = rng.uniform(0.0, 0.35)
    for _ in range(2):  # a rank-2 separable smooth field is cheap and looks like MR/CT shading
        fz, fy, fx = (_smooth_1d(rng, n) for n in hu.shape)
        field += (fz[:, None, None] * fy[None, :, None]) * fx[None, None, :]
    field *= np.float32(strength / max(float(np.abs(field).max()), 1e-6))
    np.exp(field, out=field)
    hu -= lo
    np.maximum(hu, 0.0, out=hu)
    hu *= field
    low = float(hu.min())
    hu -= np.float32(low)
    top = float(hu.max()) or 1.0
    gamma = float(np.exp(rng.normal(0.0, 0.35)))
    hu /= np.float32(top)
    np.power(hu, np.float32(gamma), out=hu)
    # the darkest voxel lands at -1024..-900 so the image still passes CT checks (air-like minimum)
    hu *= np.float32(rng.uniform(1500.0, 4000.0))
    hu += np.float32(rng.uniform(-1024.0, -900.0))
    return hu


def to_int16(hu: np.ndarray) -> np.ndarray:
    """Round and clip to the int16 CT range [-1024, 3071]."""
    np.rint(hu, out=hu)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    return hu.astype(np.int16)
