"""Test-time scores of structure: tissue segmentation agreement, no-reference quality and sharpness.

:class:`StructureScorer` prepares what a subject's guesses are compared with once (the
7T's segmentation, gradient magnitude and power spectrum, and the true tissue labels
when the dataset has them), then scores each guess (the model's synthetic 7T, the 3T,
the LUT) with every measure of :mod:`~t7synth.measures.segmentation`,
:mod:`~t7synth.measures.quality` (from the same segmentation, so free) and
:mod:`~t7synth.measures.sharpness`. ``fit``'s test and ``evaluate`` both score through
it, so the columns mean the same in both; validation skips it (a few seconds a
subject, against milliseconds for PSNR and SSIM).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t7synth.measures import quality, segmentation, sharpness
from t7synth.scores import SPECTRUM, TARGET_SPECTRUM


class StructureScorer:
    """Scores guesses of one subject against its 7T (and true tissue labels).

    Args:
        target: the 7T, (I, J, K) array or tensor (leading 1s allowed), scaled as in training.
        mask: the brain mask.
        truth: optional true tissue labels on the same grid (uint8: 1 CSF, 2 GM, 3 WM,
            0 not scored; :func:`~t7synth.measures.segmentation.tissue_truth` maps a
            dataset's own labels to these).
    """

    def __init__(self, target, mask, truth: np.ndarray | None = None):
        self.mask = sharpness.as_array(mask) > 0
        self.truth = None if truth is None else np.asarray(truth, dtype=np.uint8) * self.mask
        corrected, self.reference = segmentation.segment_corrected(target, self.mask)
        #: The 7T's own no-reference quality: what a synthetic 7T's is read against.
        self.target_quality = quality.tissue_quality(corrected, self.reference)
        self.target_magnitude = sharpness.prewitt_magnitude(sharpness.unit_volume(target))
        self.target_spectrum = sharpness.Spectrum(target, self.mask)
        self.target_radial = self.target_spectrum.radial()

    def __call__(self, guess) -> dict[str, Any]:
        """Every structure score of ``guess`` (floats), plus its and the 7T's radial spectra."""
        corrected, labels = segmentation.segment_corrected(guess, self.mask)
        scores: dict[str, Any] = segmentation.agreement(labels, self.reference)
        # No-reference quality from the same segmentation (MRIQC's CNR, CJV, SNR_WM).
        scores.update(quality.tissue_quality(corrected, labels))
        if self.truth is not None:
            scores.update(segmentation.truth_agreement(labels, self.truth))
        volume = sharpness.unit_volume(guess)
        scores["gmsd"] = sharpness.gms_deviation(self.target_magnitude, sharpness.prewitt_magnitude(volume), self.mask)
        spectrum = sharpness.Spectrum(volume, self.mask)
        scores["hf_ratio"] = sharpness.energy_ratio(spectrum, self.target_spectrum)
        scores[SPECTRUM] = spectrum.radial().tolist()
        scores[TARGET_SPECTRUM] = self.target_radial.tolist()
        return scores
