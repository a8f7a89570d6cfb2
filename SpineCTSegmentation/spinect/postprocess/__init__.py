"""Postprocessing of predicted label maps: median smoothing and false-positive island removal."""

from spinect.postprocess.islands import RemovedIsland, suppress_islands
from spinect.postprocess.smoothing import median_kernel_voxels, median_smooth_labels

__all__ = ["median_kernel_voxels", "median_smooth_labels", "suppress_islands", "RemovedIsland"]
