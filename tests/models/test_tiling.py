"""Whole-volume tiling: 3D against MONAI's sliding_window_inference, 2.5D against a plain slice loop."""

from __future__ import annotations

import pytest
import torch

from t7synth.config import GeometryConfig
from t7synth.models.tiling import hann_window, predict_volume, window_starts


def _conv_net(dims: int, channels_in: int, channels_out: int, seed: int = 0):
    # Zero-padded convolutions: a voxel's output depends on where it sits in its window,
    # so overlapping windows disagree and only a correct blend reproduces the reference.
    torch.manual_seed(seed)
    conv = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(channels_in, channels_out, 3, padding=1)
    return conv.eval()


@pytest.mark.parametrize(
    ("shape", "patch", "overlap"),
    [
        ((21, 30, 17), (8, 12, 8), 4),
        ((16, 16, 16), (16, 8, 20), 2),
        ((19, 13, 24), (6, 6, 6), 2),
        ((20, 17, 23), (9, 7, 8), 3),
    ],
)
def test_3d_matches_monai_sliding_window_with_the_same_window(shape, patch, overlap):
    from monai.inferers import sliding_window_inference

    net = _conv_net(3, 1, 1)
    volume = torch.rand(1, *shape)
    geometry = GeometryConfig(mode="patch", patch=list(patch), overlap=overlap)
    calls = []

    def predict(windows, location):
        calls.append(len(windows))
        # The locations index the volume: the window's content is found there.
        for window, loc in zip(windows, location):
            i, j, k, i1, j1, k1 = loc.tolist()
            assert torch.equal(window[0], volume[0, i:i1, j:j1, k:k1])
        return net(windows)

    ours = predict_volume(predict, volume, geometry, batch_size=5)
    roi = tuple(min(p, s) for p, s in zip(patch, shape))
    weight = (
        hann_window(roi[0])[:, None, None] * hann_window(roi[1])[None, :, None] * hann_window(roi[2])[None, None, :]
    )
    monai_calls = []

    def monai_predict(windows):
        monai_calls.append(len(windows))
        return net(windows)

    with torch.no_grad():
        reference = sliding_window_inference(
            volume[None],
            roi,
            sw_batch_size=5,
            predictor=monai_predict,
            overlap=[min(overlap, r - 2) / r for r in roi],
            roi_weight_map=weight,
        )[0]
    assert ours.shape == volume.shape and ours.dtype == torch.float32
    assert sum(calls) == sum(monai_calls)  # the same windows, no padding
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_window_starts_cover_the_axis_like_monai():
    from monai.data.utils import dense_patch_slices

    for size, patch, overlap in [(40, 16, 4), (16, 16, 2), (10, 16, 2), (33, 8, 6), (9, 4, 0)]:
        ours = window_starts(size, patch, overlap)
        monai = sorted(
            {s[0].start for s in dense_patch_slices((size,), (min(patch, size),), (max(1, patch - overlap),))}
        )
        assert ours == monai
        assert ours[0] == 0 and ours[-1] + min(patch, size) == size


