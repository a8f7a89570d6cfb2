"""Preprocessing: resampling to the network grid and intensity normalisation."""

from spinect.preprocess.normalize import intensity_statistics, normalise_hu
from spinect.preprocess.resample import ImageGrid, resample_to_reference, resample_to_spacing

__all__ = ["resample_to_spacing", "resample_to_reference", "ImageGrid", "normalise_hu", "intensity_statistics"]
