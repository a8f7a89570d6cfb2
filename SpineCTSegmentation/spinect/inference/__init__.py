"""Inference: device choice and sliding-window prediction on the network's 1 mm grid."""

from spinect.inference.device import autocast_dtype, cpu_has_native_bfloat16, resolve_device
from spinect.inference.sliding_window import (
    BLEND_MODES,
    DeviceOutOfMemory,
    WindowProgress,
    argmax_labels,
    count_windows,
    is_out_of_memory,
    mirror_flip_dims,
    monai_overlap,
    predict_labels,
    predict_labels_and_probabilities,
    predict_probabilities,
    quantise_probabilities,
    run_with_cpu_fallback,
)

__all__ = [
    "resolve_device",
    "autocast_dtype",
    "cpu_has_native_bfloat16",
    "BLEND_MODES",
    "WindowProgress",
    "count_windows",
    "monai_overlap",
    "predict_probabilities",
    "predict_labels",
    "predict_labels_and_probabilities",
    "quantise_probabilities",
    "argmax_labels",
    "run_with_cpu_fallback",
    "is_out_of_memory",
    "mirror_flip_dims",
    "DeviceOutOfMemory",
]
