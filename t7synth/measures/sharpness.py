"""Sharpness and texture of a synthetic 7T against the real one: GMSD and the power spectrum.

PSNR and SSIM reward a blurred mean: an L1-trained U-Net scores well while losing the
fine texture a GAN keeps (or invents). Two measures look at edges and detail directly:

* ``gmsd``: gradient magnitude similarity deviation (Xue, Zhang, Mou and Bovik, "Gradient
  magnitude similarity deviation: a highly efficient perceptual image quality index",
  IEEE TIP 23(2), 2014). With ``m_r`` and ``m_d`` the gradient magnitudes of the
  reference (7T) and the distorted image (the guess), the similarity map is
  ``GMS = (2 m_r m_d + c) / (m_r² + m_d² + c)`` and GMSD is its standard deviation
  (population) over the brain mask. 0 for identical images; it grows as edges are
  lost, added or moved *unevenly*, which is what the eye notices. Gradients are the
  paper's Prewitt filters (derivative ``[1, 0, -1]``, averaging ``[1, 1, 1] / 3`` across
  it) extended to 3D: the derivative along one axis, the average along both others,
  zero padding (MATLAB's ``conv2(..., 'same')``), magnitude over the three axes.
  ``c = 170 / 255²``, the paper's ``T = 170`` for 8-bit images on our [0, 1] scale.
  The paper first averages and subsamples by 2 (a viewing-distance model for natural
  photographs); voxel-scale detail is the point here, so t7synth does not.
* ``hf_ratio``: the energy of the guess's power spectrum above :data:`HF_CUTOFF`
  cycles per voxel divided by the 7T's. Each volume is cut to the brain's bounding
  box, its in-brain mean subtracted and its background kept at 0 (so the spectrum is
  the brain's texture, not the step at its edge), and Fourier-transformed in 3D. 1 is
  the 7T's own detail; below 1 is blurrier (the 3T, an L1 U-Net), above 1 is more
  high-frequency energy than the 7T has (noise, or invented texture). The 7T carries
  its own noise, so a perfect denoiser scores slightly below 1.

:func:`radial_spectrum` gives the radially averaged power spectrum the ratio is
read from; ``fit`` and ``evaluate`` plot it per run (``plotting.save_spectra``).
"""

from __future__ import annotations

import numpy as np

from t7synth.scores import HF_CUTOFF, SPECTRUM_BINS

#: Xue et al.'s constant T = 170 for images in [0, 255], on the [0, 1] scale.
GMSD_C = 170.0 / 255.0**2


def prewitt_magnitude(volume: np.ndarray) -> np.ndarray:
    """3D Prewitt gradient magnitude (float64), zero padding; see the module docstring."""
    from scipy.ndimage import correlate1d

    volume = np.asarray(volume, dtype=np.float64)
    squares = np.zeros_like(volume)
    for axis in range(volume.ndim):
        gradient = correlate1d(volume, [1.0, 0.0, -1.0], axis=axis, mode="constant")
        for other in range(volume.ndim):
            if other != axis:
                gradient = correlate1d(gradient, [1 / 3, 1 / 3, 1 / 3], axis=other, mode="constant")
        squares += gradient**2
    return np.sqrt(squares)


def gms_deviation(reference_magnitude: np.ndarray, magnitude: np.ndarray, mask: np.ndarray) -> float:
    """GMSD from two gradient-magnitude maps, pooled over ``mask`` (population SD)."""
    gms = (2 * reference_magnitude * magnitude + GMSD_C) / (reference_magnitude**2 + magnitude**2 + GMSD_C)
    return float(np.std(gms[np.asarray(mask, dtype=bool)]))


def gmsd(guess, target, mask) -> float:
    """GMSD of ``guess`` against ``target`` inside ``mask`` (volumes clamped to [0, 1])."""
    guess, target, mask = unit_volume(guess), unit_volume(target), as_array(mask) > 0
    return gms_deviation(prewitt_magnitude(target), prewitt_magnitude(guess), mask)


class Spectrum:
    """The 3D power spectrum of a volume's brain, and the radial frequency of each bin.

    Args:
        volume: (I, J, K) array or tensor, clamped to [0, 1].
        mask: the brain; the volume is cut to its bounding box and ``(x - mean) * mask``
            transformed, so two volumes with one mask share frequencies.
    """

    def __init__(self, volume, mask):
        volume, brain = unit_volume(volume), as_array(mask) > 0
        if not brain.any():
            raise ValueError("the brain mask is empty")
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(brain))
        inside = brain[box]
        values = volume[box]
        centred = (values - values[inside].mean()) * inside
        # |F|² / N: Parseval then makes the spectrum's sum the volume's mean square.
        self.power = np.abs(np.fft.fftn(centred)) ** 2 / centred.size
        axes = np.meshgrid(*(np.fft.fftfreq(n) for n in centred.shape), indexing="ij", sparse=True)
        self.radius = np.sqrt(sum(a**2 for a in axes))

    def energy_above(self, cutoff: float = HF_CUTOFF) -> float:
        """Summed power at radial frequencies above ``cutoff`` cycles per voxel."""
        return float(self.power[self.radius > cutoff].sum())

    def radial(self) -> np.ndarray:
        """Mean power per radial shell (:data:`SPECTRUM_BINS` from 0 to Nyquist; the
        corners of the cube beyond Nyquist are left out, as they cover only some directions)."""
        index = np.floor(self.radius / 0.5 * SPECTRUM_BINS).astype(np.int64).ravel()
        keep = index < SPECTRUM_BINS
        sums = np.bincount(index[keep], weights=self.power.ravel()[keep], minlength=SPECTRUM_BINS)
        counts = np.bincount(index[keep], minlength=SPECTRUM_BINS)
        return np.divide(sums, counts, out=np.zeros(SPECTRUM_BINS), where=counts > 0)


def high_frequency_ratio(guess, target, mask, cutoff: float = HF_CUTOFF) -> float:
    """Energy above ``cutoff`` of ``guess``'s spectrum over the target's (inf if the
    target has none)."""
    return energy_ratio(Spectrum(guess, mask), Spectrum(target, mask), cutoff)


def energy_ratio(guess: Spectrum, target: Spectrum, cutoff: float = HF_CUTOFF) -> float:
    """:func:`high_frequency_ratio` of two computed spectra."""
    reference = target.energy_above(cutoff)
    energy = guess.energy_above(cutoff)
    if reference == 0:
        return 1.0 if energy == 0 else float("inf")
    return energy / reference


def radial_spectrum(volume, mask) -> np.ndarray:
    """Radially averaged power spectrum of the brain of ``volume`` (see :class:`Spectrum`)."""
    return Spectrum(volume, mask).radial()


def as_array(x) -> np.ndarray:
    """A float32 NumPy array of an array or tensor, leading 1s squeezed."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.squeeze(np.asarray(x, dtype=np.float32))


def unit_volume(x) -> np.ndarray:
    """``x`` as float64 clamped to [0, 1], the scale every score uses (``metrics.py``)."""
    return np.clip(as_array(x), 0.0, 1.0).astype(np.float64)
