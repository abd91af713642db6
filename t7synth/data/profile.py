"""What a model's training inputs looked like, so ``predict`` can tell a new scan that
does not look like them.

``fit`` measures it on the training subjects (:func:`training_profile`) and the model
keeps it in two buffers, saved in every checkpoint and exported package as plain tensors
(read with ``weights_only=True``): ``input_profile`` (:data:`PROFILE_FIELDS`, one float
each) and ``intensity_histogram`` (:data:`HISTOGRAM_BINS` bins of the normalised in-brain
3T intensities, summing to 1).

What is measured, and why:

* ``skull_stripped``: 1 when every training 3T is (almost) zero outside its brain mask
  (fewer than :data:`STRIPPED_OUTSIDE_FRACTION` of the voxels outside the mask above 0),
  else 0. A full-head scan given to such a model is normalised on its scalp and neck.
* ``n4``: whether the inputs were bias-corrected; the dataset does not say, so fit
  records -1 (unknown) and ``--preprocess auto`` leaves N4 to ``--n4``.
* brain volume (ml): the smallest, largest, mean and SD over the training subjects.
* the histogram distance limit: each training subject's histogram is compared with the
  training histogram (their mean) by the Wasserstein-1 distance (SciPy's
  ``wasserstein_distance`` over the bin centres, in normalised-intensity units: how far
  intensity mass must move); the limit is the largest of these plus three SDs of them.
* the mask's border share: the largest fraction of a training mask's voxels on the
  volume's outer faces (a brain cut by the field of view touches them).

Each field's out-of-range rule lives in :mod:`t7synth.inference.qc`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from scipy.stats import wasserstein_distance

#: Bins of the normalised intensity histogram over [0, 1] (values outside are clipped
#: into the end bins: ``data.normalisation: authors`` leaves about 1 % there).
HISTOGRAM_BINS = 64
#: The names of ``input_profile``'s entries, in order. Append only: checkpoints store
#: the tensor by position.
PROFILE_FIELDS = (
    "fitted",
    "skull_stripped",
    "n4",
    "brain_volume_min_ml",
    "brain_volume_max_ml",
    "brain_volume_mean_ml",
    "brain_volume_sd_ml",
    "histogram_distance_limit",
    "border_share_max",
    "subjects",
)
#: A training 3T counts as skull-stripped when fewer than this fraction of the voxels
#: outside its brain mask are above 0 (interpolation leaves a thin rim around brains
#: stripped before resampling).
STRIPPED_OUTSIDE_FRACTION = 0.01
#: ``skull_stripped`` and ``n4`` values: yes, no, not known.
YES, NO, UNKNOWN = 1.0, 0.0, -1.0


def empty_profile() -> torch.Tensor:
    """The profile of a model that saw no training data (``fitted`` 0): nothing is checked."""
    profile = torch.zeros(len(PROFILE_FIELDS))
    profile[PROFILE_FIELDS.index("skull_stripped")] = UNKNOWN
    profile[PROFILE_FIELDS.index("n4")] = UNKNOWN
    return profile


def uniform_histogram() -> torch.Tensor:
    """The histogram of a model that saw no data (flat; never compared: ``fitted`` is 0)."""
    return torch.full((HISTOGRAM_BINS,), 1.0 / HISTOGRAM_BINS)


def as_dict(profile: torch.Tensor) -> dict[str, float]:
    """``input_profile`` as ``{field: value}``."""
    values = profile.detach().cpu().double().tolist()
    return dict(zip(PROFILE_FIELDS, values))


def histogram(normalised, mask) -> np.ndarray:
    """The normalised in-brain intensities' histogram (:data:`HISTOGRAM_BINS` bins over
    [0, 1], values outside clipped into the end bins), summing to 1."""
    values = np.asarray(normalised, dtype=np.float64)[np.asarray(mask) > 0]
    counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    total = counts.sum()
    return counts / total if total else np.full(HISTOGRAM_BINS, 1.0 / HISTOGRAM_BINS)


def histogram_distance(first, second) -> float:
    """Wasserstein-1 distance between two histograms of :func:`histogram` (normalised
    intensity units, 0 to 1)."""
    centres = (np.arange(HISTOGRAM_BINS) + 0.5) / HISTOGRAM_BINS
    return float(wasserstein_distance(centres, centres, np.asarray(first), np.asarray(second)))


def border_share(mask) -> float:
    """The fraction of the mask's voxels that lie on the volume's outer faces."""
    inside = np.asarray(mask) > 0
    total = int(inside.sum())
    if not total:
        return 0.0
    faces = np.zeros_like(inside)
    for axis in range(inside.ndim):
        index = [slice(None)] * inside.ndim
        for end in (0, -1):
            index[axis] = end
            faces[tuple(index)] = True
    return float((inside & faces).sum()) / total


def outside_fraction(raw, mask) -> float:
    """The fraction of voxels outside ``mask`` whose raw intensity is above 0."""
    outside = np.asarray(mask) <= 0
    return float((np.asarray(raw)[outside] > 0).mean()) if outside.any() else 0.0


def training_profile(subjects: Iterable[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_profile, intensity_histogram)`` of the training subjects.

    Args:
        subjects: one dict per training subject with ``normalised`` (the preprocessed
            3T), ``mask``, ``outside_fraction`` (:func:`outside_fraction` of the raw 3T)
            and ``voxel_volume_ml``.
    """
    histograms, volumes, borders, outside = [], [], [], []
    for subject in subjects:
        mask = np.asarray(subject["mask"]) > 0
        histograms.append(histogram(subject["normalised"], mask))
        volumes.append(float(mask.sum()) * float(subject["voxel_volume_ml"]))
        borders.append(border_share(mask))
        outside.append(float(subject["outside_fraction"]))
    if not histograms:
        return empty_profile(), uniform_histogram()
    mean = np.mean(histograms, axis=0)
    distances = np.array([histogram_distance(h, mean) for h in histograms])
    values = {
        "fitted": YES,
        "skull_stripped": YES if max(outside) < STRIPPED_OUTSIDE_FRACTION else NO,
        "n4": UNKNOWN,
        "brain_volume_min_ml": min(volumes),
        "brain_volume_max_ml": max(volumes),
        "brain_volume_mean_ml": float(np.mean(volumes)),
        "brain_volume_sd_ml": float(np.std(volumes)),
        "histogram_distance_limit": float(distances.max() + 3.0 * distances.std()),
        "border_share_max": max(borders),
        "subjects": float(len(histograms)),
    }
    profile = torch.tensor([values[name] for name in PROFILE_FIELDS], dtype=torch.float32)
    return profile, torch.as_tensor(mean / mean.sum(), dtype=torch.float32)
