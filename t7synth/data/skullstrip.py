"""A raw (full-head) T1w scan made ready for a model trained on brains: brain extraction
with deepbet and bias-field correction with N4, both on the scan's own grid.

**Brain extraction: deepbet** (Fisch et al., "deepbet: Fast brain extraction of T1-weighted
MRI using Convolutional Neural Networks", Computers in Biology and Medicine 2024; MIT
licence). Its two TorchScript networks (a coarse one that finds the brain's bounding box
at 128³, a fine one inside the box at 256³) ship inside its wheel, so extraction works
offline and needs no download; it runs on the CPU in about 5 s per scan (measured on the
project's 2-core AMD EPYC machine, a 1 mm full-head volume). Only ``deepbet.BrainExtraction``
is used: its package also holds a GUI (``deepbet.ui``, customtkinter) that is never imported.
deepbet works in the array's voxel axes; :func:`extract_brain` gives it the RAS+ array of
:func:`~t7synth.data.volumes.load_volume` (the orientation deepbet reorients its own inputs
to) and returns the mask on that grid, so writing it back goes through
:func:`~t7synth.data.volumes.image_like` like every prediction.

**Bias correction: N4** (Tustison et al., "N4ITK: improved N3 bias correction", IEEE TMI
2010) through SimpleITK's ``N4BiasFieldCorrectionImageFilter``, fitted inside the brain on
a copy shrunk to about :data:`N4_TARGET_VOXELS` voxels along its longest axis (the bias
field is smooth, so the fit loses nothing and takes about a second), with the scan's voxel
spacing, then evaluated on the full grid. One thread, so the result does not depend on the
machine.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from deepbet import BrainExtraction

from t7synth.errors import UserError

#: deepbet's probability threshold (its own default): a voxel is brain above it.
EXTRACTION_THRESHOLD = 0.5
#: N4 is fitted on a copy with about this many voxels along its longest axis.
N4_TARGET_VOXELS = 36
#: N4 iterations per fitting level (two levels).
N4_ITERATIONS = (20, 20)
#: N4 works on logarithms: intensities are floored to this (relative to the brain's
#: maximum for :func:`n4_correct`, absolute for unit-scaled images).
N4_FLOOR = 1e-3

_EXTRACTORS: dict[str, BrainExtraction] = {}


def extractor(device: str = "cpu") -> BrainExtraction:
    """deepbet's networks on ``device``, loaded once per process (from its wheel's files)."""
    key = "cuda" if str(device).startswith("cuda") else "cpu"
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = BrainExtraction(no_gpu=key == "cpu")
    return _EXTRACTORS[key]


def extract_brain(array: np.ndarray, source: str = "the scan", device: str = "cpu") -> np.ndarray:
    """deepbet's brain mask of a full-head scan, on the scan's own grid.

    Args:
        array: the scan as :func:`~t7synth.data.volumes.load_volume` gives it (RAS+, 3D).
        source: the file's name, for the error message.
        device: ``cpu`` or ``cuda``.

    Returns:
        Boolean array of ``array.shape``: deepbet's probability above
        :data:`EXTRACTION_THRESHOLD`, its largest connected component with holes filled
        (deepbet's own post-processing).

    Raises:
        UserError: extraction found no brain (an image that is not a head T1w, say).
    """
    bet = extractor(device)
    try:
        with torch.no_grad():
            probability = bet.run_model(np.ascontiguousarray(array, dtype=np.float32).copy())
            mask = bet.postprocess(probability > EXTRACTION_THRESHOLD)
    except (AssertionError, ValueError) as error:
        # deepbet asserts when its coarse network finds no foreground; numpy's argmax of
        # an empty bincount when the fine one finds none.
        reason = str(error).splitlines()[0] if str(error) else "no brain found"
        raise UserError(f"brain extraction found no brain in {source} ({reason}); is it a T1w head scan?") from None
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise UserError(f"brain extraction found no brain in {source}; is it a T1w head scan?")
    return mask


def n4_correct(
    image: np.ndarray,
    mask: np.ndarray,
    spacing=(1.0, 1.0, 1.0),
    floor: float | None = None,
) -> np.ndarray:
    """N4 bias correction of ``image`` inside ``mask`` (float32, 0 outside the mask).

    Args:
        image: 3D array.
        mask: where the field is fitted and the result kept (boolean-like, same shape).
        spacing: voxel size in mm along the array's axes (the B-spline field's control
            points are placed in millimetres).
        floor: the smallest intensity N4 sees (it takes logarithms); default
            :data:`N4_FLOOR` times the brain's largest value.
    """
    brain = np.asarray(mask, dtype=bool)
    if not brain.any():
        raise UserError("N4 bias correction needs a non-empty brain mask")
    if floor is None:
        floor = N4_FLOOR * float(np.max(image[brain])) if float(np.max(image[brain])) > 0 else N4_FLOOR
    values = np.where(brain, np.maximum(image, floor), 0.0).astype(np.float32)
    # SimpleITK arrays are (z, y, x): transpose so the spacing's axes line up.
    full = sitk.GetImageFromArray(np.ascontiguousarray(values.transpose(2, 1, 0)))
    full_mask = sitk.GetImageFromArray(np.ascontiguousarray(brain.astype(np.uint8).transpose(2, 1, 0)))
    for item in (full, full_mask):
        item.SetSpacing([float(s) for s in spacing])
    shrink = max(1, round(max(image.shape) / N4_TARGET_VOXELS))
    small, small_mask = sitk.Shrink(full, [shrink] * 3), sitk.Shrink(full_mask, [shrink] * 3)
    if not sitk.GetArrayViewFromImage(small_mask).any():  # a mask thinner than the shrink factor
        small, small_mask = full, full_mask
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(N4_ITERATIONS))
    corrector.SetNumberOfThreads(1)
    corrector.Execute(small, small_mask)
    log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(full)).transpose(2, 1, 0)
    return (values / np.exp(log_field)).astype(np.float32) * brain
