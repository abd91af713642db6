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

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from t7synth.run_files import BEST_CHECKPOINT, last_value, per_epoch, read_metrics

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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | Path, dpi: int) -> Path:
    from t7synth.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format="png")
    _pyplot().close(figure)
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
    plt = _pyplot()
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
    return _save(figure, path, dpi=80)


def _orientation_letters(axis, letters: tuple[str, str, str, str]) -> None:
    """Write the anatomical directions at the panel's left, right, bottom and top edges."""
    style = dict(color="#ffd54a", fontsize=7, fontweight="bold", transform=axis.transAxes, ha="center", va="center")
    for (x, y), letter in zip(((0.04, 0.5), (0.96, 0.5), (0.5, 0.04), (0.5, 0.96)), letters):
        axis.text(x, y, letter, **style)


# -- training curves ---------------------------------------------------------------------
#: Reference rows of a run's validation, their labels and line styles.
_REFERENCE_STYLES = (("identity", "identity (3T input)", "--"), ("lut", "intensity LUT", ":"))


def save_progress(metrics_csv: str | Path, path: str | Path, title: str = "") -> Path | None:
    """Draw a run's ``progress.png`` from its ``metrics.csv``; ``None`` if nothing is logged yet.

    Six panels, every one against the epoch (0-based, as in the montages' names and
    the checkpoints): the training losses (mean over each epoch's logged steps), the
    learning rate, the validation in-brain PSNR, in-brain SSIM and MAE of the model
    with both baselines as horizontal lines (identity: the 3T input scored as the
    prediction; intensity LUT), and the wall time of each epoch (training and
    validation). The epoch of ``best.ckpt`` (highest validation in-brain PSNR) is
    marked on the validation panels.
    """
    from t7synth.scores import COLUMNS, HEADLINE, metric_key

    rows = read_metrics(metrics_csv)
    if not rows:
        return None
    plt = _pyplot()
    keys = sorted({key for row in rows for key in row})
    figure, axes = plt.subplots(3, 2, figsize=(11, 9.5), layout="constrained")
    figure.suptitle(title or str(Path(metrics_csv).parent), fontsize=10)

    losses = [k for k in keys if k.startswith("train/") and k != "train/epoch_time"]
    axis = axes[0][0]
    for key in losses:
        epochs, values = per_epoch(rows, key, "mean")
        axis.plot(epochs, values, marker="o", markersize=3, label=key.removeprefix("train/"))
    _finish(axis, "training losses (epoch mean)", "loss", bool(losses), log=_all_positive(rows, losses))

    axis = axes[0][1]
    rates = [k for k in keys if k.startswith("lr-")]
    for key in rates:
        positions, values = within_epochs(rows, key)
        if len(positions) > len({int(x) for x in positions}):
            # Logged per step (a schedule stepped per batch, one-cycle): drawn as the curve it is.
            axis.plot(positions, values, linewidth=1.2, label=key.removeprefix("lr-"))
        else:
            # Once per epoch (StepLR steps per epoch): the staircase it is.
            axis.step(positions, values, where="post", label=key.removeprefix("lr-"))
    _finish(axis, "learning rate", "learning rate", bool(rates), log=_all_positive(rows, rates), legend=len(rates) > 1)

    best_epochs, best_values = per_epoch(rows, metric_key("val", "model", HEADLINE))
    best_epoch = best_epochs[int(np.argmax(best_values))] if best_values else None
    for axis, name in zip((axes[1][0], axes[1][1], axes[2][0]), (HEADLINE, "ssim_brain", "mae")):
        epochs, values = per_epoch(rows, metric_key("val", "model", name))
        if values:
            axis.plot(epochs, values, marker="o", markersize=3, color="tab:blue", label="model")
        for kind, label, style in _REFERENCE_STYLES:
            reference = last_value(rows, metric_key("val", kind, name))
            if reference is not None:
                axis.axhline(reference, color="gray", linestyle=style, label=label)
        if best_epoch is not None:
            axis.axvline(
                best_epoch, color="tab:green", alpha=0.4, linewidth=4, label=f"{BEST_CHECKPOINT} (epoch {best_epoch})"
            )
        _finish(axis, f"validation {COLUMNS[name].heading}", COLUMNS[name].heading, bool(values))

    axis = axes[2][1]
    epochs, values = per_epoch(rows, "train/epoch_time")
    if values:
        axis.bar(epochs, values, color="tab:gray", width=0.8)
    _finish(axis, "epoch time (training + validation)", "seconds", bool(values), legend=False)
    return _save(figure, path, dpi=90)


