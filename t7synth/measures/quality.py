"""No-reference image quality, as MRIQC defines it: CNR, CJV and SNR in white matter.

Every real application of t7synth has no 7T to compare with, so its outputs need a
quality measure that reads the image alone. MRIQC (Esteban et al., "MRIQC: Advancing
the automatic prediction of image quality in MRI from unseen sites", PLOS ONE 12(9),
2017; the IQM definitions of the MRIQC documentation, "IQMs for structural images")
defines three from the grey- and white-matter intensity distributions, with ``mu`` and
``sigma`` a tissue's mean and standard deviation:

* **CJV**, coefficient of joint variation (Ganzetti et al., Front. Neuroinform. 10,
  2016): ``(sigma_WM + sigma_GM) / |mu_WM - mu_GM|``; lower is better (bias field,
  motion and noise raise it);
* **CNR**, contrast-to-noise ratio (Magnotta & Friedman, J. Digit. Imaging 19, 2006):
  ``|mu_GM - mu_WM| / sqrt(sigma_B^2 + sigma_GM^2 + sigma_WM^2)`` with ``sigma_B`` the
  SD of the air background; higher is better;
* **SNR** in a tissue: ``mu_F / (sigma_F sqrt(n / (n - 1)))`` over its ``n`` voxels
  (MRIQC's ``snr``), i.e. the mean over the sample SD; t7synth reports it in white
  matter (``snr_wm``), the largest and most uniform class.

What t7synth does differently, and why:

* **Tissue classes** are t7synth's own (:func:`~t7synth.measures.segmentation.segment`:
  N4 bias correction and a 3-class Gaussian mixture), hard labels, not FSL FAST's
  partial-volume maps; the intensities are those of the **N4-corrected** image, as
  MRIQC computes its IQMs on the INU-corrected image (a bias field would otherwise
  count as tissue variance).
* **No background term by default.** Every volume t7synth scores or writes is zero
  outside the brain mask (training's normalisation, ``predict``'s output), so there is
  no air left to measure noise in: its SD is exactly 0, and MRIQC's CNR formula then
  reduces to ``|mu_GM - mu_WM| / sqrt(sigma_GM^2 + sigma_WM^2)``, which is what
  :func:`tissue_quality` computes unless an air ``background`` mask is given. These
  values are therefore not comparable with MRIQC's on unmasked scans, only with each
  other (the 3T, the synthetic 7T and the 7T of one subject).
"""

from __future__ import annotations

import math

import numpy as np

from t7synth.data import naming
from t7synth.measures import segmentation
from t7synth.measures.sharpness import as_array

#: The score names, in column order.
NAMES = ("cnr", "cjv", "snr_wm")


def tissue_quality(volume, labels, background=None) -> dict[str, float]:
    """CNR, CJV and white-matter SNR of ``volume`` from its tissue ``labels``.

    Args:
        volume: the intensities (array or tensor, leading 1s allowed).
        labels: t7synth's tissue labels on the same grid (2 GM, 3 WM; others ignored).
        background: optional air mask; its SD enters the CNR's denominator (MRIQC's
            ``sigma_B``). Without one the term is 0 (see the module docstring).

    Returns:
        ``{"cnr", "cjv", "snr_wm"}``; NaN where a class has fewer than 2 voxels or
        the two classes have the same mean (no contrast to measure).
    """
    values = as_array(volume).astype(np.float64)
    labels = np.asarray(labels)
    gm = values[labels == naming.TISSUE_LABELS["GM"]]
    wm = values[labels == naming.TISSUE_LABELS["WM"]]
    if gm.size < 2 or wm.size < 2:
        return dict.fromkeys(NAMES, math.nan)
    mu_gm, mu_wm = gm.mean(), wm.mean()
    sigma_gm, sigma_wm = gm.std(), wm.std()  # population SDs, as MRIQC's summary statistics
    sigma_b = 0.0
    if background is not None:
        air = values[np.asarray(background, dtype=bool)]
        sigma_b = float(air.std()) if air.size else 0.0
    contrast = abs(mu_wm - mu_gm)
    noise = math.sqrt(sigma_b**2 + sigma_gm**2 + sigma_wm**2)
    return {
        "cnr": float(contrast / noise) if noise > 0 else math.nan,
        "cjv": float((sigma_wm + sigma_gm) / contrast) if contrast > 0 else math.nan,
        # MRIQC: mu / (sigma * sqrt(n / (n - 1))), i.e. the mean over the sample SD.
        "snr_wm": float(mu_wm / wm.std(ddof=1)) if wm.std(ddof=1) > 0 else math.nan,
    }


def no_reference_quality(volume, mask) -> dict[str, float]:
    """CNR, CJV and white-matter SNR of any volume with a brain mask (no 7T needed).

    The volume is segmented and bias-corrected as every t7synth segmentation is
    (:func:`~t7synth.measures.segmentation.segment_corrected`: clamped to [0, 1], so
    pass it on t7synth's [0, 1] scale), and :func:`tissue_quality` reads the
    corrected intensities of its grey and white matter. A brain of one value (an
    untrained model's output) has no tissue classes: NaN.
    """
    values = np.clip(as_array(volume), 0.0, 1.0)[as_array(mask) > 0]
    if values.size < 3 or np.ptp(values) == 0:
        return dict.fromkeys(NAMES, math.nan)  # a constant brain (an untrained model's output) has no tissues
    corrected, labels = segmentation.segment_corrected(volume, mask)
    return tissue_quality(corrected, labels)
