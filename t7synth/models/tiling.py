"""Whole-volume inference by tiling, shared by validation, test and ``predict``.

2.5D models see a window of ``k`` slices centred on every slice in turn (zero slices
beyond the ends). For ``target: center`` each window's output is the prediction of its
centre slice; models that predict the whole slab (``target: all``) have every slice
averaged over the windows that cover it.

3D models tile overlapping patches at the positions MONAI's ``sliding_window_inference``
uses (``monai.data.utils.dense_patch_slices``: a stride of ``patch - overlap``, the last
window moved back to end at the volume's edge, no padding) and blend them with a Hann
window, which avoids seams. ``tests/inference/test_tiling.py`` checks the result against
``sliding_window_inference`` with the same window as ``roi_weight_map``.

Why not TorchIO's ``GridSampler``/``GridAggregator`` (used before): the sampler pads the
volume by half the overlap on every side, so a 3D volume needs more windows than it
has to (48 instead of MONAI's 36 for the demo volumes, 1.33x the time), and sampler and
aggregator copy the volume. Here nothing is padded or copied whole: 2.5D windows are
gathered slice by slice per batch, and the 3D blend weights are normalised by a
separable sum instead of a full-size weight map (below), so the peak memory is the
input, the output and one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from t7synth.config import GeometryConfig, slab_patch_size
from t7synth.data import batches

#: ``predict(source_batch, location_batch) -> output``: the source is (B, 1, *patch) and
#: ``location`` (B, 6) holds each window's start and end indices in the volume (for a
#: 2.5D window at the volume's ends the start may be negative: the slices outside are
#: zeros, as in training). For ``slab`` geometry the output has the slab's slices as
#: channels, (B, 1, H, W) for ``target: center`` (the centre slice) or (B, k, H, W) for
#: ``all``; for ``patch`` geometry it is (B, 1, *patch).
PatchPredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def window_starts(size: int, patch: int, overlap: int) -> list[int]:
    """Start indices of windows of ``patch`` voxels covering ``size``, ``overlap`` shared.

    MONAI's ``dense_patch_slices`` along one axis: starts at multiples of the stride
    ``patch - overlap`` until a window reaches the end; the last is moved back so that
    it ends at the edge instead of running over it. ``patch >= size`` gives one window.
    """
    if patch >= size:
        return [0]
    stride = max(1, patch - overlap)
    starts = []
    for start in range(0, size, stride):
        starts.append(min(start, size - patch))
        if start + patch >= size:
            break
    return starts


def hann_window(size: int) -> torch.Tensor:
    """1-D Hann weights that are positive at both ends (TorchIO's ``GridAggregator`` window).

    ``torch.hann_window(size + 2)`` without its two zero end points: a voxel that only
    one window covers (at the volume's edge) still gets a positive weight.
    """
    return torch.hann_window(size + 2, periodic=False, dtype=torch.float64)[1:-1].float()


def patch_grid(geometry: GeometryConfig, shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The 3D tiling of a volume of ``shape``: patch size and overlap per axis.

    A patch larger than the volume is cut to it; the overlap is at most ``patch - 2``.
    """
    patch = tuple(min(p, s) for p, s in zip(geometry.patch, shape))
    overlap = tuple(min(geometry.overlap, p - 2) if p > 2 else 0 for p in patch)
    return patch, overlap


@torch.no_grad()
def predict_volume(
    predict: PatchPredictor,
    source: torch.Tensor,
    geometry: GeometryConfig,
    batch_size: int = 16,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Predict a whole (1, I, J, K) volume; returns a float32 (1, I, J, K) CPU tensor.

    Args:
        predict: the model's patch predictor (see :data:`PatchPredictor`). The
            locations it gets index the original volume, as in training, so a 2.5D
            window that starts at ``j`` is centred on slice ``j + k // 2``.
        source: the preprocessed input volume (any device; tiled on the CPU).
        geometry: the model's geometry.
        batch_size: windows or patches per forward pass.
        mask: the (1, I, J, K) brain mask, or None. The prediction is zeroed outside
            it (the target is zero there too), and a window that would write no voxel
            inside it is not run at all (a demo volume has 23 such coronal slabs of
            144; a frame padded around the brain has more). A voxel inside the mask gets
            every window that covers it (each of those contains it), so its value and
            its blend weights are those of the unmasked tiling.
    """
    volume = source.detach()[0].float().cpu()
    inside = None if mask is None else mask.detach()[0].cpu() > 0
    if geometry.mode == "slab":
        output = _predict_slabs(predict, volume, geometry, max(1, batch_size), inside)
    else:
        output = _predict_patches(predict, volume, geometry, max(1, batch_size), inside)
    if inside is not None:
        output *= inside
    return output[None]


def _slab_centres(inside: torch.Tensor | None, n: int, axis: int, half: int, centre_only: bool) -> torch.Tensor:
    """The centre slices of the 2.5D windows worth running: all ``n`` without a mask;
    with one, those whose written slices (the centre, or the whole window for
    ``target: all``) hold a brain voxel."""
    if inside is None:
        return torch.arange(n)
    has_brain = inside.movedim(axis, 0).reshape(n, -1).any(dim=1)
    if not centre_only:
        # Window c writes slices c - half .. c + half: dilate along the slice axis.
        padded = torch.nn.functional.pad(has_brain.float()[None, None], (half, half))
        has_brain = torch.nn.functional.max_pool1d(padded, 2 * half + 1, stride=1)[0, 0] > 0
    return torch.nonzero(has_brain).flatten()


def _predict_slabs(
    predict: PatchPredictor,
    volume: torch.Tensor,
    geometry: GeometryConfig,
    batch_size: int,
    inside: torch.Tensor | None,
) -> torch.Tensor:
    axis, k = geometry.axis, geometry.slices
    half = k // 2
    along = volume.movedim(axis, 0)  # a view: slices first
    n = along.shape[0]
    output = torch.zeros_like(volume)
    out_along = output.movedim(axis, 0)
    average = geometry.target != "center"
    offsets = torch.arange(-half, half + 1)
    wanted = _slab_centres(inside, n, axis, half, centre_only=not average)
    for first in range(0, len(wanted), batch_size):
        centres = wanted[first : first + batch_size]
        size = len(centres)
        index = centres[:, None] + offsets  # (B, k) slice indices, maybe outside
        within = (index >= 0) & (index < n)
        windows = along.index_select(0, index.clamp(0, n - 1).flatten()).reshape(size, k, *along.shape[1:])
        windows *= within.reshape(size, k, 1, 1)  # zero slices beyond the ends
        location = torch.zeros(size, 6, dtype=torch.long)
        location[:, axis] = centres - half
        location[:, 3:] = location[:, :3] + torch.tensor(slab_patch_size(volume.shape, k, axis))
        prediction = predict(batches.channels_to_slab(windows, axis), location).float().cpu()
        if not average:
            out_along[centres] = prediction[:, 0]
            continue
        for offset in range(k):
            # Window c predicts slice c + offset - half in its channel ``offset``.
            rows = within[:, offset]
            out_along.index_add_(0, index[rows, offset], prediction[rows, offset])
    if average:
        # Slice j is covered by the windows centred on j - half .. j + half that exist
        # (all of them run wherever the mask keeps the result).
        centre_index = torch.arange(n)
        counts = (
            torch.minimum(centre_index + half, torch.tensor(n - 1)) - torch.clamp(centre_index - half, min=0) + 1
        ).float()
        out_along /= counts.reshape(n, *([1] * (out_along.ndim - 1)))
    return output


def _predict_patches(
    predict: PatchPredictor,
    volume: torch.Tensor,
    geometry: GeometryConfig,
    batch_size: int,
    inside: torch.Tensor | None,
) -> torch.Tensor:
    shape = volume.shape
    patch, overlap = patch_grid(geometry, shape)
    starts = [window_starts(s, p, o) for s, p, o in zip(shape, patch, overlap)]
    windows_1d = [hann_window(p) for p in patch]
    weight = windows_1d[0][:, None, None] * windows_1d[1][None, :, None] * windows_1d[2][None, None, :]
    output = torch.zeros_like(volume)
    positions = [(i, j, k) for i in starts[0] for j in starts[1] for k in starts[2]]
    if inside is not None:
        positions = [
            (i, j, k) for i, j, k in positions if inside[i : i + patch[0], j : j + patch[1], k : k + patch[2]].any()
        ]
    for first in range(0, len(positions), batch_size):
        chunk = positions[first : first + batch_size]
        windows = torch.stack([volume[i : i + patch[0], j : j + patch[1], k : k + patch[2]] for i, j, k in chunk])[
            :, None
        ]
        start = torch.tensor(chunk, dtype=torch.long)
        location = torch.cat([start, start + torch.tensor(patch)], dim=1)
        prediction = predict(windows, location).float().cpu()
        for (i, j, k), values in zip(chunk, prediction[:, 0]):
            output[i : i + patch[0], j : j + patch[1], k : k + patch[2]].addcmul_(values, weight)
    # The windows form a Cartesian grid of per-axis starts and the weight is a product of
    # per-axis windows, so the weight summed over all windows at (x, y, z) factorises:
    # sum_{a,b,c} w0(x - a) w1(y - b) w2(z - c) = W0(x) W1(y) W2(z). Dividing by three 1-D
    # sums replaces the full-size count map of MONAI and TorchIO (same result, one
    # volume less memory).
    for axis, (size, p, window) in enumerate(zip(shape, patch, windows_1d)):
        total = torch.zeros(size)
        for start in starts[axis]:
            total[start : start + p] += window
        view = [1, 1, 1]
        view[axis] = size
        output /= total.reshape(view)
    return output