def within_epochs(rows: Sequence[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    """``(positions, values)`` of ``key`` against the epoch, each logged value kept.

    An epoch's ``n`` values sit at ``epoch + i / n`` (in logging order), so a value
    logged every step draws as a curve on the epoch axis, and one logged once per epoch
    sits on the epoch itself.
    """
    by_epoch: dict[int, list[float]] = {}
    for row in rows:
        value = row.get(key, math.nan)
        if not math.isnan(value):
            by_epoch.setdefault(int(row["epoch"]), []).append(value)
    positions, values = [], []
    for epoch in sorted(by_epoch):
        logged = by_epoch[epoch]
        positions += [epoch + index / len(logged) for index in range(len(logged))]
        values += logged
    return positions, values


def keep_lines_in_range(axis) -> None:
    """Extend the y-range to every labelled horizontal line (a baseline), so that no
    line listed in the legend lies outside the picture."""
    low, high = axis.get_ylim()
    levels = [
        float(line.get_ydata()[0])
        for line in axis.get_lines()
        if not str(line.get_label()).startswith("_")
        and len(set(map(float, line.get_ydata()))) == 1
        and math.isfinite(float(line.get_ydata()[0]))
    ]
    if not levels:
        return
    new_low, new_high = min(low, *levels), max(high, *levels)
    if (new_low, new_high) != (low, high):
        if axis.get_yscale() == "log":
            axis.set_ylim(new_low / 1.2, new_high * 1.2)
        else:
            margin = 0.05 * (new_high - new_low or 1.0)
            axis.set_ylim(new_low - margin, new_high + margin)


def _all_positive(rows, keys) -> bool:
    values = [row[k] for row in rows for k in keys if not math.isnan(row.get(k, math.nan))]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 20


def _finish(axis, title: str, ylabel: str, has_data: bool, log: bool = False, legend: bool = True) -> None:
    """Title, labels, integer epoch ticks and a legend; or a 'nothing yet' note."""
    from matplotlib.ticker import MaxNLocator

    axis.set_title(title, fontsize=10)
    axis.set_xlabel("epoch", fontsize=9)
    axis.set_ylabel(ylabel, fontsize=9)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.tick_params(labelsize=8)
    axis.grid(alpha=0.3)
    if log:
        axis.set_yscale("log")
    if not has_data:
        axis.text(0.5, 0.5, "not logged yet", ha="center", va="center", transform=axis.transAxes, color="gray")
    elif legend:
        keep_lines_in_range(axis)
        axis.legend(fontsize=7, loc="best", framealpha=0.8)


def save_curves(
    runs: Sequence[tuple[str, str | Path]], path: str | Path, names: Sequence[str] = ("psnr_brain", "ssim_brain")
) -> Path | None:
    """Validation curves of several runs in one picture: one panel per score, one line per run.

    The identity and intensity-LUT references of the first run that logged them are
    drawn as gray lines (runs on the same validation subjects share them).

    Args:
        runs: ``(label, metrics.csv)`` per run; runs whose file has no validation are
            left out (an ``evaluate`` output has none).
        path: output PNG.
        names: the scores to draw (:data:`t7synth.scores.COLUMNS` names).

    Returns:
        The path, or ``None`` when no run has a validation curve.
    """
    from t7synth.scores import COLUMNS, metric_key

    histories = [(label, read_metrics(csv_path)) for label, csv_path in runs]
    histories = [(label, rows) for label, rows in histories if per_epoch(rows, metric_key("val", "model", names[0]))[0]]
    if not histories:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.3), squeeze=False, layout="constrained")
    for axis, name in zip(axes[0], names):
        for label, rows in histories:
            epochs, values = per_epoch(rows, metric_key("val", "model", name))
            axis.plot(epochs, values, marker="o", markersize=3, label=label)
        for kind, label, style in _REFERENCE_STYLES:
            reference = next(
                (v for _, rows in histories if (v := last_value(rows, metric_key("val", kind, name))) is not None), None
            )
            if reference is not None:
                axis.axhline(reference, color="gray", linestyle=style, label=label)
        _finish(axis, f"validation {COLUMNS[name].heading}", COLUMNS[name].heading, True)
    return _save(figure, path, dpi=100)


