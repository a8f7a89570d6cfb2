"""CT appearance: HU per tissue, scanner model, and three modes (``ct``, ``v1``, ``random``).

``ct`` (default, :func:`sample_ct`): CT-realistic. Marrow HU from an age model (Jang et al.,
Radiology 2019: L1 226 HU under 30 falling 2.5 HU/year), thin partial-volumed cortex, dense
thin structures (depth model), trabecular texture, marrow islands, sclerotic endplates; a
reconstruction kernel (smooth or sharp) as an MTF on the image plus a noise power spectrum
``|f| * A(f)^2`` (ramp x apodisation) on the noise, a slice-sensitivity profile for thick or
overlapping slices, and a calibration offset. Drawn parameters go to the truth JSON.

``v1`` (the first physical mode, kept for reproducibility) draws one value per tissue and
case inside published ranges (cortical bone 1050-1450, cancellous 160-380, disc 70-100, muscle
40-60, nerve/CSF 0-40, fat -120 to -80, air -1000 HU), blurs with a Gaussian scanner PSF and
adds correlated noise of SD 10-40 HU (white noise blurred with the same PSF, rescaled).

``random`` (SynthSeg, Billot et al. 2023; :func:`random_values`, :func:`randomise_contrast`):
half of the cases draw every structure code from a wide CT-aware prior of its tissue class, the
other half from -950..1600 HU; bone sub-regions (cortex, marrow, dense rim, arch, islands,
endplates) are drawn independently; then MONAI's random bias field, gamma, histogram shift,
scaling and noise plus a random blur or sharpening (SciPy: about 10 times faster than MONAI's
torch filters on CPU), so a network trained on it must rely on shape. The image is mapped back
so its darkest voxel is -1024..-900 HU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

import numpy as np
import scipy.fft
from scipy import ndimage

from spinect.errors import SpinectError
from spinect.phantom.render import BoneModel, TissueValues
from spinect.phantom.soft_detail import SoftLook, sample_disc_vacuum, sample_soft_look
from spinect.phantom.structures import (BONE_CODES, LEGACY_BONE_CODES, STRUCTURE_CODES, STRUCTURE_NAMES, STRUCTURE_TISSUE,
                                        THORAX_STRUCTURES, structure_lookup)

__all__ = ["HU_RANGES", "APPEARANCE_MODES", "KERNELS", "OVERRIDE_KEYS", "ScannerSettings", "CTAppearance", "Look",
           "appearance_mode", "check_overrides", "sample_age", "marrow_mean_hu", "sample_ct", "ct_values",
           "kernel_mtf", "noise_power_spectrum", "nps_noise", "apply_ct_scanner", "sample_look", "physical_values",
           "sample_canal_look",
           "random_values", "sample_scanner", "apply_scanner", "randomise_contrast", "to_int16"]

#: Appearance modes of :func:`spinect.phantom.generate_case`.
APPEARANCE_MODES: tuple[str, ...] = ("ct", "v1", "random")
#: Reconstruction kernels of the ``ct`` mode.
KERNELS: tuple[str, ...] = ("smooth", "sharp")

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


#: Share of the vertebral cortex interrupted (phantom version 7): real cortex at W 1500 is broken
#: and porous, with the trabecular texture reaching the surface, not a closed ring.
CORTEX_GAP_FRACTION = 0.3


def physical_values(rng: np.random.Generator) -> TissueValues:
    """One value per tissue class inside :data:`HU_RANGES`; cancellous varies a little per bone."""
    values = {t: float(rng.uniform(*r)) for t, r in HU_RANGES.items() if t != "cancellous"}
    # Room for per-bone variation (+-15 HU) and trabecular texture (+-12 %) inside the range.
    canc = float(rng.uniform(HU_RANGES["cancellous"][0] + 30, HU_RANGES["cancellous"][1] - 50))
    cancellous = {c: canc + float(rng.uniform(-15, 15)) for c in LEGACY_BONE_CODES}
    cancellous.update({c: canc for c in BONE_CODES if c not in cancellous})  # thorax bones: no extra draw
    return TissueValues(structure_lookup(values, default=values["fat"]), cancellous, cancellous_texture=0.08)


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


def to_int16(hu: np.ndarray) -> np.ndarray:
    """Round and clip to the int16 CT range [-1024, 3071]."""
    np.rint(hu, out=hu)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    return hu.astype(np.int16)


# --------------------------------------------------------------------------------------------
# CT-realistic mode
# --------------------------------------------------------------------------------------------

#: Per-case appearance overrides of the ``ct`` mode (stress suites). A number fixes the value,
#: a (lo, hi) pair draws it uniformly inside; ``kernel`` is a name, ``iv_contrast`` a bool.
OVERRIDE_KEYS: dict[str, str] = {
    "age_years": "patient age, 20-90 (years)",
    "marrow_hu": "case marrow HU (per-bone values stay inside a given range)",
    "cortex_mm": "cortical shell thickness (mm)",
    "cortex_hu": "cortical bone HU before partial volume",
    "dense_hu": "subcortical / thin-structure cancellous HU",
    "posterior_hu": "cancellous HU of the vertebral arch (pedicles, laminae, processes)",
    "kernel": "reconstruction kernel: 'smooth' or 'sharp'",
    "noise_sd_hu": "image noise SD (HU)",
    "offset_hu": "calibration offset (HU)",
    "slice_thickness_mm": "reconstructed slice thickness (mm, >= the z spacing)",
    "iv_contrast": "True: contrast-enhanced blood vessels (200-400 HU)",
}

#: Partial volume of the painted soft-tissue boundaries (Gaussian sigma, output voxels z, y, x):
#: enough to hide the one-voxel stair-steps of the displaced soft-tissue map and the 3-slice
#: blocks of its displacement along z (:func:`spinect.phantom.render.soften_edges`).
EDGE_SIGMA_VOX = (1.0, 0.65, 0.65)

#: Marrow HU limits of the age model (fatty marrow can be slightly negative).
MARROW_LIMITS_HU = (-50.0, 350.0)


@dataclass(frozen=True)
class CTAppearance:
    """Drawn parameters of one ``ct``-mode case (HU before the calibration offset; mm).

    Attributes:
        age_years: patient age; marrow_hu: case marrow mean; marrow_by_bone_hu: per bone name.
        cortex_mm, cortex_hu: thin cortex; dense_hu, depth_mm: subcortical depth model;
        posterior_hu, arch_cortex_mm: vertebral arch cancellous HU and cortex thickness.
        texture_rel, texture_mm: trabecular texture; island_*: marrow islands / fatty patches.
        endplate_hu, endplate_mm: sclerotic endplate band.
        kernel: ``smooth`` or ``sharp``; kernel_fwhm_mm: in-plane MTF core FWHM; kernel_enhance,
        kernel_enhance_mm: edge enhancement (unsharp mask) gain and scale (sharp kernels).
        z_fwhm_mm: scanner blur along z; slice_thickness_mm, slice_increment_mm: slice profile.
        noise_sd_hu: noise SD in a uniform region; offset_hu: calibration offset.
        iv_contrast: contrast-enhanced vessels. tissue_hu: soft-tissue HU per tissue class.
        soft_tissue: soft-tissue texture (muscle fat, septa, small vessels, bowel, kidneys).
        noise_streak: extra noise power along the lateral (x) direction, relative: the
            photon-starved left-right rays of a wide abdomen streak the noise horizontally.
        noise_centre: strength of the attenuation dependence of the noise (0: stationary): the
            noise variance is the mean over projection angles of ``exp(k P)`` (P the attenuation
            path through the voxel), so it grows towards the body centre and along the widest
            axis; normalised per slice (tube-current modulation) so ``noise_sd_hu`` stays the
            body mean. See :func:`noise_sd_map`.
        bone_streak: amplitude (in noise SDs) of the faint left-right streaks from dense bone
            (photon starvation along rays through much bone), :func:`bone_streaks`.
        cortex_hu_variation, arch_cortex_gain, marrow_variation_hu, arch_dense_hu, arch_depth_mm,
            texture_z_ratio, texture_coarse_share, texture_patchiness: see
            :class:`spinect.phantom.render.BoneModel`.
    """

    age_years: float
    marrow_hu: float
    marrow_by_bone_hu: dict[str, float]
    cortex_mm: float
    cortex_hu: float
    dense_hu: float
    depth_mm: float
    posterior_hu: float
    arch_cortex_mm: float
    texture_rel: float
    texture_mm: float
    island_fraction: float
    island_hu: float
    island_mm: float
    endplate_hu: float
    endplate_mm: float
    kernel: str
    kernel_fwhm_mm: float
    kernel_enhance: float
    kernel_enhance_mm: float
    z_fwhm_mm: float
    slice_thickness_mm: float
    slice_increment_mm: float
    noise_sd_hu: float
    offset_hu: float
    iv_contrast: bool
    tissue_hu: dict[str, float] = field(default_factory=dict)
    soft_tissue: SoftLook | None = None
    noise_streak: float = 0.0
    noise_centre: float = 0.0
    bone_streak: float = 0.0
    cortex_hu_variation: float = 0.0
    arch_cortex_gain: float = 0.0
    marrow_variation_hu: float = 0.0
    basivertebral: dict[str, float] = field(default_factory=dict)
    facet_sclerosis: float = 0.0
    arch_dense_hu: float | None = None
    arch_depth_mm: float | None = None
    texture_z_ratio: float = 1.4
    texture_coarse_share: float = 0.0
    texture_patchiness: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters (rounded)."""
        out = {}
        for k, v in asdict(self).items():
            if k == "soft_tissue":
                out[k] = None if self.soft_tissue is None else self.soft_tissue.to_dict()
            elif isinstance(v, dict):
                out[k] = {kk: round(float(vv), 2) for kk, vv in v.items()}
            elif isinstance(v, float):
                out[k] = round(v, 3)
            else:
                out[k] = v
        out["slice_profile"] = "rect" if self.slice_thickness_mm <= 1.01 * self.slice_increment_mm else "rect*gauss (overlapping)"
        return out


