"""Tissue segmentation agreement: does a synthetic 7T segment like the real one?

The paper's second claim is that automated segmentations of synthetic 7T agree
better with manual ones than segmentations of the 3T input; its authors' follow-up
scores segmentations by Dice against the real 7T's. SynthSeg, FastSurfer and HD-BET
download their weights at run time, so t7synth segments with a classic pipeline that
needs nothing but PyPI wheels and runs in about a second a volume on one CPU core
(1.5 mm, 120 x 144 x 128):

1. **N4 bias correction** (Tustison et al., IEEE TMI 2010; SimpleITK's
   ``N4BiasFieldCorrectionImageFilter``) inside the brain mask, fitted on a copy
   shrunk so that its longest axis has about :data:`N4_TARGET_VOXELS` voxels (the bias
   field is smooth, so the fit needs no detail), then evaluated at full resolution;
   two fitting levels of :data:`N4_ITERATIONS` iterations; one thread, so the result
   does not depend on the machine.
2. **A 3-class Gaussian mixture** (scikit-learn's ``GaussianMixture``) of the
   corrected in-brain intensities: seeded, started from the 15th/50th/85th
   percentiles, fitted on at most :data:`GMM_SAMPLES` voxels drawn with a fixed seed;
   the classes ordered by mean intensity are CSF, GM and WM (T1-weighted contrast).
   Brain voxels at the normalisation's clip limits (exactly 0 or 1, 1 % of the brain
   each) are left out of the fit but labelled like every other voxel: they form spikes
   a component can collapse onto (one did on one of the demo's twenty 7T volumes,
   leaving no CSF class).

Every image (the 7T, the synthetic 7T, the 3T, the LUT) goes through the same
pipeline, and the scores compare labels inside the brain mask:

* ``dice_<tissue>``: Dice of a guess's tissue against the 7T's segmentation of it;
* ``vol_err_<tissue>``: ``100 |V_guess - V_7T| / V_7T``, the tissue volume error in %;
* ``dice_true_<tissue>``: Dice against true tissue labels (a dataset's ``dseg`` file,
  see :func:`read_lookup`), for datasets that have them (the demo does).

The same pipeline applied to a real 7T is not ground truth: the mixture
misclassifies partial-volume voxels at tissue borders and deep grey matter the same
way in every image. It measures *agreement*, which is what a synthetic image should
have with the real one; ``dice_true_*`` measures correctness where truth exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from sklearn.mixture import GaussianMixture

from t7synth.data import naming
from t7synth.errors import UserError
from t7synth.measures.sharpness import as_array
from t7synth.textfiles import read_table

#: N4 is fitted on a copy shrunk so that its longest axis has about this many voxels
#: (a shrink factor of 4 at 1.5 mm, 8 at 0.75 mm).
N4_TARGET_VOXELS = 36
#: Iterations per fitting level (two levels: a coarse and a finer B-spline mesh).
N4_ITERATIONS = (20, 20)
#: N4 fits the log of the image: in-brain voxels are raised to at least this.
N4_FLOOR = 1e-3
#: At most this many in-brain voxels fit the mixture (all of them are labelled).
GMM_SAMPLES = 100_000
#: Seeds the voxel sample and the mixture: the same image always gives the same labels.
SEED = 0


def dice(first: np.ndarray, second: np.ndarray) -> float:
    """Dice coefficient ``2 |A ∩ B| / (|A| + |B|)`` of two boolean masks; 1 when both are empty."""
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    total = int(first.sum()) + int(second.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(first, second).sum()) / total


def volume_error(first: np.ndarray, second: np.ndarray) -> float:
    """``100 |V1 - V2| / V2`` in % for two boolean masks (0 when both are empty,
    infinite when only the reference ``second`` is)."""
    v1, v2 = int(np.count_nonzero(first)), int(np.count_nonzero(second))
    if v2 == 0:
        return 0.0 if v1 == 0 else float("inf")
    return 100.0 * abs(v1 - v2) / v2


def bias_correct(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """N4 bias correction of ``image`` inside ``mask`` (float32, 0 outside the mask)."""

    brain = np.asarray(mask, dtype=bool)
    values = np.where(brain, np.maximum(image, N4_FLOOR), 0.0).astype(np.float32)
    full = sitk.GetImageFromArray(values)
    full_mask = sitk.GetImageFromArray(brain.astype(np.uint8))
    shrink = max(1, round(max(image.shape) / N4_TARGET_VOXELS))
    small, small_mask = sitk.Shrink(full, [shrink] * 3), sitk.Shrink(full_mask, [shrink] * 3)
    if not sitk.GetArrayViewFromImage(small_mask).any():  # a mask thinner than the shrink factor
        small, small_mask = full, full_mask
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(N4_ITERATIONS))
    corrector.SetNumberOfThreads(1)
    corrector.Execute(small, small_mask)
    log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(full))
    return (values / np.exp(log_field)).astype(np.float32) * brain


def mixture_labels(image: np.ndarray, mask: np.ndarray, fit_voxels: np.ndarray | None = None) -> np.ndarray:
    """Label every voxel of ``mask`` by a 3-class Gaussian mixture of its intensity.

    Args:
        image: the (bias-corrected) volume.
        mask: where to label.
        fit_voxels: the voxels the mixture is fitted on (default: the whole mask).

    Returns:
        uint8 labels of ``image.shape``: 1, 2, 3 by increasing class mean (CSF, GM,
        WM on a T1-weighted image), 0 outside ``mask``.
    """

    brain = np.asarray(mask, dtype=bool)
    values = image[brain].astype(np.float64)
    fit = values[fit_voxels[brain]] if fit_voxels is not None else values
    if fit.size < 30:  # too few voxels off the clip limits: use them all
        fit = values
    if fit.size < 3:
        raise ValueError("a 3-class mixture needs at least 3 voxels in the brain mask")
    rng = np.random.default_rng(SEED)
    if fit.size > GMM_SAMPLES:
        fit = fit[rng.choice(fit.size, GMM_SAMPLES, replace=False)]
    start = np.percentile(fit, [15, 50, 85]).reshape(-1, 1)
    mixture = GaussianMixture(3, covariance_type="full", means_init=start, random_state=SEED).fit(fit.reshape(-1, 1))
    rank = np.argsort(np.argsort(mixture.means_.ravel()))  # component -> 0, 1, 2 by mean
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[brain] = (rank[mixture.predict(values.reshape(-1, 1))] + 1).astype(np.uint8)
    return labels


def segment(image, mask) -> np.ndarray:
    """CSF/GM/WM labels (uint8: 1, 2, 3; 0 outside the brain) of a T1-weighted volume.

    ``image`` and ``mask`` are (I, J, K) arrays or tensors (leading 1s allowed); the
    image is clamped to [0, 1] (the scale every score uses), bias-corrected with N4
    and labelled by the mixture.
    """
    return segment_corrected(image, mask)[1]


def segment_corrected(image, mask) -> tuple[np.ndarray, np.ndarray]:
    """:func:`segment`'s N4-corrected image (float32, 0 outside the brain) and its labels.

    The no-reference quality scores (:mod:`~t7synth.measures.quality`) read the
    corrected intensities, as MRIQC reads its INU-corrected image.
    """

    image = np.clip(as_array(image), 0.0, 1.0)
    brain = as_array(mask) > 0
    if not brain.any():
        raise ValueError("the brain mask is empty")
    inner = (image > 0) & (image < 1)  # off the normalisation's clip limits
    corrected = bias_correct(image, brain)
    return corrected, mixture_labels(corrected, brain, fit_voxels=inner)


def agreement(labels: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """``dice_<tissue>`` and ``vol_err_<tissue>`` of ``labels`` against ``reference`` (both 0-3)."""
    scores = {}
    for name, value in naming.TISSUE_LABELS.items():
        scores[f"dice_{name.lower()}"] = dice(labels == value, reference == value)
    for name, value in naming.TISSUE_LABELS.items():
        scores[f"vol_err_{name.lower()}"] = volume_error(labels == value, reference == value)
    return scores


def truth_agreement(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``dice_true_<tissue>`` of ``labels`` against true tissue labels (both 0-3).

    Only voxels the truth assigns to a tissue count: labels the truth has no tissue
    for (background, or a user's label that names no tissue, mapped to 0 by
    :func:`tissue_truth`) are left out of both sides.
    """
    scored = truth > 0
    return {
        f"dice_true_{name.lower()}": dice((labels == value) & scored, truth == value)
        for name, value in naming.TISSUE_LABELS.items()
    }


