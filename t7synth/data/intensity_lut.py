"""The intensity-mapping baseline: a 3T-to-7T lookup table fitted on training subjects.

It maps each 3T intensity to the mean 7T intensity of the training voxels that had
it, inside the brain. That undoes global contrast changes (the demo's grey/white
compression, a scanner's different T1 contrast) but cannot sharpen or denoise, so a
network that merely learns intensities shows no gain over it. Every evaluation
reports it next to the identity baseline.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

DEFAULT_BINS = 256


def fit_lut(pairs: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], bins: int = DEFAULT_BINS) -> torch.Tensor:
    """Fit the table from ``(source, target, mask)`` volumes in [0, 1].

    Returns:
        (bins,) float32 tensor: the mean target for each source bin over [0, 1]. Empty
        bins are filled by linear interpolation between their filled neighbours.
    """
    sums = torch.zeros(bins, dtype=torch.float64)
    counts = torch.zeros(bins, dtype=torch.float64)
    for source, target, mask in pairs:
        inside = mask > 0
        x = source[inside].double().clamp(0, 1)
        y = target[inside].double()
        index = (x * (bins - 1)).round().long()
        sums.index_add_(0, index, y)
        counts.index_add_(0, index, torch.ones_like(y))
    filled = counts > 0
    if not bool(filled.any()):
        return torch.linspace(0, 1, bins)
    centres = torch.linspace(0, 1, bins, dtype=torch.float64)
    values = _interp(centres, centres[filled], sums[filled] / counts[filled])
    return values.float()


def apply_lut(table: torch.Tensor, source: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Map ``source`` through ``table`` (linear between bins); zero outside ``mask``."""
    bins = table.numel()
    position = source.float().clamp(0, 1) * (bins - 1)
    low = position.floor().long().clamp(max=bins - 1)
    high = (low + 1).clamp(max=bins - 1)
    frac = position - low
    table = table.to(source.device, torch.float32)
    mapped = table[low] * (1 - frac) + table[high] * frac
    if mask is not None:
        mapped = mapped * (mask > 0)
    return mapped


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """``numpy.interp`` in torch: piecewise linear, constant beyond the ends."""
    index = torch.searchsorted(xp, x).clamp(1, max(len(xp) - 1, 1))
    if len(xp) == 1:
        return fp.expand_as(x).clone()
    x0, x1 = xp[index - 1], xp[index]
    y0, y1 = fp[index - 1], fp[index]
    t = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return y0 + t * (y1 - y0)