def appearance_mode(appearance: str | None, randomise_appearance: bool = False) -> str:
    """Validated mode name; the legacy ``randomise_appearance=True`` means ``random``.

    Raises:
        SpinectError: unknown mode, or ``randomise_appearance`` contradicting ``appearance``.
    """
    if randomise_appearance:
        if appearance not in (None, "ct", "random"):
            raise SpinectError(f"randomise_appearance=True contradicts appearance={appearance!r}; use appearance='random'")
        return "random"
    mode = appearance or "ct"
    if mode not in APPEARANCE_MODES:
        raise SpinectError(f"unknown appearance {mode!r}; choose one of {', '.join(APPEARANCE_MODES)}")
    return mode


def check_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated copy of ``appearance_overrides`` (see :data:`OVERRIDE_KEYS`).

    Raises:
        SpinectError: an unknown key (naming it and the allowed ones) or a malformed value.
    """
    out: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if key not in OVERRIDE_KEYS:
            raise SpinectError(f"unknown appearance override {key!r}; allowed: {', '.join(OVERRIDE_KEYS)}")
        if key == "kernel":
            if value not in KERNELS:
                raise SpinectError(f"appearance override kernel={value!r}; choose one of {', '.join(KERNELS)}")
        elif key == "iv_contrast":
            value = bool(value)
        else:
            try:
                pair = tuple(float(v) for v in (value if np.ndim(value) else (value, value)))
            except (TypeError, ValueError):
                raise SpinectError(f"appearance override {key}={value!r} must be a number or a (low, high) pair") from None
            if len(pair) != 2 or not pair[0] <= pair[1] or not np.all(np.isfinite(pair)):
                raise SpinectError(f"appearance override {key}={value!r} must be a number or a (low, high) pair, low <= high")
            value = pair
        out[key] = value
    return out


def _draw(rng: np.random.Generator, overrides: dict, key: str, lo: float, hi: float) -> float:
    """Uniform draw in (lo, hi) unless overridden. Always consumes one draw so that overriding
    one parameter leaves the others unchanged."""
    u = float(rng.random())
    lo, hi = overrides.get(key, (lo, hi))
    return lo + u * (hi - lo)


def sample_age(rng: np.random.Generator) -> float:
    """Patient age (years), 20-90, weighted to 50-85 (Beta(2.6, 1.6): mode about 71, mean 64)."""
    return 20.0 + 70.0 * float(rng.beta(2.6, 1.6))


def marrow_mean_hu(age_years: float) -> float:
    """Mean L1 marrow HU at this age (Jang et al. 2019: 226 HU at 25, -2.5 HU/year)."""
    return 226.0 - 2.5 * (age_years - 25.0)


def _bone_names() -> dict[int, str]:
    """The bones whose marrow is drawn (the thorax's are derived without drawing: see _sample_marrow)."""
    return {c: STRUCTURE_NAMES[c] for c in LEGACY_BONE_CODES}


def _sample_marrow(rng: np.random.Generator, overrides: dict, age: float) -> tuple[float, dict[str, float]]:
    """Case marrow HU (age model + 40 HU SD) and per-bone values (+-15 HU; sacrum and ilia
    hold more fatty marrow: -25 HU)."""
    z = float(rng.standard_normal())
    lo, hi = overrides.get("marrow_hu", MARROW_LIMITS_HU)
    if "marrow_hu" in overrides:
        mean = lo + float(rng.random()) * (hi - lo)
    else:
        rng.random()
        mean = float(np.clip(marrow_mean_hu(age) + 40.0 * z, lo, hi))
    per_bone = {}
    for code, name in _bone_names().items():
        shift = float(rng.normal(0.0, 15.0)) - (25.0 if name in ("sacrum", "ilium_left", "ilium_right") else 0.0)
        per_bone[name] = float(np.clip(mean + shift, lo, hi))
    # thoracic vertebrae hold a little more red marrow than L1, the sternum about the mean: no draws,
    # so the appearance stream is the same with or without the thorax
    per_bone["thoracic_vertebra"] = float(np.clip(per_bone["L1"] + 10.0, lo, hi))
    for name in ("sternum", "scapula", "clavicle"):
        per_bone[name] = float(np.clip(mean, lo, hi))
    return mean, per_bone


def _sample_soft_tissue(rng: np.random.Generator, iv_contrast: bool) -> dict[str, float]:
    values = {t: float(rng.uniform(*r)) for t, r in HU_RANGES.items() if t not in ("bone", "cancellous")}
    if iv_contrast:
        values["blood"] = float(rng.uniform(200.0, 400.0))
    return values


#: Arch (pedicles, laminae, processes) cancellous HU above the case's marrow HU (version 10). The
#: real lumbar crop's arch is 174-252 HU more than 3 mm inside its surface (VerSe subregion labels
#: 41-48), its body 45-61 HU; phantoms drew 160-480 HU regardless of the marrow, so arches stayed
#: bright blobs in osteoporotic cases (blinded readers: "one featureless, evenly bright blob").
#: Version 11: 20-110 HU (was 110-260 HU, the same draw) with a dense layer under the arch's surface
#: (:data:`ARCH_DENSE_HU`, :data:`ARCH_DEPTH_MM`): median HU by depth inside the real arches falls from
#: 540-555 HU 1-2 mm deep (chest CT) and 492 HU in the surface voxel (crop) to marrow + 65-90 HU beyond
#: 4.5 mm; version 10's arch was a bright rim round a flat fill of marrow + 190-250 HU (readers:
#: "a rim-outlined blob with a uniform interior").
POSTERIOR_ABOVE_MARROW_HU = (20.0, 110.0)
#: Cancellous HU just under the arch's cortex, and the depth (mm) at which that dense layer ends (over
#: about a millimetre, :data:`spinect.phantom.render.ARCH_LAYER_EDGE_MM`).
ARCH_DENSE_HU = (450.0, 750.0)
ARCH_DEPTH_MM = (1.0, 2.2)
#: Relative SD of the arch's cortex thickness (the body's: 0.4). Real arches are heterogeneous: median
#: 370-390 HU but a tenth of their voxels above 970-1000 HU (the real crop's subregion labels 41-48, the
#: chest CT's bone behind its canal), thick dense cortex in places and thin in others.
ARCH_CORTEX_VARIATION = 1.3


def _posterior_hu(drawn: float, marrow_hu: float, overridden: bool) -> float:
    """The arch's cancellous HU from the ``posterior_hu`` draw (uniform in 160-480, or an override,
    kept as given): the same quantile of :data:`POSTERIOR_ABOVE_MARROW_HU` above the marrow."""
    if overridden:
        return drawn
    lo, hi = POSTERIOR_ABOVE_MARROW_HU
    return float(marrow_hu + lo + (drawn - 160.0) / 320.0 * (hi - lo))


def _streak(u: float) -> float:
    """Left-right noise elongation from a U(0, 1.5) draw: 0 for u <= 1 (two thirds of the cases),
    rising linearly to 0.6 at u = 1.5."""
    return 0.0 if u <= 1.0 else 1.2 * (u - 1.0)


def sample_ct(rng: np.random.Generator, spacing_zyx_mm, overrides: Mapping[str, Any] | None = None) -> CTAppearance:
    """Draw one case's CT-realistic appearance.

    Args:
        rng: appearance stream. spacing_zyx_mm: output voxel size (mm), for the slice profile.
        overrides: see :data:`OVERRIDE_KEYS` (validated by :func:`check_overrides`).
    """
    ov = check_overrides(overrides)
    age = _draw(rng, ov, "age_years", 0.0, 0.0) if "age_years" in ov else sample_age(rng)
    marrow, per_bone = _sample_marrow(rng, ov, age)
    kernel = ov.get("kernel", "sharp" if rng.random() < 0.4 else "smooth")  # the draw is made either way
    sharp = kernel == "sharp"
    sz = float(spacing_zyx_mm[0])
    overlap = rng.random() < 0.5
    thick = _draw(rng, ov, "slice_thickness_mm", sz * 1.2, sz * 2.5) if overlap or "slice_thickness_mm" in ov else sz
    iv = bool(ov.get("iv_contrast", False))
    app = CTAppearance(
        age_years=age, marrow_hu=marrow, marrow_by_bone_hu=per_bone,
        cortex_mm=_draw(rng, ov, "cortex_mm", 0.25, 0.6), cortex_hu=_draw(rng, ov, "cortex_hu", 700.0, 1400.0),
        dense_hu=_draw(rng, ov, "dense_hu", 250.0, 600.0), depth_mm=float(rng.uniform(0.5, 1.2)),
        posterior_hu=_posterior_hu(_draw(rng, ov, "posterior_hu", 160.0, 480.0), marrow, "posterior_hu" in ov),
        # version 11: 0.6-1.2 mm (version 10 0.8-1.5, version 9 0.5-1.2; the same draw): the dense layer
        # under it (ARCH_DENSE_HU) gives the real arch's slow fall of HU with depth, not a thick rim
        arch_cortex_mm=float(0.6 + (rng.uniform(0.5, 1.2) - 0.5) / 0.7 * 0.6),
        texture_rel=float(rng.uniform(0.15, 0.35)), texture_mm=float(rng.uniform(0.5, 1.0)),
        # version 9: none in about half the cases, at most 8 % (was 0-15 %; the same draw): readers
        # named evenly scattered dark "punched holes" in the marrow as a phantom tell
        island_fraction=max(float(rng.uniform(0.0, 0.15)) - 0.07, 0.0),
        island_hu=float(rng.uniform(60.0, 200.0) if rng.random() < 0.3 else -rng.uniform(60.0, 160.0)),
        island_mm=float(rng.uniform(2.0, 4.0)), endplate_hu=float(rng.uniform(30.0, 200.0)),
        endplate_mm=float(rng.uniform(1.0, 3.0)), kernel=kernel,
        kernel_fwhm_mm=float(rng.uniform(0.45, 0.75) if sharp else rng.uniform(1.1, 1.6)),
        kernel_enhance=float(rng.uniform(0.3, 0.7)) if sharp else 0.0, kernel_enhance_mm=float(rng.uniform(0.8, 1.5)),
        z_fwhm_mm=float(rng.uniform(0.6, 1.2)), slice_thickness_mm=float(np.clip(max(thick, sz), 0.6, max(5.0, sz))),
        slice_increment_mm=sz,
        # measured in muscle and fat (benchmarks/phantom_appearance_vs_real.py): real contrast chest CT
        # 14-16 HU (0.7 mm, soft kernel), real lumbar crop about 60 HU (1.5 mm)
        noise_sd_hu=_draw(rng, ov, "noise_sd_hu", 25.0, 70.0) if sharp else _draw(rng, ov, "noise_sd_hu", 10.0, 35.0),
        offset_hu=_draw(rng, ov, "offset_hu", -30.0, 30.0), iv_contrast=iv,
        tissue_hu=_sample_soft_tissue(rng, iv),
        soft_tissue=sample_soft_look(rng, age, iv),  # drawn after the values above: they are as before
        # version 9: a third of the cases, 0-0.6 (was every case, 0-1.5; the same draw): blinded
        # readers named left-right noise correlation in axial slices as a phantom tell
        noise_streak=_streak(float(rng.uniform(0.0, 1.5))),
        noise_centre=float(rng.uniform(0.8, 1.8)),
        # version 10: 0.1-0.4 (was 0.2-0.8; the same draw): blinded readers saw the streak through
        # the transverse processes as a "horizontal seam line" across the whole picture
        bone_streak=float(rng.uniform(0.2, 0.8)) * 0.5,
        # arch cortex gain: version 9 0.3-0.8 (labelled-bone p95 828 HU against 874-896 in the real
        # cases); version 10 0.15-0.4 again (the same draw), with the arch's thicker cortex instead;
        # version 11 0 to +0.125 (the same draw): the dense layer under the cortex and the cortex's
        # thickness varying 1.3 x as much as the body's (ARCH_CORTEX_VARIATION) make the arch's bright
        # voxels; arch HU p5/25/50/75/90/95 of 6 crop-grid cases 162/306/466/645/926/1135, real chest
        # CT 71/204/390/749/1001/1113, real crop -15/172/370/657/967/1128
        cortex_hu_variation=float(rng.uniform(0.25, 0.45)), arch_cortex_gain=float(rng.uniform(0.15, 0.4)) * 0.5 - 0.075,
    )
    # drawn after everything above (version 8), so every earlier value is as in version 7
    app = replace(app, tissue_hu={**app.tissue_hu, **sample_canal_look(rng, app.tissue_hu)})
    # version 9, drawn last: the vacuum phenomenon of degenerated lower discs (older patients), then
    # the marrow's heterogeneity over 6-10 mm (blinded readers saw a uniform inside a shell)
    app = replace(app, soft_tissue=replace(app.soft_tissue, disc_vacuum=sample_disc_vacuum(rng, age)))
    app = replace(app, marrow_variation_hu=float(rng.uniform(15.0, 50.0)))
    # version 10, drawn last: the basivertebral vein (blinded readers took it as a sign of a real scan),
    # then the facet joints' sclerosis (readers named sclerotic facets as signs of a real scan)
    app = replace(app, basivertebral=sample_basivertebral(rng, app))
    app = replace(app, facet_sclerosis=sample_facet_sclerosis(rng, age))
    # version 11, drawn last: the arch's dense layer, then the trabecular texture's shape
    return replace(app, **sample_arch_layer(rng), **sample_trabecular_texture(rng, age))


def sample_arch_layer(rng: np.random.Generator) -> dict[str, float]:
    """The dense layer under the arch's cortex (version 11): ``arch_dense_hu`` in :data:`ARCH_DENSE_HU`
    and ``arch_depth_mm`` in :data:`ARCH_DEPTH_MM` (two draws, always made)."""
    u = rng.random(2)
    return {"arch_dense_hu": float(ARCH_DENSE_HU[0] + u[0] * (ARCH_DENSE_HU[1] - ARCH_DENSE_HU[0])),
            "arch_depth_mm": float(ARCH_DEPTH_MM[0] + u[1] * (ARCH_DEPTH_MM[1] - ARCH_DEPTH_MM[0]))}


def sample_trabecular_texture(rng: np.random.Generator, age_years: float) -> dict[str, float]:
    """The trabecular texture's shape (version 11; three draws, always made).

    * ``texture_z_ratio`` 1.3-2.7: vertical over in-plane correlation length. Vertebral bodies lose
      their horizontal trabeculae first with age, so the vertical ones dominate more in the old
      (the upper bound rises from 1.8 at 20 to 2.7 at 80 and over).
    * ``texture_coarse_share`` 0.3-0.6: share of the texture's variance at 2.5x the fine scale (a
      single Gaussian scale read as a regular "honeycomb" or "maze" to blinded readers).
    * ``texture_patchiness`` 0.3-0.7: SD of a smooth (6 mm) gain on the texture's amplitude, so
      coarse and smooth regions alternate in one vertebra.
    """
    u = rng.random(3)
    old = float(np.clip((age_years - 20.0) / 60.0, 0.0, 1.0))
    return {"texture_z_ratio": float(1.3 + u[0] * (0.5 + 0.9 * old)),
            "texture_coarse_share": float(0.3 + 0.3 * u[1]), "texture_patchiness": float(0.3 + 0.4 * u[2])}


def sample_facet_sclerosis(rng: np.random.Generator, age_years: float) -> float:
    """Strength (0-1) of the facet joints' subchondral sclerosis: none under 35, rising linearly to
    full at 75 (facet arthropathy is seen on CT in most adults over 60), times U(0.4, 1) per case
    (an assumption; one draw, always made)."""
    u = float(rng.uniform(0.4, 1.0))
    return round(float(np.clip((age_years - 35.0) / 40.0, 0.0, 1.0)) * u, 3)


#: Share of cases whose lumbar bodies show a basivertebral vein (version 10; an assumption: it is
#: seen in most axial CT slices through the mid-height of a lumbar body).
BASIVERTEBRAL_SHARE = 0.75


def sample_basivertebral(rng: np.random.Generator, app: CTAppearance) -> dict[str, float]:
    """The basivertebral vein of one case: ``half_width_mm`` 1.3-2.2, ``length_mm`` 8-16,
    ``branched`` (1 in 60 % of the veins), ``hu`` (venous blood: the non-contrast blood value, or
    with IV contrast the vein's share of the enhancement); empty in 1 - ``BASIVERTEBRAL_SHARE`` of
    the cases. Four draws, always made."""
    u = rng.random(4)
    if u[0] >= BASIVERTEBRAL_SHARE:
        return {}
    blood = float(app.tissue_hu.get("blood", 40.0))
    if app.iv_contrast and app.soft_tissue is not None:
        blood = 40.0 + app.soft_tissue.vein_rel * (blood - 40.0)
    return {"half_width_mm": round(1.3 + 0.9 * float(u[1]), 3), "length_mm": round(8.0 + 8.0 * float(u[2]), 3),
            "branched": float(u[3] < 0.6), "hu": round(blood, 2)}


#: Share of ``ct`` cases whose epidural fat is thin (partial-volumed with dura and epidural veins).
THIN_EPIDURAL_FAT_SHARE = 0.5
#: HU of thin epidural fat, and the rise of CSF in the bony canal (beam hardening, partial volume).
THIN_EPIDURAL_FAT_HU = (-70.0, 25.0)
CANAL_CSF_RISE_HU = (0.0, 25.0)


def sample_canal_look(rng: np.random.Generator, tissue_hu: Mapping[str, float]) -> dict[str, float]:
    """HU of the dural sac and the epidural fat, per structure name (they win over the tissue class).

    In real CT the sac is often hard to tell from the rest of the canal: the real L3 crop's canal
    reads median 33 HU (p10 -67, p90 157), where version 7 drew CSF at 5-20 HU in a ring of fat at
    -85 to -115 HU. Here the CSF rises by 0-25 HU in the bony canal (beam hardening between the
    pedicles, partial volume with the dura) and in half the cases the epidural fat is thin,
    -70 to +25 HU; the foraminal fat stays fat. Labels are untouched.
    """
    values = {"dural_sac": float(tissue_hu["csf"] + rng.uniform(*CANAL_CSF_RISE_HU))}
    if rng.random() < THIN_EPIDURAL_FAT_SHARE:
        values["epidural_fat"] = float(rng.uniform(*THIN_EPIDURAL_FAT_HU))
    return values


def ct_values(app: CTAppearance) -> TissueValues:
    """Tissue table and :class:`BoneModel` of a ``ct``-mode case (bones: table = cortex HU)."""
    values = dict(app.tissue_hu)
    values["bone"] = app.cortex_hu
    codes = {STRUCTURE_CODES[name]: hu for name, hu in app.marrow_by_bone_hu.items()}
    model = BoneModel(cortex_mm=app.cortex_mm, cortex_hu=app.cortex_hu, marrow_hu=codes, dense_hu=app.dense_hu,
                      depth_mm=app.depth_mm, posterior_hu=app.posterior_hu, arch_cortex_mm=app.arch_cortex_mm,
                      texture_rel=app.texture_rel, texture_mm=app.texture_mm,
                      island_fraction=app.island_fraction, island_hu=app.island_hu, island_mm=app.island_mm,
                      endplate_hu=app.endplate_hu, endplate_mm=app.endplate_mm, texture_z_ratio=app.texture_z_ratio,
                      texture_coarse_share=app.texture_coarse_share, texture_patchiness=app.texture_patchiness,
                      arch_dense_hu=app.arch_dense_hu, arch_depth_mm=app.arch_depth_mm,
                      arch_cortex_variation=ARCH_CORTEX_VARIATION if app.arch_depth_mm is not None else None,
                      cortex_variation=0.4, cortex_hu_variation=app.cortex_hu_variation,
                      arch_cortex_gain=app.arch_cortex_gain, cortex_gap_fraction=CORTEX_GAP_FRACTION,
                      marrow_variation_hu=app.marrow_variation_hu,
                      basivertebral=(app.basivertebral["half_width_mm"], app.basivertebral["length_mm"],
                                     bool(app.basivertebral["branched"]), app.basivertebral["hu"]) if app.basivertebral else None,
                      facet_sclerosis=app.facet_sclerosis)
    return TissueValues(structure_lookup(values, default=values["fat"]), codes, 0.0, model, app.soft_tissue,
                        edge_sigma_vox=EDGE_SIGMA_VOX)


# -- scanner of the ct mode: kernel MTF, slice profile, noise power spectrum, offset ----------

_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


def kernel_mtf(app: CTAppearance, freq_per_mm: np.ndarray) -> np.ndarray:
    """In-plane MTF of the reconstruction kernel at radial frequencies (cycles/mm):
    ``G1 (1 + k - k G2)``, a Gaussian core with unsharp-mask edge enhancement (MTF > 1 at
    mid frequencies, i.e. edge overshoot, for sharp kernels)."""
    f2 = np.asarray(freq_per_mm, float) ** 2
    g1 = np.exp(-2.0 * np.pi**2 * (app.kernel_fwhm_mm / _FWHM) ** 2 * f2)
    g2 = np.exp(-2.0 * np.pi**2 * app.kernel_enhance_mm**2 * f2)
    return g1 * (1.0 + app.kernel_enhance - app.kernel_enhance * g2)


def noise_power_spectrum(app: CTAppearance, freq_per_mm: np.ndarray) -> np.ndarray:
    """Filtered-backprojection NPS shape: ramp x apodisation^2, ``(|f| + 0.02) MTF(f)^2`` (the
    small floor keeps some low-frequency noise, as in real scanners)."""
    f = np.abs(np.asarray(freq_per_mm, float))
    return (f + 0.02) * kernel_mtf(app, f) ** 2


def _z_sigma_mm(app: CTAppearance) -> float:
    """Gaussian sigma (mm) along z: scanner blur plus the slice profile beyond the increment
    (a rect of width T has variance T^2/12; the renderer already averages over the increment)."""
    extra = max(app.slice_thickness_mm**2 - app.slice_increment_mm**2, 0.0) / 12.0
    return float(np.sqrt((app.z_fwhm_mm / _FWHM) ** 2 + extra))


def nps_noise(shape_zyx, spacing_zyx_mm, app: CTAppearance, rng: np.random.Generator) -> np.ndarray:
    """CT noise (float32 (Z, Y, X), HU) with the kernel's in-plane NPS, correlated along z by the
    slice profile, scaled to SD ``app.noise_sd_hu``."""
    sz, sy, sx = (float(v) for v in spacing_zyx_mm)
    noise = rng.random(tuple(shape_zyx), dtype=np.float32)
    noise -= np.float32(0.5)
    fy = np.fft.fftfreq(shape_zyx[1], d=sy)[:, None]
    fx = np.fft.rfftfreq(shape_zyx[2], d=sx)[None, :]
    f = np.hypot(fy, fx)
    power = noise_power_spectrum(app, f)
    if app.noise_streak > 0:  # noise elongated left-right: power near the fy axis (fx ~ 0)
        cos2 = np.divide(fy**2, f**2, out=np.zeros_like(f), where=f > 0)
        power = power * (1.0 + 3.0 * app.noise_streak * cos2**4)
    amp = np.sqrt(power).astype(np.float32)
    spec = scipy.fft.rfft2(noise, axes=(1, 2), workers=1)
    spec *= amp
    noise = scipy.fft.irfft2(spec, s=shape_zyx[1:], axes=(1, 2), workers=1)
    del spec
    sigma_z = _z_sigma_mm(app) / sz
    if sigma_z > 0.2:
        ndimage.gaussian_filter1d(noise, sigma_z, axis=0, output=noise)
    noise *= np.float32(app.noise_sd_hu / max(float(noise.std()), 1e-9))
    return noise


def _attenuation(hu: np.ndarray) -> np.ndarray:
    """Linear attenuation relative to water (float32): 0 for air, 1 for water."""
    mu = hu + np.float32(1000.0)
    mu *= np.float32(1e-3)
    return np.clip(mu, 0.0, None, out=mu)


def noise_sd_map(hu: np.ndarray, spacing_zyx_mm, strength: float, *, step: int = 4, n_angles: int = 8) -> np.ndarray:
    """Relative noise SD (float32, same shape as ``hu``): filtered back-projection noise variance
    at a point is the back-projection of the projections' variance, ``exp(mu L)`` of the rays
    through it. On a coarse grid (``step`` voxels in-plane, every ``step``-th slice) the
    attenuation line integral is taken along ``n_angles`` directions (the image rotated), its
    exponential smeared back along the rays and averaged; ``strength`` sets ``k`` as a multiple
    of 1 / (the case's longest path), a stand-in for the bowtie filter and dose modulation that
    keep real centre-to-edge noise ratios at 1.2-1.6. Each slice is normalised to a mean
    variance of 1 inside the body (tube-current modulation along z); air outside keeps the
    edge value."""
    nz, ny, nx = hu.shape
    zs = np.arange(0, nz, step)
    cy, cx = -(-ny // step), -(-nx // step)
    pad = np.zeros((len(zs), cy * step, cx * step), np.float32)
    pad[:, :ny, :nx] = _attenuation(hu[zs])
    mu = pad.reshape(len(zs), cy, step, cx, step).mean(axis=(2, 4))
    del pad
    sy, sx = float(spacing_zyx_mm[1]) * step, float(spacing_zyx_mm[2]) * step
    h = 0.5 * (sy + sx)
    angles = np.arange(n_angles) * 180.0 / n_angles
    paths = []
    for ang in angles:
        rot = ndimage.rotate(mu, ang, axes=(1, 2), reshape=False, order=1, mode="constant") if ang else mu
        paths.append(rot.sum(axis=2) * np.float32(h))  # (Z', rows): line integrals along the rotated x
    longest = max(float(max(p.max() for p in paths)), 1e-6)
    k = np.float32(strength * 4.0 / longest)
    var = np.zeros_like(mu)
    for ang, path in zip(angles, paths):
        smear = np.broadcast_to(np.exp(k * path)[:, :, None], mu.shape).astype(np.float32)
        var += ndimage.rotate(smear, -ang, axes=(1, 2), reshape=False, order=1, mode="nearest") if ang else smear
    body = mu > np.float32(0.5)
    for i in range(len(zs)):
        ref = float(var[i][body[i]].mean()) if body[i].any() else float(var[i].mean())
        var[i] /= np.float32(max(ref, 1e-9))
    sd = np.sqrt(var, out=var)
    idx = np.clip(np.arange(nz) / step, 0, len(zs) - 1)  # linear along z on the coarse plane
    lo = np.floor(idx).astype(int)
    hi = np.minimum(lo + 1, len(zs) - 1)
    frac = (idx - lo).astype(np.float32)[:, None, None]
    sd = sd[lo] * (np.float32(1.0) - frac) + sd[hi] * frac
    sd = np.repeat(np.repeat(sd, step, axis=1), step, axis=2)[:, :ny, :nx]
    return ndimage.uniform_filter(sd, (1, step, step))


def bone_streaks(hu: np.ndarray, spacing_zyx_mm, amplitude_hu: float, rng: np.random.Generator) -> np.ndarray:
    """Faint left-right streaks from dense bone (float32, same shape): photon starvation along
    the rays (grid rows, x) that cross much bone. Per row, the bone path ``B`` (mm of bone above
    200 HU, weighted by density) sets the SD of a random value that is constant along the row
    (a straight line through the bone and beyond it) and thin across rows; rows crossing the
    most bone of the case get ``amplitude_hu``, rows with half of it a quarter."""
    sx = float(spacing_zyx_mm[2])
    dense = hu - np.float32(200.0)
    np.clip(dense, 0.0, None, out=dense)
    path = dense.sum(axis=2) * np.float32(sx / 1000.0)  # (Z, Y)
    del dense
    ref = float(np.quantile(path, 0.995)) if path.size else 0.0
    if ref <= 0:
        return np.zeros(hu.shape, np.float32)
    weight = np.clip(path / np.float32(ref), 0.0, 1.5) ** 2
    line = rng.standard_normal(path.shape).astype(np.float32)
    line = ndimage.gaussian_filter1d(line, 0.6, axis=1)
    line /= np.float32(max(float(line.std()), 1e-6))
    line *= weight * np.float32(amplitude_hu)
    # the streak fades slowly away from the body's centre line (x)
    nx = hu.shape[2]
    x = (np.arange(nx, dtype=np.float32) - np.float32(0.5 * (nx - 1))) * np.float32(sx)
    fade = np.float32(0.3) + np.float32(0.7) * np.exp(-(x / np.float32(90.0)) ** 2)  # version 10 (was 0.6 + 0.4, 120 mm)
    return line[:, :, None] * fade[None, None, :]


def apply_ct_scanner(hu: np.ndarray, app: CTAppearance, spacing_zyx_mm, rng: np.random.Generator) -> np.ndarray:
    """Kernel MTF and slice profile on the image, NPS-shaped noise, calibration offset (in
    place; returns ``hu``). hu: (Z, Y, X) float32 HU; spacing_zyx_mm: voxel size (mm)."""
    sz, sy, sx = (float(v) for v in spacing_zyx_mm)
    core = app.kernel_fwhm_mm / _FWHM
    sigma = np.array([_z_sigma_mm(app) / sz, core / sy, core / sx])
    ndimage.gaussian_filter(hu, np.where(sigma > 0.05, sigma, 0.0), output=hu, truncate=4.0)
    if app.kernel_enhance > 0:  # unsharp mask: in-plane edge overshoot of sharp kernels
        low = ndimage.gaussian_filter(hu, (0.0, app.kernel_enhance_mm / sy, app.kernel_enhance_mm / sx), truncate=3.0)
        low -= hu
        low *= np.float32(-app.kernel_enhance)
        hu += low
        del low
    if app.noise_sd_hu > 0:
        noise = nps_noise(hu.shape, spacing_zyx_mm, app, rng)
        if app.noise_centre > 0:  # attenuation-dependent (non-stationary) noise
            noise *= noise_sd_map(hu, spacing_zyx_mm, app.noise_centre)
        if app.bone_streak > 0:
            noise += bone_streaks(hu, spacing_zyx_mm, app.bone_streak * app.noise_sd_hu, rng)
        hu += noise
        del noise
    hu += np.float32(app.offset_hu)
    return hu


# --------------------------------------------------------------------------------------------
# Randomised mode (SynthSeg with CT-aware priors, MONAI intensity transforms)
# --------------------------------------------------------------------------------------------

#: Wide CT-aware priors per tissue class (HU) of the randomised mode.
RANDOM_PRIORS: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -750.0), "gas": (-1000.0, -400.0), "fat": (-300.0, 100.0), "skin": (-150.0, 250.0),
    "muscle": (-100.0, 250.0), "viscera": (-100.0, 300.0), "blood": (-100.0, 500.0), "calcium": (100.0, 1600.0),
    "disc": (-100.0, 350.0), "csf": (-150.0, 200.0), "nerve": (-150.0, 250.0), "ligament": (-100.0, 350.0),
    "bone": (150.0, 2000.0),
}


