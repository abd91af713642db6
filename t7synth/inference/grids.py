"""Voxel grids: spacing, resampling and whole-voxel shifts between grids (numpy/scipy).

``predict`` brings a scan of any voxel size to the training voxel size and back
(:func:`resampled_grid`, :func:`resample`); crops and pads only move a grid's origin by
whole voxels, which :func:`shift_to_grid` repeats or undoes without interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import affine_transform


def spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm of each array axis (column norms of the affine)."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def resampled_grid(
    shape: Sequence[int], affine: np.ndarray, voxel_size: Sequence[float]
) -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid with the same axes and first voxel centre as ``(shape, affine)`` but
    ``voxel_size`` spacing, covering every voxel centre of the original grid."""
    affine = np.asarray(affine, dtype=np.float64)
    old = spacing(affine)
    new = np.asarray(voxel_size, dtype=np.float64)
    extent = (np.asarray(shape) - 1) * old
    new_shape = tuple(int(n) for n in np.floor(extent / new + 1e-6).astype(int) + 1)
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] / old * new
    return new_shape, new_affine


def resample(
    volume: np.ndarray, from_affine: np.ndarray, to_shape: Sequence[int], to_affine: np.ndarray, order: int
) -> np.ndarray:
    """Sample ``volume`` (on ``from_affine``) at the voxel centres of another grid.

    Args:
        order: 1 for images (trilinear), 0 for masks (nearest).

    Returns:
        float32 array of ``to_shape``; points outside the volume are 0.
    """

    # affine_transform maps output voxel indices to input voxel indices.
    matrix = np.linalg.inv(np.asarray(from_affine, dtype=np.float64)) @ np.asarray(to_affine, dtype=np.float64)
    out = affine_transform(
        np.asarray(volume, dtype=np.float32),
        matrix[:3, :3],
        matrix[:3, 3],
        output_shape=tuple(to_shape),
        order=order,
        mode="constant",
        cval=0.0,
    )
    return out.astype(np.float32, copy=False)


def shift_to_grid(
    volume: np.ndarray, from_affine: np.ndarray, to_shape: Sequence[int], to_affine: np.ndarray
) -> np.ndarray:
    """Copy ``volume`` onto a grid that differs from its own by a whole-voxel shift.

    This is how crops and pads (TorchIO's ``CropOrPad`` moves the affine's origin) are
    undone or repeated without interpolation: voxels outside ``volume`` become 0.

    Raises:
        ValueError: the grids differ by more than an integer translation.
    """
    transform = np.linalg.inv(np.asarray(to_affine, dtype=np.float64)) @ np.asarray(from_affine, dtype=np.float64)
    shift = np.round(transform[:3, 3]).astype(int)
    if not (np.allclose(transform[:3, :3], np.eye(3), atol=1e-3) and np.allclose(transform[:3, 3], shift, atol=1e-3)):
        raise ValueError("the grids differ by more than a whole-voxel shift")
    out = np.zeros(tuple(to_shape), dtype=np.float32)
    source_index, target_index = [], []
    for size_from, size_to, offset in zip(volume.shape, to_shape, shift):
        low = max(0, -offset)
        high = min(size_from, size_to - offset)
        if high <= low:
            return out
        source_index.append(slice(low, high))
        target_index.append(slice(low + offset, high + offset))
    out[tuple(target_index)] = volume[tuple(source_index)]
    return out
