"""Tests for t7synth.nets.unet.ConditionedUNet (arXiv:2507.13782, Appendix A)."""

from __future__ import annotations

import pytest
import torch

from t7synth.nets.unet import (
    ConditionedUNet,
    _ResBlock,
    _SpatialTransformer,
    pad_to_multiple,
)

# Small enough for CPU tests: 2 levels (multiple of 2), attention on the low-resolution level.
TINY = dict(channels=8, norm_groups=4, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,))


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _perturb(net: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    # The zero-initialised output convs make the fresh network output exactly 0 and
    # block most gradients; random offsets make every path observable.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return net


@pytest.mark.parametrize(
    "attention_levels, n_params, n_tensors",
    [((2, 3), 259_109_181, 804), ((3,), 222_326_589, 622)],  # plain U-Net, GAN generator
)
def test_paper_parameter_counts(attention_levels, n_params, n_tensors):
    with torch.device("meta"):
        net = ConditionedUNet(attention_levels=attention_levels)
    assert _n_params(net) == n_params
    # Appendix A.2: the released checkpoints hold 804 / 622 named tensors.
    assert len(net.state_dict()) == n_tensors


def test_paper_per_block_counts():
    with torch.device("meta"):
        net = ConditionedUNet(attention_levels=(2, 3))
    assert _n_params(net.time_embed) == 1_312_768
    assert _n_params(net.input_blocks[0]) == 7_168
    assert _n_params(net.input_blocks[1][0]) == 1_443_586  # ResBlock 256->256
    assert _n_params(net.input_blocks[5][0]) == 4_197_890  # ResBlock 256->512
    assert _n_params(net.input_blocks[4]) == 590_080  # downsample at 256
    assert _n_params(net.middle_block[1]) == 5_254_656  # SpatialTransformer(512) = 20C^2 + 23C
    assert _n_params(net.output_blocks[0][0]) == 8_131_586  # ResBlock 1024->512
    assert _n_params(net.output_blocks[-4][0]) == 2_821_122  # ResBlock 768->256
    assert _n_params(net.output_blocks[-1][0]) == 2_165_250  # ResBlock 512->256
    assert _n_params(net.out) == 2_305
    resblocks = [m for m in net.modules() if isinstance(m, _ResBlock)]
    transformers = [m for m in net.modules() if isinstance(m, _SpatialTransformer)]
    assert (len(resblocks), len(transformers)) == (30, 15)
    skips = [m.skip_connection for m in resblocks if isinstance(m.skip_connection, torch.nn.Conv2d)]
    assert (len(skips), sum(map(_n_params, skips))) == (17, 6_888_960)


def test_reference_state_dict_names():
    with torch.device("meta"):
        keys = set(ConditionedUNet(attention_levels=(3,)).state_dict())
    for key in (
        "time_embed.2.weight",
        "input_blocks.0.0.weight",
        "input_blocks.1.0.phi.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.4.0.op.weight",
        "input_blocks.14.1.transformer_blocks.0.attn2.to_k.weight",
        "middle_block.1.transformer_blocks.0.ff.net.0.proj.weight",
        "output_blocks.3.2.conv.weight",
        "output_blocks.15.0.skip_connection.weight",
        "out.1.weight",
    ):
        assert key in keys, key


@pytest.mark.parametrize(
    "spatial_dims, size, channel_mult",
    [(2, (37, 29), (1, 2)), (2, (37, 29), (1, 2, 2)), (3, (19, 21, 17), (1, 2))],
)
@pytest.mark.parametrize("context_dim", [1, 0])
def test_output_shape_odd_sizes(spatial_dims, size, channel_mult, context_dim):
    cfg = {**TINY, "channel_mult": channel_mult}
    net = ConditionedUNet(spatial_dims=spatial_dims, out_channels=2, context_dim=context_dim, **cfg)
    _perturb(net).eval()
    x = torch.randn(2, 3, *size)
    context = torch.randn(2, 3, context_dim) if context_dim else None
    with torch.no_grad():
        y = net(x, context)
    assert y.shape == (2, 2, *size)
    assert torch.isfinite(y).all()


def test_fresh_network_outputs_zero():
    net = ConditionedUNet(**TINY).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 3, 12, 10), torch.randn(1, 3, 1))
    assert torch.count_nonzero(y) == 0