def _random_prior(tissue: str) -> tuple[float, float]:
    """Prior of a tissue class; classes added later fall back to an older class (or anything)."""
    from spinect.phantom import structures

    fallback = getattr(structures, "TISSUE_FALLBACK", {}).get(tissue)
    return RANDOM_PRIORS.get(tissue) or RANDOM_PRIORS.get(fallback) or (-1000.0, 2000.0)


def _with_thorax_bones(marrow: dict[int, float]) -> dict[int, float]:
    """Marrow of the thorax's bones copied from L1 (no extra draws from the appearance stream)."""
    for c in BONE_CODES:
        marrow.setdefault(c, marrow[STRUCTURE_CODES["L1"]])
    return marrow


def _random_bone(rng: np.random.Generator, ct_aware: bool) -> BoneModel:
    """Bone sub-regions (cortex, marrow per bone, dense rim, islands, endplates) drawn independently."""
    lo, hi = (-950.0, 1600.0)
    pick = (lambda a, b: float(rng.uniform(a, b))) if ct_aware else (lambda a, b: float(rng.uniform(lo, hi)))
    return BoneModel(
        cortex_mm=float(rng.uniform(0.3, 2.0)), cortex_hu=pick(150.0, 2000.0),
        marrow_hu=_with_thorax_bones({c: pick(-250.0, 600.0) for c in LEGACY_BONE_CODES}), dense_hu=pick(0.0, 1500.0),
        depth_mm=float(rng.uniform(0.5, 4.0)), posterior_hu=pick(0.0, 1500.0), texture_rel=float(rng.uniform(0.0, 0.5)),
        texture_mm=float(rng.uniform(0.5, 3.0)), island_fraction=float(rng.uniform(0.0, 0.3)),
        island_hu=pick(-500.0, 800.0), island_mm=float(rng.uniform(2.0, 8.0)),
        endplate_hu=float(rng.uniform(0.0, 800.0)), endplate_mm=float(rng.uniform(0.5, 4.0)),
    )


