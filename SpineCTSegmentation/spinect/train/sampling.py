"""Random training patches with class-aware centres, so the rare nerve class is seen often.

Nerves are about 1 % of a lumbosacral CT's voxels: uniformly placed 32 x 64 x 64 patches would
mostly show bone and soft tissue. Like nnU-Net's foreground oversampling, a set share of the
patches is centred on a randomly chosen voxel of a given class (by default one third on nerve,
one third on bone); the rest are centred anywhere in the volume. Every patch is a box of
``region_size_zyx`` voxels centred on its chosen voxel; parts outside the volume are filled with
``pad_image_value`` (air) and label 0, so the chosen voxel is always at the box centre (the
augmentation zooms about that centre, :mod:`spinect.train.augment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["PatchSample", "PatchSampler", "DEFAULT_CLASS_FRACTIONS", "extract_box"]

#: Share of patches centred on a voxel of each class (label value -> share); the rest are random.
DEFAULT_CLASS_FRACTIONS: dict[int, float] = {2: 1.0 / 3.0, 1: 1.0 / 3.0}


@dataclass(frozen=True)
class PatchSample:
    """One sampled box.

    Attributes:
        image: float32 (z, y, x) box of the (normalised) image.
        labels: uint8 (z, y, x) box of the label map.
        case_index: index of the case it came from.
        centre_zyx: voxel of the case at the box centre (``region_size // 2``).
        centre_class: class the centre was drawn from, or -1 for a uniformly random centre.
        structures: uint8 (z, y, x) box of the case's phantom structure map, or None.
    """

    image: np.ndarray
    labels: np.ndarray
    case_index: int
    centre_zyx: tuple[int, int, int]
    centre_class: int
    structures: np.ndarray | None = None


class PatchSampler:
    """Draws boxes from a list of (image, label) volumes.

    Args:
        images: float32 (z, y, x) volumes (already normalised).
        labels: uint8 (z, y, x) label maps of the same shapes.
        region_size_zyx: box size in voxels (the patch, or larger to leave room for zooming).
        class_fractions: label value -> share of boxes centred on that class; shares sum <= 1.
            A class absent from every case falls back to a random centre.
        pad_image_value: image value outside the volume (normalised air).
        structures: per case, a uint8 structure map of the same shape or None (boxes of it come
            with the samples, code 0 = air outside the volume).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        *,
        region_size_zyx: Sequence[int],
        class_fractions: Mapping[int, float] = DEFAULT_CLASS_FRACTIONS,
        pad_image_value: float = 0.0,
        structures: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        if len(images) != len(labels) or not images:
            raise ValueError("need the same, non-zero number of images and label maps")
        structures = list(structures) if structures is not None else [None] * len(images)
        if len(structures) != len(images) or any(c is not None and c.shape != i.shape for c, i in zip(structures, images)):
            raise ValueError("structure maps must be given per case, each of its image's shape (or None)")
        for image, label in zip(images, labels):
            if image.shape != label.shape or image.ndim != 3:
                raise ValueError(f"image {image.shape} and labels {label.shape} must be equal 3D shapes")
        if sum(class_fractions.values()) > 1.0 + 1e-9 or min(class_fractions.values(), default=0) < 0:
            raise ValueError(f"class fractions must be >= 0 and sum to <= 1, got {dict(class_fractions)}")
        self.images = list(images)
        self.labels = list(labels)
        self.structures = structures
        self.region_size_zyx = tuple(int(s) for s in region_size_zyx)
        self.class_fractions = dict(class_fractions)
        self.pad_image_value = float(pad_image_value)
        # Flat voxel indices of each class per case, computed once (cheap at 1 mm).
        self._voxels = {k: [np.flatnonzero(lab == k) for lab in self.labels] for k in self.class_fractions}

    def sample(self, rng: np.random.Generator) -> PatchSample:
        """One box; the centre's class is drawn first, then a case holding it, then a voxel."""
        wanted = self._draw_class(rng)
        if wanted >= 0:
            holders = [i for i, v in enumerate(self._voxels[wanted]) if v.size]
            case = holders[int(rng.integers(len(holders)))]
            flat = self._voxels[wanted][case][int(rng.integers(self._voxels[wanted][case].size))]
            centre = tuple(int(c) for c in np.unravel_index(flat, self.labels[case].shape))
        else:
            case = int(rng.integers(len(self.images)))
            centre = tuple(int(rng.integers(n)) for n in self.images[case].shape)
        image = extract_box(self.images[case], centre, self.region_size_zyx, fill=self.pad_image_value)
        labels = extract_box(self.labels[case], centre, self.region_size_zyx, fill=0)
        codes = self.structures[case]
        codes = None if codes is None else extract_box(codes, centre, self.region_size_zyx, fill=0)
        return PatchSample(image=image, labels=labels, case_index=case, centre_zyx=centre, centre_class=wanted,
                           structures=codes)

    def _draw_class(self, rng: np.random.Generator) -> int:
        u = float(rng.random())
        for label_value, share in self.class_fractions.items():
            if u < share:
                present = any(v.size for v in self._voxels[label_value])
                return label_value if present else -1
            u -= share
        return -1


def extract_box(volume: np.ndarray, centre_zyx: Sequence[int], size_zyx: Sequence[int], *, fill: float) -> np.ndarray:
    """The ``size_zyx`` box of ``volume`` whose voxel ``size // 2`` is ``centre_zyx``.

    Voxels outside ``volume`` are ``fill``. Returns a new array of ``volume``'s dtype.
    """
    out = np.full(tuple(size_zyx), fill, dtype=volume.dtype)
    source, target = [], []
    for c, size, n in zip(centre_zyx, size_zyx, volume.shape):
        start = int(c) - int(size) // 2
        lo, hi = max(start, 0), min(start + int(size), n)
        if hi <= lo:
            return out
        source.append(slice(lo, hi))
        target.append(slice(lo - start, hi - start))
    out[tuple(target)] = volume[tuple(source)]
    return out
