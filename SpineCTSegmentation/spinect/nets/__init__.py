"""Networks: the SPINECT 3D U-Net and its parameter counts."""

from spinect.nets.params import keras_parameter_count, trainable_parameter_count
from spinect.nets.unet import NORMS, SpinectUNet, build_network, he_initialise

__all__ = [
    "build_network",
    "SpinectUNet",
    "NORMS",
    "he_initialise",
    "keras_parameter_count",
    "trainable_parameter_count",
]
