"""Sharpness measures against independent computations: GMSD against a literal port of
Xue et al.'s 2D code and SciPy's Prewitt filter, the high-frequency ratio against the
Gaussian transfer function of a known blur."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage, signal

from t7synth import scores
from t7synth.measures import sharpness


def _texture(shape=(24, 26, 22), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(0.5 + 0.25 * ndimage.gaussian_filter(rng.standard_normal(shape), 1.0) / 0.2, 0, 1)


def _gmsd_2d_reference(reference: np.ndarray, distorted: np.ndarray) -> np.ndarray:
    """The GMS map of Xue et al.'s published MATLAB GMSD.m, without its 2x downsampling:
    ``hx = [1 0 -1; 1 0 -1; 1 0 -1] / 3``, ``conv2(..., 'same')``, ``T = 170`` on 8-bit images."""
    hx = np.array([[1, 0, -1]] * 3, dtype=np.float64) / 3
    hy = hx.T
    y1, y2 = reference * 255.0, distorted * 255.0
    m1 = np.sqrt(signal.convolve2d(y1, hx, mode="same") ** 2 + signal.convolve2d(y1, hy, mode="same") ** 2)
    m2 = np.sqrt(signal.convolve2d(y2, hx, mode="same") ** 2 + signal.convolve2d(y2, hy, mode="same") ** 2)
    return (2 * m1 * m2 + 170) / (m1**2 + m2**2 + 170)


def test_gmsd_of_identical_images_is_zero_and_grows_with_blur():
    volume = _texture()
    mask = np.ones(volume.shape, bool)
    assert sharpness.gmsd(volume, volume, mask) == 0.0
    scores = [sharpness.gmsd(ndimage.gaussian_filter(volume, sigma), volume, mask) for sigma in (0.5, 1.0, 2.0)]
    assert 0 < scores[0] < scores[1] < scores[2]


def test_gmsd_in_3d_equals_the_papers_2d_gmsd_on_an_extruded_image():
    """A volume constant along k has no k-gradient away from its end slices, and the 3D
    Prewitt filter's averaging along k changes nothing: each inner slice's GMS map is
    the 2D one of the paper's code (with the constant rescaled from 8 bits to [0, 1])."""
    rng = np.random.default_rng(1)
    # Scored volumes are float32 (as every volume t7synth reads): start from such values.
    image = (
        np.clip(ndimage.gaussian_filter(rng.random((30, 34)), 1.2) * 2 - 0.5, 0, 1)
        .astype(np.float32)
        .astype(np.float64)
    )
    blurred = ndimage.gaussian_filter(image, 1.0).astype(np.float32).astype(np.float64)
    depth = 7
    volume = np.repeat(image[:, :, None], depth, axis=2)
    guess = np.repeat(blurred[:, :, None], depth, axis=2)
    inner = np.zeros(volume.shape, bool)
    inner[:, :, 1:-1] = True  # the end slices see the zero padding along k
    expected = float(np.std(_gmsd_2d_reference(image, blurred)))
    assert expected > 0.01
    assert sharpness.gmsd(guess, volume, inner) == pytest.approx(expected, rel=1e-9)


def test_prewitt_magnitude_matches_scipy():
    volume = _texture(seed=2)
    # SciPy's 3D Prewitt: [-1, 0, 1] along the axis, [1, 1, 1] (unnormalised) along both others.
    components = [ndimage.prewitt(volume, axis=axis, mode="constant") / 9.0 for axis in range(3)]
    expected = np.sqrt(sum(c**2 for c in components))
    assert np.allclose(sharpness.prewitt_magnitude(volume), expected, atol=1e-12)


def _transfer(shape, sigma):
    """exp(-2 pi^2 sigma^2 |f|^2) at each DFT frequency, enumerated voxel by voxel."""
    out = np.empty(shape)
    radius = np.empty(shape)
    for index in itertools.product(*(range(n) for n in shape)):
        f2 = sum(((k if k <= (n - 1) // 2 else k - n) / n) ** 2 for k, n in zip(index, shape))
        out[index] = np.exp(-2 * np.pi**2 * sigma**2 * f2)
        radius[index] = np.sqrt(f2)
    return out, radius


def test_high_frequency_ratio_of_a_known_blur():
    """A point's spectrum is flat, so after a (periodic) Gaussian blur its energy above
    the cutoff is the mean of the squared transfer function there."""
    shape, sigma = (16, 18, 14), 0.5
    point = np.zeros(shape)
    point[5, 7, 3] = 1.0
    transfer, radius = _transfer(shape, sigma)
    blurred = np.real(np.fft.ifftn(np.fft.fftn(point) * transfer))
    # On a grey background: the scores clamp to [0, 1], and the truncated transfer
    # function rings slightly below 0 (a constant changes only the removed mean).
    point, blurred = 0.5 + 0.4 * point, 0.5 + 0.4 * blurred
    mask = np.ones(shape, bool)
    cutoff = scores.HF_CUTOFF
    expected = float(np.mean(transfer[radius > cutoff] ** 2))
    # To float32 precision: scored volumes are float32, as every volume t7synth reads.
    assert sharpness.high_frequency_ratio(blurred, point, mask) == pytest.approx(expected, rel=1e-5)
    assert 0.05 < expected < 0.5  # the blur removes most but not all of the energy


def test_high_frequency_ratio_of_blurred_noise():
    """White noise through SciPy's (sampled) Gaussian kernel: about the continuous
    transfer function's energy, to the noise of one draw and the kernel's sampling."""
    rng = np.random.default_rng(0)
    shape, sigma = (32, 32, 32), 1.0
    noise = 0.5 + 0.1 * rng.standard_normal(shape)
    blurred = ndimage.gaussian_filter(noise, sigma, mode="wrap")
    transfer, radius = _transfer(shape, sigma)
    expected = float(np.mean(transfer[radius > scores.HF_CUTOFF] ** 2))
    ratio = sharpness.high_frequency_ratio(blurred, noise, np.ones(shape, bool))
    assert ratio == pytest.approx(expected, rel=0.1)
    assert sharpness.high_frequency_ratio(noise, noise, np.ones(shape, bool)) == 1.0


def test_spectrum_is_the_brains_and_keeps_parseval():
    volume = _texture(seed=4)
    mask = np.zeros(volume.shape, bool)
    mask[3:20, 4:22, 2:18] = True
    spectrum = sharpness.Spectrum(volume * mask + 0.7 * ~mask, mask)  # what lies outside does not count
    assert spectrum.power.shape == (17, 18, 16)
    inside = volume[mask]
    # |F|^2 / N sums to the centred brain's energy (Parseval).
    assert spectrum.power.sum() == pytest.approx(float(np.sum((inside - inside.mean()) ** 2)), rel=1e-9)
    radial = spectrum.radial()
    assert radial.shape == (scores.SPECTRUM_BINS,) and radial[0] == pytest.approx(0.0, abs=1e-20)  # the mean is removed
    assert radial[5] > radial[-1]  # a smooth texture: power falls with frequency
