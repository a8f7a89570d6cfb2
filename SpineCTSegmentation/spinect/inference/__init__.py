"""Inference: device choice and sliding-window prediction on the network's 1 mm grid."""

from spinect.inference.device import autocast_dtype, resolve_device
from spinect.inference.sliding_window import (
    BLEND_MODES,
    WindowProgress,
    count_windows,
    monai_overlap,
    predict_labels,
    predict_probabilities,
)

__all__ = [
    "resolve_device",
    "autocast_dtype",
    "BLEND_MODES",
    "WindowProgress",
    "count_windows",
    "monai_overlap",
    "predict_probabilities",
    "predict_labels",
]
