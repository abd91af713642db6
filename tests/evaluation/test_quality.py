"""No-reference quality (MRIQC's CNR, CJV, SNR in WM) against hand computation on phantoms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from t7synth.measures.quality import no_reference_quality, tissue_quality


def _two_tissue_phantom():
    """GM voxels alternating 0.4/0.5 and WM voxels alternating 0.8/0.9, 500 of each."""
    volume = np.zeros((10, 10, 12), dtype=np.float32)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[:, :, :5], labels[:, :, 5:10] = 2, 3
    checker = (np.indices(volume.shape).sum(0) % 2).astype(np.float32)
    volume[labels == 2] = (0.4 + 0.1 * checker)[labels == 2]
    volume[labels == 3] = (0.8 + 0.1 * checker)[labels == 3]
    return volume, labels


def test_cnr_cjv_snr_match_hand_computation_on_a_two_tissue_phantom():
    volume, labels = _two_tissue_phantom()
    scores = tissue_quality(volume, labels)
    # By hand: means 0.45 and 0.85, population SDs 0.05 each (two equally frequent values).
    assert scores["cjv"] == pytest.approx((0.05 + 0.05) / 0.4, rel=1e-5)  # Ganzetti: 0.25
    assert scores["cnr"] == pytest.approx(0.4 / math.sqrt(0.05**2 + 0.05**2), rel=1e-5)  # 5.657
    # MRIQC's snr: mu / (sigma sqrt(n / (n - 1))), n = 500 WM voxels.
    assert scores["snr_wm"] == pytest.approx(0.85 / (0.05 * math.sqrt(500 / 499)), rel=1e-5)


def test_background_noise_enters_the_cnr():
    volume, labels = _two_tissue_phantom()
    background = labels == 0
    volume[background] = np.where(np.indices(volume.shape).sum(0) % 2, 0.03, -0.03)[background]
    scores = tissue_quality(volume, labels, background=background)
    assert scores["cnr"] == pytest.approx(0.4 / math.sqrt(0.03**2 + 0.05**2 + 0.05**2), rel=1e-5)
    assert scores["cjv"] == pytest.approx(0.25, rel=1e-5)  # CJV has no background term


def test_a_class_without_voxels_gives_nan_not_an_error():
    volume, labels = _two_tissue_phantom()
    labels[labels == 2] = 1
    assert all(math.isnan(v) for v in tissue_quality(volume, labels).values())


def test_noisier_image_scores_worse_through_t7synth_segmentation():
    """On a three-tissue phantom segmented by t7synth's own pipeline, CNR falls and CJV
    rises with the noise, and the CNR is close to contrast / (sqrt(2) noise)."""
    rng = np.random.default_rng(0)
    shape = (24, 24, 24)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    mask = radius < 0.95
    # Brain-like proportions (WM 34 %, GM 41 %, CSF 25 % of the mask), as the mixture expects.
    clean = np.where(radius < 0.65, 0.8, np.where(radius < 0.85, 0.5, 0.2)).astype(np.float32) * mask
    results = []
    for noise in (0.02, 0.05):
        volume = (clean + noise * rng.standard_normal(shape)).astype(np.float32) * mask
        results.append(no_reference_quality(volume, mask))
    quiet, noisy = results
    assert quiet["cnr"] > noisy["cnr"] and quiet["cjv"] < noisy["cjv"] and quiet["snr_wm"] > noisy["snr_wm"]
    assert quiet["cnr"] == pytest.approx(0.3 / (math.sqrt(2) * 0.02), rel=0.15)


def test_a_constant_brain_is_nan_not_an_error():
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[2:6, 2:6, 2:6] = True
    assert all(math.isnan(v) for v in no_reference_quality(np.zeros((8, 8, 8), np.float32), mask).values())
