"""Our scores against scikit-image's on volume pairs this test did not design."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from t7synth.measures import metrics

skimage_metrics = pytest.importorskip("skimage.metrics")

SKIMAGE_SSIM = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)


def _pair(shape, seed):
    """A smoothed random 'target' and a noisier, blurred copy, both in [0, 1]."""
    rng = np.random.default_rng(seed)
    target = np.clip(0.5 + 2.0 * gaussian_filter(rng.standard_normal(shape), 1.5), 0, 1)
    prediction = np.clip(gaussian_filter(target, 0.7) + 0.05 * rng.standard_normal(shape), 0, 1)
    return prediction, target


@pytest.mark.parametrize(("shape", "seed"), [((24, 28, 20), 0), ((17, 30, 13), 1), ((12, 12, 12), 2)])
def test_scores_match_scikit_image(shape, seed):
    prediction, target = _pair(shape, seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    mask = np.sqrt((grid**2).sum(0)) < 1.1  # reaches the border: border SSIM voxels count
    ours = metrics.volume_scores(torch.from_numpy(prediction), torch.from_numpy(target), torch.from_numpy(mask))

    assert ours["psnr"] == pytest.approx(
        skimage_metrics.peak_signal_noise_ratio(target, prediction, data_range=1.0), abs=1e-3
    )
    ssim, full = skimage_metrics.structural_similarity(target, prediction, full=True, **SKIMAGE_SSIM)
    assert ours["ssim"] == pytest.approx(ssim, abs=1e-3)
    assert ours["ssim_brain"] == pytest.approx(full[mask].mean(), abs=1e-3)
    assert ours["psnr_brain"] == pytest.approx(
        skimage_metrics.peak_signal_noise_ratio(target[mask], prediction[mask], data_range=1.0), abs=1e-3
    )
    assert ours["mae"] == pytest.approx(np.abs(prediction - target).mean(), abs=1e-6)


def test_ssim_map_equals_scikit_image_at_the_border():
    prediction, target = _pair((16, 18, 14), 3)
    _, full = skimage_metrics.structural_similarity(target, prediction, full=True, **SKIMAGE_SSIM)
    ours = metrics.ssim_map(torch.from_numpy(prediction).float(), torch.from_numpy(target).float()).numpy()
    assert ours.shape == full.shape
    # float32 against float64: single voxels of near-constant patches differ by ~1e-4.
    np.testing.assert_allclose(ours, full, atol=2e-3)
    assert abs(ours[0].mean() - full[0].mean()) < 1e-4  # the first face, 5 voxels inside the padding


def test_prediction_is_clamped_like_training():
    target = torch.rand(12, 12, 12)
    overshoot = target * 1.5 - 0.2
    clamped = overshoot.clamp(0, 1)
    mask = torch.ones_like(target)
    assert metrics.volume_scores(overshoot, target, mask) == metrics.volume_scores(clamped, target, mask)


def test_scores_stay_float32_under_autocast():
    """Lightning's bf16-mixed test steps run inside autocast; scores must not change."""
    prediction, target = (torch.from_numpy(x).float() for x in _pair((20, 20, 20), 4))
    mask = torch.ones_like(target)
    plain = metrics.volume_scores(prediction, target, mask)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = metrics.volume_scores(prediction, target, mask)
    assert mixed == pytest.approx(plain, abs=1e-6)


def test_volumes_beyond_the_unit_range_score_on_the_clip_scale():
    """``data.normalisation: authors`` targets have a negative background and 1 % tails
    above 1; clamped, they are the clip targets, so the scores are those of the clip
    scale (and a prediction of the right background is not rewarded twice)."""
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(12, 14, 12, dtype=torch.bool)
    mask[2:10, 3:11, 2:10] = True
    clip_target = torch.rand(12, 14, 12, generator=generator) * mask
    authors_target = torch.where(mask, clip_target * 1.2 - 0.1, torch.tensor(-0.45))
    prediction = (clip_target + 0.05 * torch.randn(12, 14, 12, generator=generator)) * mask
    scores = metrics.volume_scores(prediction, authors_target, mask)
    expected = metrics.volume_scores(prediction, authors_target.clamp(0, 1), mask)
    assert scores == pytest.approx(expected)
    assert scores["psnr"] > 15  # the -0.45 background does not count as an error
