"""The pictures t7synth draws: slice montages, a run's ``progress.png``, runs' validation curves.

People judge synthesis by eye before they read numbers, so every validation, test and
evaluation writes a montage (3T | synthetic 7T | 7T | absolute error, in three
orientations), and every run redraws ``progress.png`` (nnU-Net's habit: losses,
validation scores against both baselines, learning rate and epoch time) at every
epoch, from its ``metrics.csv``, so a run can be judged without W&B.

Volumes are RAS+ arrays (every volume t7synth reads is reoriented so by
:func:`t7synth.data.volumes.load_volume`; i: left→right, j: posterior→anterior,
k: inferior→superior). Slices are shown in neurological view (the subject's left on
the left, anterior and superior up), with the orientation letters on each panel.

Every picture is written atomically (:func:`t7synth.files.atomic_path`): a reader,
a W&B upload or a sweep never sees half a PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from t7synth.files import atomic_path

#: Top of the error colour scale, in normalised intensity (volumes lie in [0, 1]).
ERROR_MAX = 0.25
#: Where the sagittal slice cuts the brain's left-right extent. The centre (0.5) lies
#: in the interhemispheric fissure, which shows mostly CSF and falx; 0.4 cuts through
#: the left hemisphere's cortex, white matter and deep grey matter.
SAGITTAL_FRACTION = 0.4
#: The views of a montage: name, the array axis they cut, and the orientation letters
#: at (left, right, bottom, top) of the panel for an RAS+ volume.
VIEWS = (
    ("axial", 2, ("L", "R", "P", "A")),
    ("coronal", 1, ("L", "R", "I", "S")),
    ("sagittal", 0, ("P", "A", "I", "S")),
)


def slice_indices(mask: np.ndarray | None, shape: Sequence[int]) -> tuple[int, int, int]:
    """The (i, j, k) slices a montage shows: through the brain, the sagittal off the midline.

    The axial and coronal slices cut the middle of the brain's extent (both
    hemispheres); the sagittal one cuts :data:`SAGITTAL_FRACTION` of the way from its
    left edge. Without a mask (or an empty one) the whole array stands for the brain.
    """
    if mask is None or not mask.any():
        low, high = [0, 0, 0], [s - 1 for s in shape]
    else:
        indices = np.nonzero(mask)
        low, high = [int(idx.min()) for idx in indices], [int(idx.max()) for idx in indices]
    fractions = (SAGITTAL_FRACTION, 0.5, 0.5)
    return tuple(int(round(lo + f * (hi - lo))) for lo, hi, f in zip(low, high, fractions))


def _view(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The slice ``index`` along ``axis``, transposed so that ``origin="lower"`` shows
    the first remaining axis left→right and the second bottom→top."""
    return np.take(volume, index, axis=axis).T


def _as_array(x) -> np.ndarray | None:
    if x is None:
        return None
    x = x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float32)
    return np.squeeze(x)


def pyplot():
    """pyplot with a non-interactive backend: chosen when something is drawn, not at
    import, so importing this module leaves an interactive session's backend alone."""
    matplotlib.use("Agg", force=False)
    return plt