@pytest.mark.parametrize("spatial_dims, size", [(2, (12, 10)), (3, (8, 6, 10))])
@pytest.mark.parametrize("perturb", [False, True])
def test_gradients_reach_every_parameter(spatial_dims, size, perturb):
    torch.manual_seed(0)
    net = ConditionedUNet(spatial_dims=spatial_dims, **TINY)
    if perturb:
        _perturb(net)
    net(torch.randn(2, 3, *size), torch.randn(2, 3, 1)).sum().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    if perturb:
        assert [n for n, p in net.named_parameters() if not p.grad.any()] == []


def test_context_conditions_the_output():
    torch.manual_seed(0)
    net = _perturb(ConditionedUNet(**TINY)).eval()
    x = torch.randn(1, 3, 16, 12)
    context = torch.tensor([[[0.7], [1.0], [0.2]]])  # age, sex, slice position
    older = context.clone()
    older[0, 0, 0] = 0.8
    with torch.no_grad():
        y, y_older = net(x, context), net(x, older)
        # Tokens carry no positional encoding: their order must not matter.
        y_perm = net(x, context[:, [2, 0, 1]])
    assert not torch.allclose(y, y_older)
    torch.testing.assert_close(y, y_perm, rtol=1e-5, atol=1e-6)


def test_without_context():
    net = _perturb(ConditionedUNet(context_dim=0, **TINY)).eval()
    x = torch.randn(1, 3, 9, 11)
    with torch.no_grad():
        y = net(x)
        torch.testing.assert_close(net(x, torch.randn(1, 3, 1)), y)  # ignored
    assert y.shape == (1, 1, 9, 11)
    assert not any("attn2" in n for n, _ in net.named_parameters())


def test_missing_or_malformed_context_raises():
    net = ConditionedUNet(**TINY)
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="context"):
        net(x)
    with pytest.raises(ValueError, match="context"):
        net(x, torch.randn(1, 3))
    with pytest.raises(ValueError, match="expected x"):
        net(torch.randn(1, 2, 8, 8), torch.randn(1, 3, 1))
    with pytest.raises(ValueError, match="attention_levels"):
        ConditionedUNet(channels=8, norm_groups=4, channel_mult=(1, 2))  # default levels (2, 3)


@pytest.mark.parametrize("meta, cfg", [(True, {}), (False, TINY)])
def test_adadm_adds_two_parameters_per_resblock(meta, cfg):
    with torch.device("meta" if meta else "cpu"):
        with_ada, without = ConditionedUNet(use_ada=True, **cfg), ConditionedUNet(use_ada=False, **cfg)
    n_resblocks = sum(isinstance(m, _ResBlock) for m in with_ada.modules())
    assert _n_params(with_ada) - _n_params(without) == 2 * n_resblocks


def test_adadm_starts_as_the_input_std():
    block = _ResBlock(2, 8, 8, emb_dim=0, groups=4, use_ada=True, dropout=0.0)
    torch.nn.init.normal_(block.out_layers[-1].weight)
    x = torch.randn(2, 8, 6, 6) * 3.0
    no_ada = _ResBlock(2, 8, 8, emb_dim=0, groups=4, use_ada=False, dropout=0.0)
    no_ada.load_state_dict(block.state_dict(), strict=False)
    std = x.flatten(1).std(dim=1).view(2, 1, 1, 1)
    torch.testing.assert_close(block(x, None) - x, (no_ada(x, None) - x) * std)


def test_without_time_embedding():
    net = ConditionedUNet(time_embedding=False, **TINY)
    assert net.time_embed is None
    assert not any("emb_layers" in n for n, _ in net.named_parameters())
    assert net(torch.randn(1, 3, 8, 6), torch.randn(1, 3, 1)).shape == (1, 1, 8, 6)


def test_pad_to_multiple_is_symmetric_and_invertible():
    x = torch.randn(1, 3, 288, 222)
    padded, crop = pad_to_multiple(x, 8)
    assert padded.shape == (1, 3, 288, 224)
    assert padded[..., 0].abs().sum() == 0 and padded[..., -1].abs().sum() == 0
    torch.testing.assert_close(padded[crop], x)


def test_checkpointing_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    plain = _perturb(ConditionedUNet(**{**TINY, "dropout": 0.3}))
    checkpointed = ConditionedUNet(**{**TINY, "dropout": 0.3}, checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x, context = torch.randn(2, 3, 12, 10), torch.randn(2, 3, 1)
    outputs = []
    for net in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout masks: recomputation must replay them
        y = net(x, context)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        outputs.append((y.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(outputs[0][0], outputs[1][0])
    for a, b in zip(outputs[0][1], outputs[1][1]):
        torch.testing.assert_close(a, b)
