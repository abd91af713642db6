"""Preprocessing: normalisation, fixed shape, and a cache that is reused and invalidated."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import make_dataset, make_pair

from t7synth.data.layout import discover
from t7synth.data.preprocess import Preprocessing, load_or_preprocess, normalise
from t7synth.errors import UserError


def test_normalise_clips_inside_the_brain_and_zeroes_outside():
    volume = torch.linspace(0, 100, 1000).reshape(1, 10, 10, 10)
    mask = torch.zeros_like(volume, dtype=torch.uint8)
    mask[:, 2:8, 2:8, 2:8] = 1
    out = normalise(volume, mask, (1, 99))
    inside = out[mask > 0]
    assert float(inside.min()) == 0.0 and float(inside.max()) == 1.0
    assert float(out[mask == 0].abs().max()) == 0.0
    low, high = np.percentile(volume[mask > 0].numpy(), [1, 99])
    middle = volume[0, 5, 5, 5]
    assert torch.isclose(out[0, 5, 5, 5], (middle - low) / (high - low), atol=1e-5)


def test_fixed_shape_and_cache_reuse(tmp_path):
    root = make_dataset(tmp_path / "data", n_subjects=3)
    record = discover(root)[0]
    settings = Preprocessing(shape=(16, 16, 16))
    first = load_or_preprocess(record, settings, tmp_path / "cache")
    assert first["source"].shape == (1, 16, 16, 16) and first["mask"].dtype == torch.uint8
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    again = load_or_preprocess(record, settings, tmp_path / "cache")
    assert torch.equal(first["source"], again["source"])
    assert files[0].stat().st_mtime_ns == mtime  # read, not rewritten
    # Touching the input invalidates the cached subject.
    os.utime(record.source, ns=(mtime + 10**9, mtime + 10**9))
    load_or_preprocess(record, settings, tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 2


def _pickling(image: np.ndarray, percentiles=(1, 99)) -> np.ndarray:
    """``func/images_to_npy/pickling.py`` of the official code, line for line, on a
    skull-stripped image (zero outside the brain)."""
    v = image.flatten()
    v = v[v > 0]
    pmin, pmax = np.percentile(v, percentiles[0]), np.percentile(v, percentiles[1])
    v = np.clip(v, pmin, pmax)
    vmin, vmax = np.min(v), np.max(v)
    return (image - vmin) / (vmax - vmin)


def test_authors_normalisation_is_the_official_pickling():
    rng = np.random.default_rng(0)
    volume = rng.gamma(4.0, 50.0, size=(12, 14, 10)).astype(np.float32)
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[2:10, 3:12, 2:8] = 1
    volume[2, 3, 2] = -5.0  # a negative voxel inside the brain: scaled, not used for percentiles
    out = normalise(torch.from_numpy(volume[None]), torch.from_numpy(mask[None]), (1, 99), mode="authors")[0].numpy()
    expected = _pickling(volume.astype(np.float64) * mask)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    inside = out[mask > 0]
    # Unclipped: the brain's tails leave [0, 1]; the background is one negative value.
    assert (inside < 0).mean() > 0.005 and (inside > 1).mean() > 0.005
    background = out[mask == 0]
    assert background.max() == background.min() < 0


def test_authors_normalisation_clamped_is_the_clip_normalisation():
    """Where every brain voxel is positive, clamping the authors' volume to [0, 1] gives
    exactly the clip volume: the fact that lets the metrics score both on one scale."""
    source, _, mask = make_pair((16, 18, 14), seed=2)
    source = np.where(mask > 0, np.abs(source) + 0.01, 0).astype(np.float32)
    volume, mask_t = torch.from_numpy(source[None]), torch.from_numpy(mask[None])
    authors = normalise(volume, mask_t, (1, 99), mode="authors")
    clip = normalise(volume, mask_t, (1, 99), mode="clip")
    assert float(authors.min()) < -0.1
    torch.testing.assert_close(authors.clamp(0, 1) * mask_t, clip, atol=1e-5, rtol=0)


def test_normalisation_mode_is_part_of_the_cache_key(tmp_path):
    root = make_dataset(tmp_path / "data", n_subjects=3)
    record = discover(root)[0]
    clip = load_or_preprocess(record, Preprocessing(normalisation="clip"), tmp_path / "cache")
    authors = load_or_preprocess(record, Preprocessing(normalisation="authors"), tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert float(authors["source"].min()) < 0 <= float(clip["source"].min())


def test_authors_normalisation_of_a_brain_without_signal_is_a_user_error():
    volume = torch.zeros(1, 6, 6, 6)
    mask = torch.ones(1, 6, 6, 6, dtype=torch.uint8)
    with pytest.raises(UserError, match="no voxel above 0"):
        normalise(volume, mask, mode="authors")