def save_figure(figure, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(figure)
    return path


def save_montage(
    path: str | Path,
    source,
    prediction,
    target,
    mask=None,
    title: str = "",
) -> Path:
    """Write a montage PNG atomically and return its path.

    Args:
        path: output file (``.png``).
        source, prediction, target: (I, J, K) RAS+ arrays or tensors in [0, 1];
            ``prediction`` may be ``None`` (then only 3T, 7T and their difference).
        mask: optional brain mask; it chooses the slices (:func:`slice_indices`).
        title: figure title (subject, the epoch of the weights, scores).
    """
    source, prediction, target = map(_as_array, (source, prediction, target))
    shown = prediction if prediction is not None else source
    error_label = "|synthetic − 7T|" if prediction is not None else "|3T − 7T|"
    columns = [
        ("3T input", source, "gray", 1.0),
        ("synthetic 7T", prediction, "gray", 1.0),
        ("7T target", target, "gray", 1.0),
        (error_label, np.abs(np.clip(shown, 0, 1) - target), "magma", ERROR_MAX),
    ]
    return save_panels(
        path,
        [c for c in columns if c[1] is not None],
        mask,
        title,
        colorbar=(error_label, "absolute error (intensity, 0–1 scale)"),
    )


def save_panels(path: str | Path, columns, mask=None, title: str = "", colorbar: tuple[str, str] | None = None) -> Path:
    """Write a PNG of axial, coronal and sagittal slices (rows) of several volumes
    (columns) atomically and return its path; :func:`save_montage` is one use of it.

    Args:
        path: output file (``.png``).
        columns: ``(label, volume, cmap, vmax)`` per column; volumes are (I, J, K)
            RAS+ arrays or tensors on one grid, shown from 0 to ``vmax``.
        mask: optional brain mask; it chooses the slices (:func:`slice_indices`).
        title: figure title.
        colorbar: ``(column label, axis label)``: draw a colour bar for that column
            (its scale is what makes an error map readable); values above its
            ``vmax`` are drawn in the top colour, which the bar's arrow shows.
    """
    plt = pyplot()
    columns = [(label, _as_array(volume), cmap, vmax) for label, volume, cmap, vmax in columns]
    shape = columns[0][1].shape
    centre = slice_indices(_as_array(mask), shape)
    bar_width = 0.9 if colorbar else 0.0
    width = 2.5 * len(columns) + bar_width
    figure, axes = plt.subplots(3, len(columns), figsize=(width, 7.8), squeeze=False)
    bar_image = None
    for col, (label, volume, cmap, vmax) in enumerate(columns):
        for row, (_, axis_index, letters) in enumerate(VIEWS):
            axis = axes[row][col]
            image = axis.imshow(
                _view(volume, axis_index, centre[axis_index]),
                cmap=cmap,
                vmin=0,
                vmax=vmax,
                origin="lower",
                interpolation="nearest",
            )
            axis.set_xticks([])
            axis.set_yticks([])
            if col == 0:  # every column shows the same slices: the letters once per row
                _orientation_letters(axis, letters)
            if row == 0:
                axis.set_title(label, fontsize=10)
            if colorbar and label == colorbar[0]:
                bar_image = image
    for row, (view, axis_index, _) in enumerate(VIEWS):
        axes[row][0].set_ylabel(f"{view} ({'ijk'[axis_index]} = {centre[axis_index]})", fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    # tight_layout, not constrained layout: the same result here at half the drawing time.
    figure.tight_layout(rect=(0, 0, 1 - bar_width / width, 1))
    if bar_image is not None:
        left = 1 - bar_width / width + 0.1 / width
        bar = figure.colorbar(bar_image, cax=figure.add_axes((left, 0.3, 0.18 / width, 0.4)), extend="max")
        bar.set_label(colorbar[1], fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return save_figure(figure, path, dpi=80)


def _orientation_letters(axis, letters: tuple[str, str, str, str]) -> None:
    """Write the anatomical directions at the panel's left, right, bottom and top edges."""
    style = dict(color="#ffd54a", fontsize=7, fontweight="bold", transform=axis.transAxes, ha="center", va="center")
    for (x, y), letter in zip(((0.04, 0.5), (0.96, 0.5), (0.5, 0.04), (0.5, 0.96)), letters):
        axis.text(x, y, letter, **style)


# -- training curves ---------------------------------------------------------------------
#: Reference rows of a run's validation, their labels and line styles.
# -- sharpness: power spectra and zoomed montages -------------------------------------------
#: Where :func:`zoom_region` looks by default, as fractions of the brain's extent along
#: i (left→right), j (posterior→anterior) and k (inferior→superior): the left
#: hemisphere's lateral cortex, in an axial slice above the ventricles, where sulci
#: and gyri are dense and a blurred image loses them first.
ZOOM_FRACTIONS = (0.22, 0.5, 0.7)
#: The zoomed square's side as a fraction of the brain's left-right extent.
ZOOM_SIZE_FRACTION = 0.35


def zoom_region(
    mask: np.ndarray | None, shape: Sequence[int], fractions: Sequence[float] = ZOOM_FRACTIONS, size: int | None = None
) -> tuple[int, slice, slice]:
    """The axial slice ``k`` and the square ``(i, j)`` window :func:`save_zoom` enlarges.

    The window is centred at ``fractions`` of the brain's bounding box (the array's
    without a mask), ``size`` voxels wide (default :data:`ZOOM_SIZE_FRACTION` of the
    brain's left-right extent), and moved inside the array if it would cross an edge.
    """
    mask = None if mask is None else np.asarray(mask) > 0
    if mask is None or not mask.any():
        low, high = [0, 0, 0], [s - 1 for s in shape]
    else:
        indices = np.nonzero(mask)
        low, high = [int(idx.min()) for idx in indices], [int(idx.max()) for idx in indices]
    centre = [int(round(lo + f * (hi - lo))) for lo, hi, f in zip(low, high, fractions)]
    side = int(size or max(8, round(ZOOM_SIZE_FRACTION * (high[0] - low[0] + 1))))
    windows = []
    for axis in (0, 1):
        side_here = min(side, shape[axis])
        start = min(max(0, centre[axis] - side_here // 2), shape[axis] - side_here)
        windows.append(slice(start, start + side_here))
    return centre[2], windows[0], windows[1]


def save_zoom(
    path: str | Path,
    columns,
    mask=None,
    title: str = "",
    fractions: Sequence[float] = ZOOM_FRACTIONS,
    size: int | None = None,
) -> Path:
    """Several volumes side by side, whole axial slice above and one cortical region enlarged below.

    Made to compare models' sharpness by eye: every column is shown on the same grey
    scale (0 to 1) and the same window, nearest-neighbour, so a blurred cortex and an
    invented texture both show at the voxel scale.

    Args:
        path: output PNG.
        columns: ``(label, volume)`` per column, e.g. the 3T, each model's synthetic 7T
            and the 7T; (I, J, K) RAS+ arrays or tensors on one grid, in [0, 1].
        mask: optional brain mask; it places the region (:func:`zoom_region`).
        title: figure title.
        fractions, size: where the region is and how wide (:func:`zoom_region`).

    Raises:
        ValueError: no columns, or volumes on different grids.
    """

    columns = [(label, _as_array(volume)) for label, volume in columns]
    if not columns:
        raise ValueError("save_zoom needs at least one volume")
    shape = columns[0][1].shape
    for label, volume in columns:
        if volume.shape != shape:
            raise ValueError(f"{label} has shape {volume.shape}, {columns[0][0]} has {shape}: not on one grid")
    k, window_i, window_j = zoom_region(_as_array(mask), shape, fractions, size)
    plt = pyplot()
    figure, axes = plt.subplots(2, len(columns), figsize=(2.6 * len(columns), 5.6), squeeze=False, layout="constrained")
    for col, (label, volume) in enumerate(columns):
        full = _view(volume, 2, k)
        axes[0][col].imshow(full, cmap="gray", vmin=0, vmax=1, origin="lower", interpolation="nearest")
        axes[0][col].add_patch(
            Rectangle(
                (window_i.start - 0.5, window_j.start - 0.5),
                window_i.stop - window_i.start,
                window_j.stop - window_j.start,
                fill=False,
                edgecolor="#ffd54a",
                linewidth=1,
            )
        )
        axes[1][col].imshow(
            full[window_j, window_i], cmap="gray", vmin=0, vmax=1, origin="lower", interpolation="nearest"
        )
        axes[0][col].set_title(label, fontsize=10)
        for row in (0, 1):
            axes[row][col].set_xticks([])
            axes[row][col].set_yticks([])
        _orientation_letters(axes[0][col], VIEWS[0][2])
    axes[0][0].set_ylabel(f"axial (k = {k})", fontsize=9)
    axes[1][0].set_ylabel(f"i {window_i.start}–{window_i.stop - 1}, j {window_j.start}–{window_j.stop - 1}", fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    return save_figure(figure, path, dpi=110)
