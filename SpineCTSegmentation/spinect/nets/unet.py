"""The SPINECT 3D U-Net (Fan, Liu et al.; Keras 2.1.1 original), rebuilt in PyTorch.

What the paper states: encoder and decoder with 4 skip connections between levels of equal
resolution, a final 1x1x1 convolution to 3 classes followed by softmax, 32 x 64 x 64 input tiles,
He initialisation and **22,581,411 parameters** (Keras counting).

What we add (a standard 3D U-Net that reproduces that count exactly):

* 5 resolution levels of widths ``base_width * 2**i`` (32-64-128-256-512); each level is two
  3x3x3 convolutions (padding 1, with bias) each followed by ReLU; 2x2x2 max-pooling going down;
  a 2x2x2 stride-2 transposed convolution that halves the channels going up; the skip is
  concatenated to the up-sampled features before the level's two convolutions.
* Convolutions alone (biases, transposed convolutions and the 1x1x1 head included) give
  22,575,395 parameters for ``base_width=32``. The remaining 6,016 = 4 x 1,504 are BatchNorm
  channels as Keras counts them (gamma, beta, moving mean, moving variance).

**Assumption (BatchNorm placement).** The paper does not say where BatchNorm sits. Every layout
that treats all contracting levels alike and reaches exactly 1,504 channels normalises both
convolutions of the bottleneck (2 x 512) plus one 32-64-128-256 set (480). We normalise the
*output* of each contracting level, i.e. the features that feed both the skip connection and
the pooling (after the second convolution, before its ReLU), and both bottleneck convolutions;
the expanding path has none::

    level 0..3 (down): conv-ReLU, conv-BN-ReLU        -> 32+64+128+256 = 480
    bottleneck:        conv-BN-ReLU, conv-BN-ReLU     -> 512+512       = 1024
    levels 3..0 (up):  upconv, concat, conv-ReLU, conv-ReLU              0
                                                                      1,504

Equivalent counts (BN after the first down convolution, after each pooling, or after one
convolution per up level instead of per down level) cannot be told apart by the parameter total.
``norm="instance"`` puts affine InstanceNorm at the same places; ``norm="none"`` drops them.

``forward`` returns logits (N, C, Z, Y, X); softmax belongs to inference and to the loss. The
network uses no ``view``/``reshape``, so it also runs on ``torch.channels_last_3d`` tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from spinect.errors import ModelError

__all__ = ["SpinectUNet", "NORMS", "build_network", "he_initialise"]

#: Accepted values of the ``norm`` argument.
NORMS: tuple[str, ...] = ("batch", "instance", "none")

_NETWORK_NAMES: tuple[str, ...] = ("spinect_unet",)


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    if norm == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    return nn.Identity()


class _ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions, each followed by optional normalisation and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: str, normalise: tuple[bool, bool]) -> None:
        layers: list[nn.Module] = []
        for index, wanted in enumerate(normalise):
            layers.append(nn.Conv3d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1))
            if wanted and norm != "none":
                layers.append(_norm_layer(norm, out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SpinectUNet(nn.Module):
    """SPINECT 3D U-Net: ``levels`` resolution levels, concatenated skips, 1x1x1 head.

    Args:
        base_width: channels of the first level; level ``i`` has ``base_width * 2**i``.
        levels: resolution levels including the bottleneck (SPINECT: 5). Inputs must have each
            spatial size divisible by ``2**(levels - 1)``.
        in_channels: input channels (1: normalised CT).
        num_classes: output channels (3: background, bone, nerve).
        norm: ``"batch"``, ``"instance"`` or ``"none"`` (placement: see the module docstring).

    Shapes:
        input (N, in_channels, Z, Y, X) float -> logits (N, num_classes, Z, Y, X).
    """

    def __init__(self, *, base_width: int, levels: int, in_channels: int, num_classes: int, norm: str) -> None:
        super().__init__()
        self.levels = levels
        self.num_classes = num_classes
        widths = [base_width * 2**i for i in range(levels)]
        self.encoder = nn.ModuleList()
        for i, width in enumerate(widths):
            bottom = i == levels - 1
            source = in_channels if i == 0 else widths[i - 1]
            self.encoder.append(_ConvBlock(source, width, norm=norm, normalise=(bottom, True)))
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        # Up path ordered from deepest to shallowest.
        self.upsample = nn.ModuleList(
            nn.ConvTranspose3d(widths[i + 1], widths[i], kernel_size=2, stride=2) for i in reversed(range(levels - 1))
        )
        self.decoder = nn.ModuleList(
            _ConvBlock(2 * widths[i], widths[i], norm=norm, normalise=(False, False))
            for i in reversed(range(levels - 1))
        )
        self.head = nn.Conv3d(widths[0], num_classes, kernel_size=1)
        he_initialise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes, Z, Y, X) for input (N, in_channels, Z, Y, X)."""
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.encoder):
            x = block(x)
            if i < self.levels - 1:
                skips.append(x)
                x = self.pool(x)
        for upsample, block, skip in zip(self.upsample, self.decoder, reversed(skips)):
            x = block(torch.cat([skip, upsample(x)], dim=1))
        return self.head(x)


def he_initialise(module: nn.Module) -> None:
    """He (Kaiming normal, fan_in, ReLU gain) weights and zero biases for every convolution.

    Keras' ``he_normal`` also counts fan-in of a transposed convolution over its *output*
    channels, as PyTorch's ``kaiming_normal_`` does for ``ConvTranspose3d`` weights.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def build_network(
    *,
    name: str = "spinect_unet",
    base_width: int = 32,
    levels: int = 5,
    in_channels: int = 1,
    num_classes: int = 3,
    norm: str = "batch",
) -> nn.Module:
    """Build the network a model plan's ``architecture`` dict describes.

    All arguments are JSON scalars, so ``build_network(**plan.architecture)`` round-trips through
    the plan's JSON. ``base_width=32`` is the paper's network (22,581,411 Keras parameters).

    Returns:
        A freshly He-initialised :class:`SpinectUNet` (training mode, on the default device).

    Raises:
        ModelError: unknown ``name`` or ``norm``, or non-positive sizes (a plan this code cannot build).
    """
    if name not in _NETWORK_NAMES:
        raise ModelError(
            f"unknown network {name!r} in the model plan (known: {', '.join(_NETWORK_NAMES)}); "
            "upgrade spinect or use another model"
        )
    if norm not in NORMS:
        raise ModelError(f"unknown norm {norm!r} in the model plan; use one of {', '.join(NORMS)}")
    minimum = {"base_width": 1, "levels": 2, "in_channels": 1, "num_classes": 1}
    values = {"base_width": base_width, "levels": levels, "in_channels": in_channels, "num_classes": num_classes}
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum[key]:
            raise ModelError(f"network {key} in the model plan must be an integer >= {minimum[key]}, got {value!r}")
    return SpinectUNet(
        base_width=base_width, levels=levels, in_channels=in_channels, num_classes=num_classes, norm=norm
    )
