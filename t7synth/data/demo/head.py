"""A full-head T1w scan simulated around the (skull-stripped) MNI152 template.

nilearn's MNI152 2009a template is a brain without a head: nothing to test brain
extraction on. :func:`full_head` wraps it in the layers a T1w scan of a head shows,
placed by the distance from the template's brain mask (SciPy's Euclidean distance
transform): dark CSF (0-3 mm), dark skull (3-9 mm), bright scalp fat (9-14 mm) and a
neck below; then a smooth multiplicative bias field and Rician-like noise (the magnitude
of Gaussian noise). The tests, the ``raw_overhead`` benchmark and the picture in
``docs/applying.md`` use it; the true brain mask comes with it.

:func:`resliced` puts the phantom on another grid (a voxel size, an orientation, an
oblique rotation), as scanners write them, with the true mask on the same grid.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from t7synth.data.demo.simulate import load_template

#: Distances (mm) from the brain mask where each layer ends, and its T1w intensity
#: relative to white matter (about 1 in the template): CSF, skull, scalp.
LAYERS = ((3.0, 0.15), (9.0, 0.05), (14.0, 0.8))
NECK_INTENSITY = 0.55
#: Voxels added around the template's 1 mm grid (I, J, K; the neck needs room below).
PADDING = ((12, 12), (12, 12), (40, 8))


class Head(NamedTuple):
    """A simulated head: the scan, the template's brain (the scan's true skull-stripped
    version, bias field and noise included), the true mask, and the voxel-to-mm affine."""

    head: np.ndarray  # float32
    brain: np.ndarray  # float32, head * mask
    mask: np.ndarray  # bool
    affine: np.ndarray


def full_head(seed: int = 0, bias: float = 0.25, noise: float = 0.02) -> Head:
    """The template wrapped in CSF, skull, scalp and neck, on a 1 mm RAS grid.

    Args:
        seed: the noise's seed.
        bias: amplitude of the log bias field (0: none).
        noise: SD of the Gaussian noise whose magnitude is added (0: none).
    """
    template = load_template()
    brain = np.pad(template.image, PADDING)
    mask = np.pad(template.mask > 0, PADDING)
    affine = template.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([p[0] for p in PADDING], dtype=np.float64)
    distance = ndimage.distance_transform_edt(~mask)
    head = brain.astype(np.float32).copy()
    inner = 0.0
    for outer, value in LAYERS:
        head[(distance > inner) & (distance <= outer)] = value
        inner = outer
    i, j, k = np.indices(head.shape, dtype=np.float32)
    centre = np.argwhere(mask).mean(axis=0)
    lowest = int(np.argwhere(mask)[:, 2].min())
    neck = (k < lowest + 25) & (((i - centre[0]) / 35) ** 2 + ((j - centre[1] - 10) / 40) ** 2 < 1) & (distance > 3)
    head[neck] = np.maximum(head[neck], NECK_INTENSITY)
    head = ndimage.gaussian_filter(head, 0.6)  # partial volume at the layers' edges
    field = np.exp(bias * (np.sin(i / 60.0) + 0.8 * np.cos(k / 70.0))) if bias else 1.0
    rng = np.random.default_rng(seed)
    head = np.abs(head * field + rng.normal(0.0, noise, head.shape)).astype(np.float32)
    return Head(head, head * mask, mask, affine)


def resliced(phantom: Head, affine: np.ndarray, shape) -> Head:
    """The phantom resampled onto the grid ``(shape, affine)`` (linear for the images,
    nearest for the mask; SciPy's ``map_coordinates``)."""
    # The new grid's voxel -> the phantom's voxel: inv(phantom) @ new.
    to_phantom = np.linalg.inv(phantom.affine) @ np.asarray(affine, dtype=np.float64)
    matrix, offset = to_phantom[:3, :3], to_phantom[:3, 3]
    head = ndimage.affine_transform(phantom.head, matrix, offset, output_shape=tuple(shape), order=1)
    mask = ndimage.affine_transform(phantom.mask.astype(np.uint8), matrix, offset, output_shape=tuple(shape), order=0)
    head = head.astype(np.float32)
    return Head(head, head * (mask > 0), mask > 0, np.asarray(affine, dtype=np.float64))


def grid_around(phantom: Head, voxel_size, rotation_deg: float = 0.0, flip=(False, False, False)):
    """An affine and shape covering the phantom's head at ``voxel_size`` (mm, per axis),
    rotated by ``rotation_deg`` about the superior axis (oblique) and with the flipped
    axes (``flip=(True, True, False)`` gives LPS)."""
    voxel = np.asarray(voxel_size, dtype=np.float64)
    angle = np.deg2rad(rotation_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    signs = np.where(np.asarray(flip), -1.0, 1.0)
    extent = np.array(phantom.head.shape) * np.abs(np.diag(phantom.affine)[:3])
    centre = phantom.affine[:3, :3] @ ((np.array(phantom.head.shape) - 1) / 2) + phantom.affine[:3, 3]
    shape = np.ceil(extent / voxel).astype(int)
    linear = rotation @ np.diag(signs * voxel)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = centre - linear @ ((shape - 1) / 2)
    return affine, tuple(int(s) for s in shape)