def random_values(rng: np.random.Generator, *, ct_aware: bool | None = None) -> TissueValues:
    """SynthSeg-style values: every structure code drawn independently, from the wide CT-aware
    prior of its tissue class (``ct_aware``, half the cases by default) or from -950..1600 HU."""
    if ct_aware is None:
        ct_aware = bool(rng.random() < 0.5)
    if ct_aware:
        table = np.full(256, -100.0, np.float32)
        thorax = {STRUCTURE_CODES[n] for n in THORAX_STRUCTURES}
        for code, tissue in STRUCTURE_TISSUE.items():
            if code not in thorax:  # the thorax's codes: from a stream derived below (same draws as before)
                table[code] = rng.uniform(*_random_prior(tissue))
        extra = np.random.default_rng(np.frombuffer(table[:64].tobytes(), np.uint32))
        for code in sorted(thorax):
            table[code] = extra.uniform(*_random_prior(STRUCTURE_TISSUE[code]))
    else:
        table = rng.uniform(-950.0, 1600.0, 256).astype(np.float32)
    bone = _random_bone(rng, ct_aware)
    for code in BONE_CODES:
        table[code] = bone.cortex_hu
    return TissueValues(table, dict(bone.marrow_hu), 0.0, bone)


def _monai(transform, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply one MONAI random transform to a (Z, Y, X) array, seeded from ``rng``."""
    transform.set_random_state(seed=int(rng.integers(0, 2**31 - 1)))
    out = transform(image[None])
    out = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
    return np.ascontiguousarray(out[0], dtype=np.float32)


def _random_blur_or_sharpen(x: np.ndarray, rng: np.random.Generator) -> None:
    """Random Gaussian blur (60 %: sigma 0.3-1.5 voxels in-plane, 0.3-2 along z) or unsharp-mask
    sharpening (40 %), in place. Same role as MONAI's RandGaussianSmooth / RandGaussianSharpen,
    whose torch convolutions take about 10 times longer on one core (2.6 s vs 0.25 s at 18 M voxels)."""
    if rng.random() < 0.6:
        sigma = rng.uniform((0.3, 0.3, 0.3), (2.0, 1.5, 1.5))
        ndimage.gaussian_filter(x, sigma, output=x, truncate=3.0)
        return
    low = ndimage.gaussian_filter(x, rng.uniform(0.5, 1.5, 3), truncate=3.0)
    low -= x
    low *= np.float32(-rng.uniform(0.3, 1.5))
    x += low


def randomise_contrast(hu: np.ndarray, structures: np.ndarray, rng: np.random.Generator, *,
                       blur_and_noise: bool = True) -> np.ndarray:
    """Per-structure texture, then MONAI random bias field, gamma, histogram shift and scaling,
    a random blur or sharpening, MONAI noise; mapped back so the darkest voxel is -1024..-900 HU.

    Args:
        hu: (Z, Y, X) float32 intensities from :func:`random_values`.
        structures: (Z, Y, X) uint8 structure codes (for per-structure texture SD).
        blur_and_noise: False skips the blur/sharpen and noise transforms (clean images).

    Returns:
        (Z, Y, X) float32 image in a CT-like range (a new array).
    """
    from monai.transforms import RandAdjustContrast, RandBiasField, RandGaussianNoise, RandHistogramShift, RandScaleIntensity

    sd = rng.uniform(0.0, 60.0, 256).astype(np.float32)
    tex = rng.random(hu.shape, dtype=np.float32)  # uniform, unit variance: cheaper than normal
    tex -= np.float32(0.5)
    tex *= np.float32(np.sqrt(12.0)) * sd[structures]
    hu += tex
    del tex
    lo, top = float(hu.min()), float(hu.max())
    x = (hu - np.float32(lo)) / np.float32(max(top - lo, 1.0))
    x = _monai(RandBiasField(degree=3, coeff_range=(0.0, 0.25), prob=0.8), x, rng)
    x = _monai(RandAdjustContrast(gamma=(0.6, 1.7), prob=0.8), x, rng)
    x = _monai(RandHistogramShift(num_control_points=(5, 12), prob=0.3), x, rng)
    x = _monai(RandScaleIntensity(factors=0.2, prob=0.5), x, rng)
    if blur_and_noise:
        _random_blur_or_sharpen(x, rng)
        x = _monai(RandGaussianNoise(mean=0.0, std=float(rng.uniform(0.0, 0.03)), prob=0.8), x, rng)
    x -= np.float32(x.min())
    x /= np.float32(max(float(x.max()), 1e-6))
    x *= np.float32(rng.uniform(1500.0, 4000.0))
    x += np.float32(rng.uniform(-1024.0, -900.0))  # the darkest voxel stays air-like (validate_ct)
    return x


# --------------------------------------------------------------------------------------------
# One case's look: the mode's values, its scanner and what goes to the truth JSON
# --------------------------------------------------------------------------------------------


@dataclass
class Look:
    """Appearance of one case.

    Attributes:
        mode: ``ct``, ``v1`` or ``random``. values: what the rasteriser paints.
        scanner: v1 scanner (``v1``; None otherwise). ct: drawn CT parameters (``ct``).
        info: extra facts for the truth (``random``: the prior variant).
    """

    mode: str
    values: TissueValues
    scanner: ScannerSettings | None = None
    ct: CTAppearance | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def finish(self, hu: np.ndarray, structures: np.ndarray, spacing_zyx_mm, rng: np.random.Generator, *,
               noise: bool = True) -> np.ndarray:
        """Scanner (and randomisation) on the rasterised (Z, Y, X) float32 HU; ``noise=False``
        gives the ideal image (no blur, noise, slice profile or calibration offset)."""
        if self.mode == "random":
            return randomise_contrast(hu, structures, rng, blur_and_noise=noise)
        if not noise:
            return hu
        if self.mode == "ct":
            return apply_ct_scanner(hu, self.ct, spacing_zyx_mm, rng)
        return apply_scanner(hu, self.scanner, spacing_zyx_mm, rng)

    def record(self, *, noise: bool) -> dict[str, Any]:
        """The truth JSON's ``appearance`` entry."""
        out: dict[str, Any] = {"mode": self.mode, "randomised": self.mode == "random", "noise_and_blur": bool(noise)}
        if self.mode == "v1":
            out.update(noise_sd_hu=self.scanner.noise_hu if noise else 0.0,
                       psf_fwhm_zyx_mm=list(self.scanner.fwhm_zyx_mm) if noise else [0.0, 0.0, 0.0],
                       tissue_hu=_tissue_hu(self.values))
        elif self.mode == "ct":
            out.update(noise_sd_hu=round(self.ct.noise_sd_hu, 3) if noise else 0.0, tissue_hu=_tissue_hu(self.values),
                       ct=self.ct.to_dict())
        else:
            out.update(noise_sd_hu=None, tissue_hu=None, **self.info)
        return out


def _tissue_hu(values: TissueValues) -> dict[str, float]:
    out = {}
    for code, tissue in STRUCTURE_TISSUE.items():
        out.setdefault("cortical_bone" if tissue == "bone" else tissue, round(float(values.table[code]), 2))
    out["cancellous_bone"] = round(float(np.mean(list(values.cancellous.values()))), 2)
    return out


def sample_look(mode: str, rng: np.random.Generator, spacing_zyx_mm, overrides: Mapping[str, Any] | None = None) -> Look:
    """Draw one case's appearance in ``mode`` from the appearance stream ``rng``.

    ``v1`` draws exactly what the first phantom version drew (values, then scanner).

    Raises:
        SpinectError: bad mode, or overrides outside the ``ct`` mode or invalid.
    """
    mode = appearance_mode(mode)
    if overrides and mode != "ct":
        check_overrides(overrides)
        raise SpinectError(f"appearance_overrides apply to appearance='ct' only, not {mode!r}")
    if mode == "ct":
        app = sample_ct(rng, spacing_zyx_mm, overrides)
        return Look("ct", ct_values(app), ct=app)
    if mode == "v1":
        values = physical_values(rng)
        return Look("v1", values, scanner=sample_scanner(rng))
    ct_aware = bool(rng.random() < 0.5)
    return Look("random", random_values(rng, ct_aware=ct_aware), info={"random_priors": "ct_aware" if ct_aware else "uniform"})