def _plain_slice_loop(net, volume, axis, k, target):
    """The reference: every slice's zero-padded k-slice window, one at a time."""
    along = volume[0].movedim(axis, 0)
    n, half = along.shape[0], k // 2
    padded = torch.cat([torch.zeros(half, *along.shape[1:]), along, torch.zeros(half, *along.shape[1:])])
    total = torch.zeros_like(along)
    count = torch.zeros(n)
    for centre in range(n):
        out = net(padded[centre : centre + k][None])[0] + centre  # the slice's own index
        if target == "center":
            total[centre] = out[0]
            count[centre] = 1
            continue
        for offset in range(k):
            j = centre + offset - half
            if 0 <= j < n:
                total[j] += out[offset]
                count[j] += 1
    return (total / count.reshape(n, 1, 1)).movedim(0, axis)[None]


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize(("target", "batch_size"), [("center", 4), ("center", 64), ("all", 3)])
def test_slabs_match_a_plain_slice_loop(axis, target, batch_size):
    k = 3 if target == "center" else 5
    net = _conv_net(2, k, 1 if target == "center" else k, seed=axis)
    volume = torch.rand(1, 9, 11, 7)
    geometry = GeometryConfig(mode="slab", slices=k, axis=axis, target=target)

    def predict(slab, location):
        x = slab[:, 0].movedim(axis + 1, 1)
        # The location gives each window's centre slice, as training does.
        centre = location[:, axis] + k // 2
        assert torch.equal(location[:, 3 + axis] - location[:, axis], torch.full_like(centre, k))
        return net(x) + centre.reshape(-1, 1, 1, 1).float()

    with torch.no_grad():
        expected = _plain_slice_loop(net, volume, axis, k, target)
    ours = predict_volume(predict, volume, geometry, batch_size=batch_size)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_identity_slabs_reproduce_the_volume_exactly():
    volume = torch.rand(1, 6, 5, 4)
    geometry = GeometryConfig(mode="slab", slices=3, axis=1, target="center")

    def centre_channel(slab, location):
        return slab[:, 0].movedim(2, 1)[:, 1:2]

    assert torch.equal(predict_volume(centre_channel, volume, geometry, batch_size=4), volume)


@pytest.mark.parametrize(
    ("geometry", "shape"),
    [
        (GeometryConfig(mode="slab", slices=3, axis=1, target="center"), (10, 12, 9)),
        (GeometryConfig(mode="slab", slices=5, axis=0, target="all"), (12, 8, 9)),
        (GeometryConfig(mode="slab", slices=3, axis=2, target="center"), (9, 8, 12)),
        (GeometryConfig(mode="patch", patch=[6, 6, 6], overlap=2), (20, 18, 16)),
    ],
    ids=["center-axis1", "all-axis0", "center-axis2", "patch"],
)
def test_a_mask_skips_windows_that_write_nothing_inside_it(geometry, shape):
    """With a mask, windows that write only voxels outside it are not run, and the
    result is the unmasked tiling's, zeroed outside the mask: every window that covers
    a brain voxel still runs, so its value and its blend weights are unchanged."""
    dims = 3 if geometry.mode == "patch" else 2
    k = 1 if geometry.mode == "patch" else geometry.slices
    out_channels = k if geometry.mode == "slab" and geometry.target == "all" else 1
    net = _conv_net(dims, k, out_channels, seed=3)
    volume = torch.rand(1, *shape)
    mask = torch.zeros(1, *shape, dtype=torch.uint8)
    # A brain away from every edge: whole slices (and whole 3D windows) are empty.
    mask[:, 4:7, 3:6, 3:6] = 1
    runs = []

    def predict(windows, location):
        runs.append(location.clone())
        if geometry.mode == "patch":
            return net(windows)
        axis = geometry.axis
        return net(windows[:, 0].movedim(axis + 1, 1))

    full = predict_volume(predict, volume, geometry, batch_size=4)
    every = sum(len(r) for r in runs)
    runs.clear()
    masked = predict_volume(predict, volume, geometry, batch_size=4, mask=mask)
    # Equal up to float rounding (other windows share a batch), and exactly 0 outside.
    torch.testing.assert_close(masked, full * mask, rtol=1e-5, atol=1e-6)
    assert torch.all(masked[mask == 0] == 0)
    assert masked[mask == 1].abs().min() > 0  # the brain is predicted, not zeroed
    ran = torch.cat(runs)
    assert 0 < len(ran) < every
    if geometry.mode == "slab":
        axis, half = geometry.axis, geometry.slices // 2
        centres = sorted((ran[:, axis] + half).tolist())
        brain = mask[0].movedim(axis, 0).reshape(shape[axis], -1).any(dim=1).nonzero().flatten()
        reach = 0 if geometry.target == "center" else half  # the slices a window writes
        expected = [c for c in range(shape[axis]) if any(abs(c - b) <= reach for b in brain.tolist())]
        assert centres == expected
