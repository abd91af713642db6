"""Tests for the official-design WATNet (Qu et al., MedIA 2020)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from t7synth.nets.haar import haar_pyramid
from t7synth.nets.watnet import WAVELET_SUBBANDS, WATNet

REFERENCE_PARAMS = 1_219_139  # counted from Qu et al.'s Caffe prototxt with group: 4
DENSE_PARAMS = 1_467_971  # the released prototxt as trained (its "#group: 4" lines are comments)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def full() -> WATNet:
    torch.manual_seed(0)
    return WATNet().eval()


def _small(**kwargs: int) -> WATNet:
    """A narrow WATNet for behavioural tests (same topology, 16 features)."""
    torch.manual_seed(0)
    return WATNet(features=16, **kwargs)


def test_parameter_count(full: WATNet) -> None:
    count = _count(full)
    assert abs(count - REFERENCE_PARAMS) <= 0.02 * REFERENCE_PARAMS
    assert count == REFERENCE_PARAMS
    assert _count(WATNet(groups=1)) == DENSE_PARAMS


@pytest.mark.parametrize("size", [(64, 64), (37, 29)])
def test_output_shape(full: WATNet, size: tuple[int, int]) -> None:
    with torch.no_grad():
        out = full(torch.rand(1, 3, *size))
    assert out.shape == (1, 3, *size)
    assert torch.isfinite(out).all()


def test_tiny_input_falls_back_to_replicate_padding() -> None:
    with torch.no_grad():
        assert _small()(torch.rand(2, 3, 3, 5)).shape == (2, 3, 3, 5)


def test_global_residual() -> None:
    x = torch.rand(2, 3, 16, 12)
    for model, expected in ((_small(), x), (_small(out_channels=1), x[:, 1:2])):
        nn.init.zeros_(model.out_conv.weight)
        nn.init.zeros_(model.out_conv.bias)
        with torch.no_grad():
            assert torch.equal(model(x), expected)


def test_upsamplers_are_trainable_depthwise_bilinear(full: WATNet) -> None:
    for up in (full.up1, full.up2, full.up3):
        assert isinstance(up, nn.ConvTranspose2d)
        assert up.groups == 64 and up.bias is None and up.weight.requires_grad
        with torch.no_grad():
            constant = up(torch.full((1, 64, 5, 7), 0.7))
            # Linear ramp along W: bilinear upsampling keeps it linear inside.
            ramp = up(torch.arange(7.0).expand(1, 64, 5, 7))
        assert constant.shape == (1, 64, 10, 14)
        assert torch.allclose(constant[..., 1:-1, 1:-1], torch.tensor(0.7), atol=1e-6)
        steps = ramp[..., 2:-2, 1:-1].diff(dim=-1)
        assert torch.allclose(steps, torch.tensor(0.5), atol=1e-6)


def test_initialisation_follows_the_prototxt(full: WATNet) -> None:
    convs = [m for m in full.modules() if isinstance(m, nn.Conv2d)]
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs)
    # Caffe msra with variance_norm AVERAGE: std = sqrt(4 / (fan_in + fan_out)).
    conv = full.dec1.enhance_b[4]  # 48 -> 80, 34,560 weights
    fan_in, fan_out = 48 * 9, 80 * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(4 / (fan_in + fan_out)), rel=0.05)


def test_wavelet_buffers_in_state_dict(full: WATNet) -> None:
    state = full.state_dict()
    assert state["wavelet_mean"].shape == (len(WAVELET_SUBBANDS),) == (10,)
    assert torch.equal(state["wavelet_mean"], torch.zeros(10))
    assert torch.equal(state["wavelet_std"], torch.ones(10))
    assert not full.wavelet_stats_fitted
    assert "wavelet_mean" not in dict(full.named_parameters())


def _slabs(count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    # Smooth structure plus noise and an offset, so every subband has its own mean/std.
    coarse = torch.rand(count, 3, 4, 4, generator=generator)
    smooth = nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear")
    return list((0.5 * smooth + 0.1 * torch.rand(count, 3, 16, 16, generator=generator) + 0.2).split(2))


def test_fit_wavelet_stats_standardises_the_training_wavelets() -> None:
    model = _small()
    slabs = _slabs(6)
    model.fit_wavelet_stats(slab for slab in slabs)  # a one-shot generator: streaming
    assert model.wavelet_stats_fitted
    assert model.wavelet_std[6] != 1.0  # the L3 approximation, ~8x the local mean, was fitted

    with torch.no_grad():
        normalised = model._normalised_wavelets(torch.cat(slabs))
    start = 0
    for level in normalised:
        bands = level.shape[1] // 3
        per_type = level.unflatten(1, (3, bands)).transpose(1, 2).flatten(2)  # (B, bands, rest)
        values = per_type.transpose(0, 1).flatten(1)  # (bands, everything else)
        assert torch.allclose(values.mean(dim=1), torch.zeros(bands), atol=1e-4), WAVELET_SUBBANDS[start:]
        assert torch.allclose(values.std(dim=1, unbiased=False), torch.ones(bands), atol=1e-4)
        start += bands

    restored = _small()
    restored.load_state_dict(model.state_dict())
    assert torch.equal(restored.wavelet_mean, model.wavelet_mean)
    assert torch.equal(restored.wavelet_std, model.wavelet_std)


def test_fit_wavelet_stats_rejects_bad_input() -> None:
    model = _small()
    with pytest.raises(ValueError, match="no batches"):
        model.fit_wavelet_stats([])
    with pytest.raises(ValueError, match="expects"):
        model.fit_wavelet_stats([torch.rand(1, 1, 8, 8)])


def test_normalisation_uses_the_buffers() -> None:
    model = _small()
    x = torch.rand(1, 3, 16, 16)
    model.wavelet_mean.fill_(0.5)
    model.wavelet_std.fill_(2.0)
    for got, raw in zip(model._normalised_wavelets(x), haar_pyramid(x)):
        assert torch.allclose(got, (raw - 0.5) / 2.0)


def test_param_groups_cover_every_parameter_once() -> None:
    model = _small()
    groups = model.param_groups(lr=1e-3, weight_decay=1e-4)
    by_name = {group["name"]: group for group in groups}
    assert set(by_name) == {"weights", "biases", "upsample", "output"}
    ids = [id(p) for group in groups for p in group["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert by_name["biases"]["lr"] == pytest.approx(1e-4)
    assert by_name["output"]["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in by_name["output"]["params"]} == {id(p) for p in model.out_conv.parameters()}
    assert by_name["upsample"]["weight_decay"] == pytest.approx(1e-5)
    assert by_name["weights"]["lr"] == pytest.approx(1e-3)


def test_backward_reaches_every_parameter() -> None:
    model = _small()
    model(torch.rand(2, 3, 16, 16)).abs().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_runs_under_bf16_autocast() -> None:
    model = _small()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(1, 3, 20, 24))
    assert out.shape == (1, 3, 20, 24)
    assert torch.isfinite(out.float()).all()


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        WATNet(spatial_dims=3)
    with pytest.raises(ValueError, match="divisible"):
        WATNet(features=18)
    with pytest.raises(ValueError, match="expects"):
        _small()(torch.rand(1, 1, 16, 16))
