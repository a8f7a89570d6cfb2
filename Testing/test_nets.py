"""The SPINECT 3D U-Net: parameter counts against the paper, shapes, He initialisation, plans."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from spinect.errors import ModelError
from spinect.nets import build_network, keras_parameter_count, trainable_parameter_count

PAPER_PARAMETERS = 22_581_411  # SPINECT paper, Keras count


def _analytic_conv_parameters(base_width: int, levels: int, in_channels: int, num_classes: int) -> int:
    """Convolution weights + biases of the U-Net described in the paper, counted by hand."""
    widths = [base_width * 2**i for i in range(levels)]

    def conv(k: int, cin: int, cout: int) -> int:
        return k**3 * cin * cout + cout

    total = 0
    for i, w in enumerate(widths):  # down path and bottleneck: two 3x3x3 convolutions per level
        total += conv(3, in_channels if i == 0 else widths[i - 1], w) + conv(3, w, w)
    for i in range(levels - 1):  # up path: 2x2x2 transposed conv, then two 3x3x3 on the concatenation
        total += conv(2, widths[i + 1], widths[i]) + conv(3, 2 * widths[i], widths[i]) + conv(3, widths[i], widths[i])
    return total + conv(1, widths[0], num_classes)


def _meta_network(**kwargs) -> nn.Module:
    with torch.device("meta"):  # counts without allocating 90 MB of weights
        return build_network(**kwargs)


def test_paper_parameter_count_with_keras_convention():
    network = _meta_network(base_width=32, levels=5, norm="batch")
    assert keras_parameter_count(network) == PAPER_PARAMETERS


def test_convolutions_alone_match_hand_count():
    network = _meta_network(base_width=32, norm="none")
    expected = _analytic_conv_parameters(32, 5, 1, 3)
    assert expected == 22_575_395
    assert trainable_parameter_count(network) == expected
    assert keras_parameter_count(network) == expected


def test_batchnorm_channels_make_up_the_difference():
    network = _meta_network(base_width=32, norm="batch")
    bn_channels = sum(m.num_features for m in network.modules() if isinstance(m, nn.BatchNorm3d))
    assert 4 * bn_channels == PAPER_PARAMETERS - _analytic_conv_parameters(32, 5, 1, 3)
    # Trainable: gamma and beta only; Keras adds moving mean and variance.
    assert trainable_parameter_count(network) == _analytic_conv_parameters(32, 5, 1, 3) + 2 * bn_channels


def test_instance_norm_sits_where_batch_norm_does():
    batch = _meta_network(base_width=8, norm="batch")
    instance = _meta_network(base_width=8, norm="instance")
    batch_channels = [m.num_features for m in batch.modules() if isinstance(m, nn.BatchNorm3d)]
    instance_channels = [m.num_features for m in instance.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert batch_channels == instance_channels
    assert keras_parameter_count(instance) == _analytic_conv_parameters(8, 5, 1, 3) + 2 * sum(instance_channels)


def test_forward_shape_and_logits():
    torch.manual_seed(0)
    network = build_network(base_width=4).eval()
    with torch.inference_mode():
        logits = network(torch.randn(1, 1, 32, 64, 64))
    assert logits.shape == (1, 3, 32, 64, 64)
    assert logits.dtype == torch.float32
    # Logits, not probabilities: channels do not sum to one.
    assert not torch.allclose(logits.sum(dim=1), torch.ones(1, 32, 64, 64))


def test_other_levels_and_channels():
    network = build_network(base_width=2, levels=3, in_channels=2, num_classes=4).eval()
    with torch.inference_mode():
        assert network(torch.zeros(2, 2, 8, 12, 16)).shape == (2, 4, 8, 12, 16)
    assert trainable_parameter_count(build_network(base_width=2, levels=3, norm="none")) == _analytic_conv_parameters(
        2, 3, 1, 3
    )


def test_he_initialisation():
    torch.manual_seed(1)
    network = build_network(base_width=16)
    checked = 0
    for layer in network.modules():
        if isinstance(layer, (nn.Conv3d, nn.ConvTranspose3d)):
            assert torch.count_nonzero(layer.bias) == 0
            if layer.weight.numel() < 20_000:
                continue  # too few samples for a tight estimate of the spread
            receptive = math.prod(layer.kernel_size)
            # Keras and PyTorch both take fan-in of a transposed conv over its output channels.
            fan_in = receptive * (layer.out_channels if isinstance(layer, nn.ConvTranspose3d) else layer.in_channels)
            std = layer.weight.detach().std().item()
            assert std == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.03)
            assert abs(layer.weight.detach().mean().item()) < 0.05 * std
            checked += 1
    assert checked >= 8


def test_channels_last_gives_same_logits():
    torch.manual_seed(2)
    network = build_network(base_width=4).eval()
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.inference_mode():
        reference = network(x)
        network_cl = network.to(memory_format=torch.channels_last_3d)
        result = network_cl(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(result.contiguous(), reference, rtol=1e-4, atol=1e-5)


def test_architecture_round_trips_through_json():
    architecture = {
        "name": "spinect_unet", "base_width": 4, "levels": 4, "in_channels": 1, "num_classes": 3, "norm": "batch"
    }
    torch.manual_seed(3)
    original = build_network(**architecture)
    rebuilt = build_network(**json.loads(json.dumps(architecture)))
    rebuilt.load_state_dict(original.state_dict(), strict=True)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt.eval()(x), original.eval()(x))


@pytest.mark.parametrize(
    "bad",
    [{"name": "vnet"}, {"norm": "group"}, {"base_width": 0}, {"levels": 1}, {"num_classes": 2.5}, {"base_width": True}],
)
def test_unbuildable_plans_raise_model_error(bad):
    with pytest.raises(ModelError):
        build_network(**bad)
