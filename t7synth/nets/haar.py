"""Differentiable 2D Haar wavelet transform in pure torch.

WATNet (Qu et al., MedIA 2020) feeds three levels of 2D Haar wavelet
coefficients of its input slices into its encoder. The official code computed
them offline in MATLAB, and Cui et al.'s reimplementation calls PyWavelets on
the CPU inside ``forward`` (a host round trip per sample). This module instead
computes the transform with tensor slicing, so it runs on the input's device
and dtype, is exact, and is differentiable.

Conventions (identical to ``pywt.dwt2(x, 'haar')`` and MATLAB's ``dwt2``):
for every non-overlapping 2×2 block ``[[p, q], [r, s]]`` of the last two axes
(rows = H, columns = W),

* ``a = (p + q + r + s) / 2``: approximation (``cA``);
* ``h = (p + q - r - s) / 2``: horizontal detail (``cH``), a difference
  between rows, so it responds to horizontal edges;
* ``v = (p - q + r - s) / 2``: vertical detail (``cV``), a difference
  between columns;
* ``d = (p - q - r + s) / 2``: diagonal detail (``cD``).

The Haar filters have length 2, so for even sizes there is no boundary
extension and PyWavelets' default ``mode='symmetric'`` has no effect: the
coefficients agree exactly (up to rounding). The 4×4 butterfly is orthonormal,
so :func:`haar_idwt2` is the same butterfly applied backwards.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["haar_dwt2", "haar_idwt2", "haar_pyramid"]


def haar_dwt2(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One level of the 2D Haar DWT over the last two axes.

    Args:
        x: Tensor of shape ``(..., H, W)`` (typically ``(B, C, H, W)``) with even
            ``H`` and ``W``, floating point.

    Returns:
        ``(a, h, v, d)``: approximation, horizontal, vertical and diagonal
        detail, each of shape ``(..., H/2, W/2)`` and of ``x``'s dtype and device.
        They equal ``pywt.dwt2(x, 'haar')``'s ``cA, (cH, cV, cD)``.

    Raises:
        ValueError: If ``x`` has fewer than 2 dims or an odd ``H`` or ``W``.
    """
    if x.ndim < 2:
        raise ValueError(f"haar_dwt2 needs at least 2 dims (..., H, W), got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if height % 2 or width % 2:
        raise ValueError(f"haar_dwt2 needs even H and W, got {height}x{width}")
    # Strided views of the four pixels of every 2x2 block: no copies, no conv, so
    # the result is exact and autocast leaves the dtype alone.
    p = x[..., 0::2, 0::2]
    q = x[..., 0::2, 1::2]
    r = x[..., 1::2, 0::2]
    s = x[..., 1::2, 1::2]
    # Separable butterfly: sums/differences along W first, then along H.
    top_sum, top_diff = p + q, p - q
    bottom_sum, bottom_diff = r + s, r - s
    a = (top_sum + bottom_sum) * 0.5
    h = (top_sum - bottom_sum) * 0.5
    v = (top_diff + bottom_diff) * 0.5
    d = (top_diff - bottom_diff) * 0.5
    return a, h, v, d


def haar_idwt2(a: Tensor, h: Tensor, v: Tensor, d: Tensor) -> Tensor:
    """Exact inverse of :func:`haar_dwt2`.

    Args:
        a: Approximation, shape ``(..., h, w)``.
        h: Horizontal detail, same shape.
        v: Vertical detail, same shape.
        d: Diagonal detail, same shape.

    Returns:
        The reconstructed tensor of shape ``(..., 2h, 2w)``.

    Raises:
        ValueError: If the four subbands differ in shape.
    """
    if not (a.shape == h.shape == v.shape == d.shape):
        raise ValueError(
            "haar_idwt2 needs four subbands of one shape, got "
            f"{tuple(a.shape)}, {tuple(h.shape)}, {tuple(v.shape)}, {tuple(d.shape)}"
        )
    # The forward butterfly is orthonormal (a 4x4 Hadamard matrix / 2), so the
    # inverse is the same butterfly run in the other order.
    top_sum, bottom_sum = a + h, a - h
    top_diff, bottom_diff = v + d, v - d
    p = (top_sum + top_diff) * 0.5
    q = (top_sum - top_diff) * 0.5
    r = (bottom_sum + bottom_diff) * 0.5
    s = (bottom_sum - bottom_diff) * 0.5
    # Interleave columns (p q / r s), then rows.
    top = torch.stack((p, q), dim=-1).flatten(-2)  # (..., h, 2w)
    bottom = torch.stack((r, s), dim=-1).flatten(-2)
    return torch.stack((top, bottom), dim=-2).flatten(-3, -2)  # (..., 2h, 2w)


def haar_pyramid(x: Tensor, levels: int = 3) -> list[Tensor]:
    """Multi-level Haar decomposition stacked as WATNet's wavelet inputs.

    Level ``l`` (1-based) is computed from the level ``l-1`` approximation, as in
    ``pywt.wavedec2(x, 'haar', level=levels)``. Details of levels
    ``1 .. levels-1`` are returned alone; the coarsest level also carries its
    approximation, because WATNet's last WAT layer sees the low-pass content too.

    Channel order is slice-major: for input channel (slice) ``c`` the level-``l``
    tensor holds ``(H, V, D)`` of slice ``c`` at channels ``3c .. 3c+2`` (levels
    below ``levels``) or ``(A, H, V, D)`` at channels ``4c .. 4c+3`` (the last
    level). For 3 slices and ``levels=3`` this gives WATNet's
    ``W1`` (9 ch, H/2), ``W2`` (9 ch, H/4) and ``W3`` (12 ch, H/8).

    Args:
        x: Tensor of shape ``(B, C, H, W)``; ``H`` and ``W`` must be divisible
            by ``2**levels``.
        levels: Number of decomposition levels, at least 1.

    Returns:
        A list of ``levels`` tensors: ``[W1, ..., W_levels]`` with shapes
        ``(B, 3C, H/2**l, W/2**l)`` for ``l < levels`` and
        ``(B, 4C, H/2**levels, W/2**levels)`` for the last.

    Raises:
        ValueError: If ``x`` is not 4D, ``levels < 1``, or the spatial size is
            not divisible by ``2**levels``.
    """
    if x.ndim != 4:
        raise ValueError(f"haar_pyramid expects (B, C, H, W), got shape {tuple(x.shape)}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    factor = 2**levels
    height, width = x.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(f"haar_pyramid with {levels} levels needs H and W divisible by {factor}, got {height}x{width}")
    batch, channels = x.shape[:2]
    outputs: list[Tensor] = []
    approx = x
    for level in range(1, levels + 1):
        a, h, v, d = haar_dwt2(approx)
        bands = (a, h, v, d) if level == levels else (h, v, d)
        # stack on dim 2 -> (B, C, k, h, w); flattening C and k gives slice-major order.
        stacked = torch.stack(bands, dim=2)
        outputs.append(stacked.reshape(batch, channels * len(bands), *stacked.shape[-2:]))
        approx = a
    return outputs