# -- a dataset's own labels --------------------------------------------------------

_CANONICAL = {
    "csf": "CSF",
    "cerebrospinalfluid": "CSF",
    "gm": "GM",
    "graymatter": "GM",
    "greymatter": "GM",
    "wm": "WM",
    "whitematter": "WM",
}


def _tissue_of(text: str | None) -> str | None:
    key = re.sub(r"[^a-z]", "", (text or "").lower())
    return _CANONICAL.get(key)


def read_lookup(path: Path) -> dict[int, str]:
    """The labels of a BIDS ``dseg.tsv`` look-up table that name a tissue: ``{label: "CSF"|"GM"|"WM"}``.

    A row names a tissue when its ``abbreviation`` is ``CSF``, ``GM`` or ``WM`` (BIDS's
    standard abbreviations) or, without one, when its ``name`` is one of "CSF",
    "cerebrospinal fluid", "GM", "gray/grey matter", "WM", "white matter" (case,
    spaces, hyphens and underscores ignored). Several labels may name one tissue
    (left and right, say); labels naming anything else (a ventricle, the thalamus)
    are not mapped: the anatomy they hold is not a class of the 3-class mixture.

    Raises:
        UserError: an unreadable table, or one without ``index`` and ``name`` columns
            or with an ``index`` that is not an integer.
    """
    read = read_table(path, delimiter="\t", complete=False)  # size, encoding, binary content: one line
    fields, rows = read.fieldnames, read.rows
    if "index" not in fields or "name" not in fields:
        raise UserError(f"{path} needs the columns index and name (BIDS dseg.tsv), has {fields}")
    mapping = {}
    for row in rows:
        try:
            label = int((row["index"] or "").strip())
        except ValueError:
            raise UserError(f"{path}: index {row['index']!r} is not an integer") from None
        tissue = (
            _tissue_of(row.get("abbreviation")) if (row.get("abbreviation") or "").strip() else _tissue_of(row["name"])
        )
        if tissue:
            mapping[label] = tissue
    return mapping


#: The labels assumed when a ``dseg`` has no look-up table: t7synth's (and FSL FAST's).
DEFAULT_LOOKUP = {value: name for name, value in naming.TISSUE_LABELS.items()}


def tissue_truth(labels: np.ndarray, lookup: dict[int, str]) -> np.ndarray:
    """A ``dseg`` array mapped to t7synth's tissue labels (uint8: 1 CSF, 2 GM, 3 WM;
    0 for background and every label ``lookup`` does not map)."""
    labels = np.rint(np.asarray(labels)).astype(np.int64)
    out = np.zeros(labels.shape, dtype=np.uint8)
    for label, tissue in lookup.items():
        out[labels == label] = naming.TISSUE_LABELS[tissue]
    return out