# -- sharpness: power spectra and zoomed montages -------------------------------------------
#: Where :func:`zoom_region` looks by default, as fractions of the brain's extent along
#: i (left→right), j (posterior→anterior) and k (inferior→superior): the left
#: hemisphere's lateral cortex, in an axial slice above the ventricles, where sulci
#: and gyri are dense and a blurred image loses them first.
ZOOM_FRACTIONS = (0.22, 0.5, 0.7)
#: The zoomed square's side as a fraction of the brain's left-right extent.
ZOOM_SIZE_FRACTION = 0.35


def save_spectra(path: str | Path, rows, model_label: str = "synthetic 7T", title: str = "") -> Path | None:
    """Radially averaged power spectra of the 7T and of every row kind, mean over subjects.

    Left: the spectra (log scale) against spatial frequency; right: each one divided
    by the 7T's, where 1 means the 7T's detail at that scale, below 1 blur, above 1
    extra high-frequency energy (noise or invented texture). The dashed line is the
    cutoff of the ``hf_ratio`` column (:data:`t7synth.scores.HF_CUTOFF`).

    Args:
        path: output PNG.
        rows: score rows carrying ``spectrum`` and ``target_spectrum``
            (:class:`t7synth.measures.structure.StructureScorer`); others are ignored.
        model_label: how the model's rows are labelled.
        title: figure title.

    Returns:
        The path, or ``None`` when no row carries a spectrum.
    """
    from t7synth.scores import HF_CUTOFF, ROW_KINDS, SPECTRUM, SPECTRUM_FREQUENCIES, TARGET_SPECTRUM, row_label

    rows = [row for row in rows if SPECTRUM in row and TARGET_SPECTRUM in row]
    if not rows:
        return None
    targets = {row["subject"]: np.asarray(row[TARGET_SPECTRUM], dtype=np.float64) for row in rows}
    target = np.mean(list(targets.values()), axis=0)
    curves = [("7T target", target, "black", "-")]
    colours = {"model": "tab:red", "identity": "tab:blue", "lut": "tab:green"}
    for kind in ROW_KINDS:
        selected = [np.asarray(row[SPECTRUM], dtype=np.float64) for row in rows if row["model"] == kind]
        if selected:
            curves.append(
                (
                    row_label(kind, model_label),
                    np.mean(selected, axis=0),
                    colours[kind],
                    "-" if kind == "model" else "--",
                )
            )
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    keep = target > 0
    for label, curve, colour, style in curves:
        left.plot(SPECTRUM_FREQUENCIES[keep], curve[keep], color=colour, linestyle=style, label=label)
        if label != "7T target":
            right.plot(
                SPECTRUM_FREQUENCIES[keep], curve[keep] / target[keep], color=colour, linestyle=style, label=label
            )
    right.axhline(1.0, color="black", linewidth=1)
    for axis, ylabel in ((left, "power (mean over subjects)"), (right, "power / 7T power")):
        axis.axvline(HF_CUTOFF, color="gray", linestyle=":", label=f"hf_ratio cutoff ({HF_CUTOFF} cycles/voxel)")
        axis.set_yscale("log")
        axis.set_xlabel("spatial frequency (cycles per voxel; 0.5 = Nyquist)", fontsize=9)
        axis.set_ylabel(ylabel, fontsize=9)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7, loc="best", framealpha=0.8)
    left.set_title("radially averaged power spectrum of the brain", fontsize=10)
    right.set_title("relative to the 7T", fontsize=10)
    n = len(targets)
    figure.suptitle(title or f"power spectra, {n} subject{'s' if n != 1 else ''}", fontsize=10)
    return _save(figure, path, dpi=90)


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
    from matplotlib.patches import Rectangle

    columns = [(label, _as_array(volume)) for label, volume in columns]
    if not columns:
        raise ValueError("save_zoom needs at least one volume")
    shape = columns[0][1].shape
    for label, volume in columns:
        if volume.shape != shape:
            raise ValueError(f"{label} has shape {volume.shape}, {columns[0][0]} has {shape}: not on one grid")
    k, window_i, window_j = zoom_region(_as_array(mask), shape, fractions, size)
    plt = _pyplot()
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
    return _save(figure, path, dpi=110)
