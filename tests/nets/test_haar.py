"""Tests for the torch Haar DWT against PyWavelets (a test-only dependency)."""

from __future__ import annotations

import pytest
import torch

from t7synth.nets.haar import haar_dwt2, haar_idwt2, haar_pyramid

pywt = pytest.importorskip("pywt")


def _random(*shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(sum(shape))
    return torch.rand(*shape, generator=generator, dtype=dtype)


def test_inverse_reconstructs_exactly() -> None:
    x = _random(2, 3, 8, 12)
    assert torch.allclose(haar_idwt2(*haar_dwt2(x)), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (2, 3, 6, 10), (1, 4, 16, 8)])
def test_dwt2_matches_pywt(shape: tuple[int, ...]) -> None:
    x = _random(*shape)
    ours = haar_dwt2(x)
    for b in range(shape[0]):
        for c in range(shape[1]):
            c_a, (c_h, c_v, c_d) = pywt.dwt2(x[b, c].numpy(), "haar")
            for got, expected in zip(ours, (c_a, c_h, c_v, c_d)):
                assert torch.allclose(got[b, c], torch.from_numpy(expected), rtol=0, atol=1e-6)


def test_dwt2_orientation_on_a_known_block() -> None:
    # [[1, 2], [3, 5]]: rows differ by 2..3 (horizontal edge), columns by 1..2.
    a, h, v, d = haar_dwt2(torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=torch.float64))
    assert (a.item(), h.item(), v.item(), d.item()) == (5.5, -2.5, -1.5, 0.5)


def test_pyramid_matches_wavedec2_with_channel_order() -> None:
    x = _random(2, 3, 16, 24)
    w1, w2, w3 = haar_pyramid(x, levels=3)
    assert w1.shape == (2, 9, 8, 12)
    assert w2.shape == (2, 9, 4, 6)
    assert w3.shape == (2, 12, 2, 3)
    for b in range(2):
        for c in range(3):
            c_a3, details3, details2, details1 = pywt.wavedec2(x[b, c].numpy(), "haar", level=3)
            expected = [
                (w1, 3 * c, details1),
                (w2, 3 * c, details2),
                (w3, 4 * c, (c_a3, *details3)),
            ]
            for tensor, first, bands in expected:
                for offset, band in enumerate(bands):
                    got = tensor[b, first + offset]
                    assert torch.allclose(got, torch.from_numpy(band), rtol=0, atol=1e-6)


def test_pyramid_rejects_sizes_not_divisible() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        haar_pyramid(torch.zeros(1, 1, 12, 16))
    with pytest.raises(ValueError, match="even"):
        haar_dwt2(torch.zeros(1, 1, 5, 4))


def test_gradients_flow_and_energy_is_preserved() -> None:
    x = _random(1, 2, 4, 6).requires_grad_()
    energy = sum(band.square().sum() for band in haar_dwt2(x))
    energy.backward()
    # Orthonormal transform: sum of squared coefficients == ||x||^2, so d/dx = 2x.
    assert torch.allclose(energy.detach(), x.detach().square().sum(), atol=1e-12)
    assert x.grad is not None
    assert torch.allclose(x.grad, 2 * x.detach(), atol=1e-12)


def test_runs_in_bf16_under_autocast() -> None:
    x64 = _random(1, 3, 16, 16)
    reference = haar_pyramid(x64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_precision = haar_pyramid(x64.to(torch.bfloat16))
        full_precision = haar_pyramid(x64.float())
        bands = haar_dwt2(x64.to(torch.bfloat16))
        restored = haar_idwt2(*bands)
    for got, expected in zip(low_precision, reference):
        assert got.dtype == torch.bfloat16
        # bf16 has 8 mantissa bits; the level-3 approximation reaches ~8.
        assert torch.allclose(got.double(), expected, rtol=2e-2, atol=2e-2)
    assert all(t.dtype == torch.float32 for t in full_precision)
    assert restored.dtype == torch.bfloat16
    assert torch.allclose(restored.double(), x64, atol=2e-2)
