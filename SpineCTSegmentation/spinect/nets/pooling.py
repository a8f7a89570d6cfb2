"""A faster CPU stand-in for 2x2x2 max-pooling in inference copies of a network.

On the CPU, PyTorch's ``max_pool3d`` of a bfloat16 ``channels_last_3d`` tensor goes through a
kernel that also computes the arg-max indices; for the SPINECT U-Net's full-resolution level
(4 windows x 6 channels x 32 x 64 x 64) it took 14.9 ms on one core of this project's EPYC, where
three pairwise maxima of strided views (z, then y, then x) take 1.2 ms. The result is identical
(a maximum is exact in any order), so inference copies use :class:`PairwiseMaxPool3d`; training
keeps ``nn.MaxPool3d`` because their gradients differ at ties.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PairwiseMaxPool3d", "replace_max_pools"]


class PairwiseMaxPool3d(nn.Module):
    """``nn.MaxPool3d(kernel_size=2, stride=2)`` as three pairwise maxima of strided views.

    Shapes:
        input (N, C, Z, Y, X) -> (N, C, Z // 2, Y // 2, X // 2); an odd last plane along an axis
        is dropped, as ``max_pool3d`` (``ceil_mode=False``) drops it. The memory format of the
        input is kept.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, y, x_size = (2 * (n // 2) for n in x.shape[2:])
        x = x[:, :, :z, :y, :x_size]
        x = torch.maximum(x[:, :, 0::2], x[:, :, 1::2])
        x = torch.maximum(x[:, :, :, 0::2], x[:, :, :, 1::2])
        return torch.maximum(x[..., 0::2], x[..., 1::2])


def _is_plain_2x2x2(layer: nn.Module) -> bool:
    def triple(value) -> tuple:
        return tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3

    return (
        type(layer) is nn.MaxPool3d
        and triple(layer.kernel_size) == (2, 2, 2)
        and triple(layer.stride or layer.kernel_size) == (2, 2, 2)
        and triple(layer.padding) == (0, 0, 0)
        and triple(layer.dilation) == (1, 1, 1)
        and not layer.ceil_mode
        and not layer.return_indices
    )


def replace_max_pools(module: nn.Module) -> int:
    """Swap every plain 2x2x2 stride-2 ``nn.MaxPool3d`` inside ``module`` for :class:`PairwiseMaxPool3d`.

    Pools with padding, dilation, ``ceil_mode`` or ``return_indices`` are left alone. Modifies
    ``module`` in place (use it on an inference copy); returns how many layers were swapped.
    """
    swapped = 0
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if _is_plain_2x2x2(child):
                setattr(parent, name, PairwiseMaxPool3d())
                swapped += 1
    return swapped
