"""Charts that know the score vocabulary: a run's ``progress.png`` (from its
``metrics.csv``), several runs' validation curves, and the power spectra of a test or
an evaluation.

:mod:`t7synth.plotting` draws volumes (montages, panels, zoomed regions) and knows no
score; these charts read score rows and metric series (through
:mod:`t7synth.run_files`) and name them with :mod:`t7synth.scores`. Both sit in layer 2,
below ``training`` (``progress.png`` and the test spectra) and ``evaluation``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from t7synth import plotting
from t7synth.run_files import BEST_CHECKPOINT, EPOCH_TIME, SKIPPED_STEPS, last_value, per_epoch, read_metrics
from t7synth.scores import (
    COLUMNS,
    HEADLINE,
    HF_CUTOFF,
    ROW_KINDS,
    SPECTRUM,
    SPECTRUM_FREQUENCIES,
    TARGET_SPECTRUM,
    metric_key,
    row_label,
)

_REFERENCE_STYLES = (("identity", "identity (3T input)", "--"), ("lut", "intensity LUT", ":"))
#: ``train/*`` series that are not losses, kept out of the losses panel.
_NOT_LOSSES = (EPOCH_TIME, SKIPPED_STEPS)


def save_progress(metrics_csv: str | Path, path: str | Path, title: str = "") -> Path | None:
    """Draw a run's ``progress.png`` from its ``metrics.csv``; ``None`` if nothing is logged yet.

    Six panels, every one against the epoch (0-based, as in the montages' names and
    the checkpoints): the training losses (mean over each epoch's logged steps), the
    learning rate, the validation in-brain PSNR, in-brain SSIM and MAE of the model
    with both baselines as horizontal lines (identity: the 3T input scored as the
    prediction; intensity LUT), and the wall time of each epoch (training and
    validation). The epoch of ``best.ckpt`` (highest validation in-brain PSNR) is
    marked on the validation panels. Every panel spans the epochs trained so far, so a
    run validated once (the demo validates at its last epoch) shows that point at the
    end of training rather than alone on a zoomed axis. Optimiser steps skipped for a
    non-finite loss (``train/skipped_steps``, a count, not a loss) are named in the
    losses panel's title when there are any.
    """

    rows = read_metrics(metrics_csv)
    if not rows:
        return None
    plt = plotting.pyplot()
    keys = sorted({key for row in rows for key in row})
    figure, axes = plt.subplots(3, 2, figsize=(11, 9.5), layout="constrained")
    figure.suptitle(title or str(Path(metrics_csv).parent), fontsize=10)

    losses = [k for k in keys if k.startswith("train/") and k not in _NOT_LOSSES]
    axis = axes[0][0]
    for key in losses:
        epochs, values = per_epoch(rows, key, "mean")
        axis.plot(epochs, values, marker="o", markersize=3, label=key.removeprefix("train/"))
    skipped = int(sum(per_epoch(rows, SKIPPED_STEPS)[1]))
    title = "training losses (epoch mean)" + (f"; {skipped} non-finite steps skipped" if skipped else "")
    _finish(axis, title, "loss", bool(losses), log=_all_positive(rows, losses))

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
    epochs, values = per_epoch(rows, EPOCH_TIME)
    if values:
        axis.bar(epochs, values, color="tab:gray", width=0.8)
    _finish(axis, "epoch time (training + validation)", "seconds", bool(values), legend=False)
    trained = [int(row["epoch"]) for row in rows if not math.isnan(row.get("epoch", math.nan))]
    if trained:
        for axis in axes.flat:  # the learning rate's last step sits just before max + 1
            axis.set_xlim(min(trained) - 0.6, max(trained) + 1.1)
    return plotting.save_figure(figure, path, dpi=90)


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

    histories = [(label, read_metrics(csv_path)) for label, csv_path in runs]
    histories = [(label, rows) for label, rows in histories if per_epoch(rows, metric_key("val", "model", names[0]))[0]]
    if not histories:
        return None
    plt = plotting.pyplot()
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
    return plotting.save_figure(figure, path, dpi=100)


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
    plt = plotting.pyplot()
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
    return plotting.save_figure(figure, path, dpi=90)
