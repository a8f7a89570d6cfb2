"""Postprocessing of predicted label maps."""

from spinect.postprocess.smoothing import median_kernel_voxels, median_smooth_labels

__all__ = ["median_kernel_voxels", "median_smooth_labels"]
