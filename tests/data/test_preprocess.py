"""Preprocessing: normalisation, fixed shape, and a cache that is reused and invalidated."""

from __future__ import annotations

import os

import numpy as np
import torch
from conftest import make_dataset

from t7synth.data.layout import discover
from t7synth.data.preprocess import Preprocessing, load_or_preprocess, normalise


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
