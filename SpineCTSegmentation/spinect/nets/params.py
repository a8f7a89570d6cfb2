"""Parameter counts, including the Keras convention the SPINECT paper reports (22,581,411)."""

from __future__ import annotations

from torch import nn

__all__ = ["trainable_parameter_count", "keras_parameter_count"]

#: Buffers that Keras counts as (non-trainable) parameters of BatchNormalization.
_KERAS_COUNTED_BUFFERS: tuple[str, ...] = ("running_mean", "running_var")


def trainable_parameter_count(module: nn.Module) -> int:
    """Number of scalars in ``module``'s parameters with ``requires_grad`` (PyTorch's usual count)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def keras_parameter_count(module: nn.Module) -> int:
    """Parameter count as Keras' ``model.count_params()`` reports it.

    Keras counts BatchNormalization's moving mean and variance as non-trainable parameters;
    PyTorch keeps them as buffers (``running_mean``, ``running_var``). ``num_batches_tracked``
    has no Keras counterpart and is left out. Works on modules built on the ``meta`` device.

    Returns:
        trainable parameters + all BatchNorm running-statistics scalars.
    """
    buffers = sum(
        b.numel() for name, b in module.named_buffers() if name.rsplit(".", 1)[-1] in _KERAS_COUNTED_BUFFERS
    )
    return trainable_parameter_count(module) + buffers
