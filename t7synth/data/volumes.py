"""NIfTI volumes: read one in full and check it, check that two share a grid, the brain
mask, and write one byte-reproducibly. Every NIfTI file t7synth reads or writes goes
through here.

A volume is trusted only after it has been read in full: a truncated ``.nii.gz`` fails
only when its data is decompressed, so checking headers is not enough. Every problem a
user can cause ends in a :class:`~t7synth.errors.UserError` that names the file.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from t7synth.errors import UserError

#: Source and target must share their affine to this many millimetres per element.
AFFINE_TOLERANCE = 1e-3


def load_volume(path: str | Path):
    """Read a 3D NIfTI volume in full, in RAS+ orientation, and check its values.

    Returns:
        ``(array, affine)``: float32 array of shape (I, J, K) and its 4×4 affine.

    Raises:
        UserError: unreadable or truncated file, not 3D, NaN/Inf voxels, or a volume
            whose voxels are all equal (empty).
    """
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(str(path))
        image = nib.as_closest_canonical(image)
        # Reorienting can leave negative strides, which torch cannot wrap.
        array = np.ascontiguousarray(np.asarray(image.dataobj, dtype=np.float32))
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except Exception as error:  # nibabel, gzip and zlib raise many types for bad files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"cannot read {path}: {reason}") from None
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise UserError(f"{path} has shape {array.shape}; a 3D volume is expected")
    if not np.isfinite(array).all():
        raise UserError(f"{path} contains NaN or infinite voxels")
    if float(array.max()) == float(array.min()):
        raise UserError(f"{path} is empty: every voxel is {float(array.min())}")
    return array, image.affine


def check_pair(first: Path, first_shape, first_affine, second: Path, second_shape, second_affine) -> None:
    """Check that two volumes share a grid: the same shape and, within tolerance, affine.

    Raises:
        UserError: naming both files and what differs.
    """
    if tuple(first_shape) != tuple(second_shape):
        raise UserError(f"{second} has shape {tuple(second_shape)} but {first} has {tuple(first_shape)}")
    if not np.allclose(first_affine, second_affine, atol=AFFINE_TOLERANCE):
        raise UserError(f"{second} and {first} have different affines (not on the same grid)")


def brain_mask(source: Path, array: np.ndarray, affine, mask: Path | None = None) -> np.ndarray:
    """The brain mask of the 3T ``array`` read from ``source``: ``mask`` (checked to be
    on the scan's grid), else the scan's voxels above 0 (a skull-stripped scan is its own
    mask).

    Returns:
        Boolean array of ``array.shape``.

    Raises:
        UserError: an unreadable mask, a mask on another grid, or an empty mask.
    """
    if mask is not None:
        mask_array, mask_affine = load_volume(mask)
        check_pair(Path(source), array.shape, affine, Path(mask), mask_array.shape, mask_affine)
        inside = mask_array > 0
    else:
        inside = array > 0
    if not inside.any():
        raise UserError(f"the brain mask of {source} is empty ({mask or 'no voxel of the scan is above 0'})")
    return inside


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray, slope: float | None = None) -> None:
    """Write ``array`` as a gzipped NIfTI-1 with ``affine`` (qform and sform, code 1).

    The gzip stream is written here rather than by nibabel so that its header holds
    neither a timestamp nor a file name: identical arrays give identical bytes.
    ``slope`` sets the header's ``scl_slope``: readers see ``array * slope`` (how a
    uint8 array stores probabilities in steps of 1/255).
    """
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
        gz.write(image.to_bytes())


# -- outputs on an input's own grid (predict) -----------------------------------------
def canonical_shape(path: str | Path) -> tuple[int, int, int]:
    """The shape :func:`load_volume` would return (RAS+ axis order), read from the header
    alone: no voxel is read (the memory plan sizes volumes before preprocessing)."""
    import nibabel as nib

    image = nib.load(str(path))
    order = nib.orientations.io_orientation(image.affine)[:, 0].astype(int)
    shape = [0, 0, 0]
    for axis, size in zip(order, image.shape[:3]):
        shape[axis] = int(size)
    return tuple(shape)


def load_image(path: str | Path):
    """The ``nibabel`` image of a file already checked by :func:`load_volume` (its
    header and affine give the output's)."""
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as error:  # the file changed since it was checked
        raise UserError(
            f"cannot read {path}: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None


def _canonical_to_file(original) -> np.ndarray:
    """The orientation transform from RAS+ back to the ``original`` image's axes: the
    inverse of the ``as_closest_canonical`` in :func:`load_volume` (flips and a
    permutation, exact)."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    return ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(original.affine))


def to_file_axes(canonical: np.ndarray, original) -> np.ndarray:
    """A RAS+ array of :func:`load_volume` in the axes of the ``original`` image."""
    from nibabel.orientations import apply_orientation

    return apply_orientation(canonical, _canonical_to_file(original))


def image_like(canonical: np.ndarray, canonical_affine: np.ndarray, original):
    """A RAS+ array (with its affine) as a float32 image in the ``original`` image's
    orientation, affine and header (see :func:`image_on_file_grid`)."""
    import nibabel as nib

    image = nib.Nifti1Image(canonical, canonical_affine).as_reoriented(_canonical_to_file(original))
    if not np.allclose(image.affine, original.affine, atol=1e-4):
        raise RuntimeError("reorientation to the input's axes did not restore its affine")
    return image_on_file_grid(np.asarray(image.dataobj, dtype=np.float32), original)


def image_on_file_grid(array: np.ndarray, original, description: str = "t7synth synthetic 7T"):
    """``array`` (in the file's own axes) as a float32 image with the file's affine and header."""
    import nibabel as nib

    header = nib.Nifti1Header.from_header(original.header)
    result = nib.Nifti1Image(np.asarray(array, dtype=np.float32), original.affine, header=header)
    result.set_data_dtype(np.float32)
    # Keep the input's exact sform and qform (and their codes), so every viewer,
    # whichever of the two it reads, places the voxels where the input's were.
    sform, sform_code = original.header.get_sform(coded=True) if hasattr(original.header, "get_sform") else (None, 0)
    qform, qform_code = original.header.get_qform(coded=True) if hasattr(original.header, "get_qform") else (None, 0)
    result.set_sform(sform if sform_code else original.affine, int(sform_code) if sform_code else 2)
    if qform_code:
        result.set_qform(qform, int(qform_code))
    result.header.set_slope_inter(1.0, 0.0)
    # The input's display window (3T intensities) would make the output look black.
    result.header["cal_min"], result.header["cal_max"] = 0.0, 1.0
    result.header["descrip"] = description.encode()[:79]
    return result


def save_image(image, path: str | Path) -> Path:
    """Write a ``nibabel`` image atomically (a reader sees the old file or the new one)."""
    import nibabel as nib

    from t7synth.files import atomic_path

    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return Path(path)
