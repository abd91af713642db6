"""How the authors' ``inferer3T.py`` frames a scan for the released models (``data.inference: authors``).

The released models' settings (their params files) and the framing itself: the brain's
bounding box, widened by a margin, cropped and zero-padded into a fixed frame, and
predictions put back. Plain NumPy, no torch: ``convert --help`` reads the settings
from here, and :class:`t7synth.inference.synthesiser.Synthesiser` frames with it.

**The framing** (``inferer3T.py``; :func:`brain_box`,
:func:`frame_region`, :func:`to_frame`, :func:`from_frame`, :func:`window_middle`):
the scan is used in its file's array order (no reorientation); it is cropped to the
bounding box of its voxels above 0 (after normalisation: above the 1st percentile)
widened by 3 voxels before and 2 after (``[first - 3, last + 3)``); the crop is
zero-padded *at the end* of each axis to the frame; every 3-slice window lying wholly
in the frame is predicted, and the frame's first and last slices stay 0; the
prediction is cropped back and put in place, zero elsewhere, neither masked nor
clipped. The position token of the window starting at frame slice ``w`` is
``2 (w - mid) / n`` with ``mid`` the brain's centre in the *uncropped* scan and ``n``
the frame's slice count: the script measures the two in different coordinates, and
the conversion reproduces that as written.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from t7synth.errors import UserError

#: The released models' ``slice_dim`` (``models/params_no_diag.txt``, ``paramsGanNoDiag.txt``).
OFFICIAL_SLICE_DIM = 1
#: Their frame ``(d1, d2, d3)`` in the file's array axes: ``slice_size (288, 222)`` with
#: ``n_slices 244`` along ``slice_dim`` 1 (the same params files). The repository's
#: example ``params.json`` uses ``304, 304, 308`` (``convert --frame``).
OFFICIAL_FRAME = (288, 244, 222)
#: The released networks read three adjacent slices (``n_in_slices``); ``inferer3T.py``
#: builds exactly three-slice windows.
OFFICIAL_SLICES = 3
#: ``inferer3T.py`` widens the brain's bounding box by this many voxels before it
#: (and one fewer after, its slice ends being exclusive).
BOX_MARGIN = 3


def brain_box(volume: np.ndarray) -> list[tuple[int, int]]:
    """``(first, last)`` index of the voxels above 0 along each axis (``brain_location``).

    Raises:
        UserError: no voxel above 0.
    """
    inside = np.asarray(volume) > 0
    box = []
    for axis in range(inside.ndim):
        present = np.flatnonzero(inside.any(axis=tuple(a for a in range(inside.ndim) if a != axis)))
        if present.size == 0:
            raise UserError("no voxel of the normalised scan is above 0: the authors' brain box is empty")
        box.append((int(present[0]), int(present[-1])))
    return box


def frame_region(box: Sequence[tuple[int, int]], shape: Sequence[int], frame: Sequence[int]) -> tuple[slice, ...]:
    """The crop ``[first - 3, last + 3)`` of every axis, within the scan.

    Raises:
        UserError: a crop larger than the frame along some axis (``inferer3T.py``
            would fail there too).
    """
    region = tuple(
        slice(max(first - BOX_MARGIN, 0), min(last + BOX_MARGIN, size)) for (first, last), size in zip(box, shape)
    )
    sizes = tuple(r.stop - r.start for r in region)
    if any(s > f for s, f in zip(sizes, frame)):
        raise UserError(
            f"the brain's box ({'x'.join(map(str, sizes))} voxels with the authors' margin) does not fit the frame "
            f"data.shape {'x'.join(map(str, frame))} of the converted model (convert --frame)"
        )
    return region


def to_frame(volume: np.ndarray, region: tuple[slice, ...], frame: Sequence[int]) -> np.ndarray:
    """Crop ``volume`` to ``region`` and zero-pad each axis at its end to ``frame``."""
    cropped = np.asarray(volume)[region]
    return np.pad(cropped, [(0, f - s) for s, f in zip(cropped.shape, frame)])


def from_frame(framed: np.ndarray, region: tuple[slice, ...], shape: Sequence[int], axis: int) -> np.ndarray:
    """Undo :func:`to_frame` for a prediction: the crop's part of ``framed`` in place,
    zero elsewhere, and zero on the frame's first and last slice along ``axis``
    (``inferer3T.py`` predicts only the windows wholly inside the frame).
    """
    framed = np.array(framed, dtype=np.float32)
    ends = [slice(None)] * framed.ndim
    ends[axis] = [0, framed.shape[axis] - 1]
    framed[tuple(ends)] = 0.0
    out = np.zeros(tuple(shape), dtype=np.float32)
    out[region] = framed[tuple(slice(0, r.stop - r.start) for r in region)]
    return out


def window_middle(box: Sequence[tuple[int, int]], axis: int, slices: int = OFFICIAL_SLICES) -> float:
    """The ``brain_mid`` that makes t7synth's token ``2 (centre - brain_mid) / n`` equal
    ``inferer3T.py``'s ``2 (w - mid) / n``.

    t7synth indexes a window by its centre slice, ``w + slices // 2`` for the window
    starting at ``w``; the script uses ``w`` and the brain's centre ``mid`` in the
    uncropped scan.
    """
    first, last = box[axis]
    return (first + last) / 2 + slices // 2
