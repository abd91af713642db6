"""Tests for t7synth.nets.vnet.VNet (Cui et al. 2024)."""

from __future__ import annotations

import pytest
import torch

from t7synth.nets.vnet import VNet

TINY = dict(channels=(4, 4, 8, 8, 8))


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_published_parameter_count(norm):
    with torch.device("meta"):
        net = VNet(norm=norm)
    assert _n_params(net) == 15_734_497


def test_reference_state_dict_names():
    with torch.device("meta"):
        keys = set(VNet().state_dict())
    for key in (
        "in_tr.conv1.weight",
        "down_tr32.down_conv.weight",
        "down_tr256.ops.2.relu1.weight",
        "up_tr256.up_conv.weight",
        "up_tr32.ops.0.bn1.running_mean",
        "out_tr.bias",
    ):
        assert key in keys, key
    assert "up_tr256.up_conv.bias" not in keys


@pytest.mark.parametrize("size", [(32, 32, 32), (33, 17, 20)])
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_output_shape(size, norm):
    net = VNet(norm=norm, **TINY).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 1, *size))
    assert y.shape == (2, 1, *size)
    assert torch.isfinite(y).all()


def test_2d_and_multichannel():
    net = VNet(spatial_dims=2, in_channels=2, out_channels=3, **TINY).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, 37, 29)).shape == (1, 3, 37, 29)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = VNet(**TINY)
    net(torch.randn(2, 1, 16, 16, 16)).sum().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("train", [False, True])
def test_bf16_autocast_cpu(train):
    net = VNet(**TINY).train(train)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(torch.rand(2, 1, 33, 17, 20))
    assert y.shape == (2, 1, 33, 17, 20)
    assert torch.isfinite(y.float()).all()


def test_invalid_configurations_raise():
    with pytest.raises(ValueError, match="5 stage widths"):
        VNet(channels=(16, 32, 64, 128))
    with pytest.raises(ValueError, match="norm"):
        VNet(norm="group")
    with pytest.raises(ValueError, match="expected x"):
        VNet(**TINY)(torch.randn(1, 1, 16, 16))
