"""The pictures: which slices a montage shows and how it labels them, and the curves read from metrics.csv."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from t7synth import charts, plotting, run_files


def test_slices_cut_the_brain_with_the_sagittal_off_the_midline():
    mask = np.zeros((40, 30, 20), dtype=bool)
    mask[10:31, 5:26, 2:19] = True  # brain extent: i 10..30, j 5..25, k 2..18
    i, j, k = plotting.slice_indices(mask, mask.shape)
    assert (j, k) == (15, 10)  # the middle of the brain's extent
    assert i == 18  # 40 % of the way from its left edge, not the fissure at 20
    assert plotting.slice_indices(None, (10, 20, 30)) == (round(0.4 * 9), 10, 14)


def _capture(monkeypatch):
    """Keep the figure a montage would write, instead of writing it."""
    figures = []
    monkeypatch.setattr(plotting, "save_figure", lambda figure, path, dpi: figures.append(figure) or path)
    return figures


def test_montage_has_an_error_scale_and_orientation_letters(monkeypatch, tmp_path):
    figures = _capture(monkeypatch)
    volume = np.random.default_rng(0).random((12, 14, 10)).astype(np.float32)
    plotting.save_montage(
        tmp_path / "m.png", volume, volume * 0.9, volume, volume > 0.2, "sub-001  test, checkpoint best.ckpt (epoch 4)"
    )
    figure = figures[0]
    images, bars = figure.axes[:12], figure.axes[12:]
    assert len(bars) == 1  # one colour bar, for the error column
    assert "absolute error" in bars[0].get_ylabel() and bars[0].get_ylim()[1] == pytest.approx(plotting.ERROR_MAX)
    # The first column, per row: the letters at the left, right, bottom and top edges.
    letters = [
        "".join(t.get_text() for t in sorted(axis.texts, key=lambda t: (t.get_position()[1] != 0.5, t.get_position())))
        for axis in images[::4]
    ]
    assert letters == ["LRPA", "LRIS", "PAIS"]
    assert [axis.get_ylabel().split(" ")[0] for axis in images[::4]] == ["axial", "coronal", "sagittal"]
    assert figure._suptitle.get_text().endswith("(epoch 4)")
    # Neurological view of an RAS+ volume: the axial slice's first image column is i = 0 (left).
    axial = images[0].get_images()[0].get_array()
    _, _, k = plotting.slice_indices(volume > 0.2, volume.shape)
    assert np.allclose(axial[:, 0], volume[0, :, k]) and axial.shape == (14, 12)


def _metrics(path, rows):
    columns = sorted({key for row in rows for key in row})
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_metrics_rows_without_an_epoch_belong_to_the_next_epoch(tmp_path):
    """Lightning's LR monitor logs at an epoch's start without the epoch column."""
    path = _metrics(
        tmp_path / "metrics.csv",
        [
            {"step": 0, "lr-Adam": 1e-3},
            {"epoch": 0, "step": 0, "train/loss": 0.5},
            {"epoch": 0, "step": 1, "train/loss": 0.3},
            {"epoch": 0, "step": 1, "val/psnr_brain": 20.0},
            {"step": 2, "lr-Adam": 5e-4},
            {"epoch": 1, "step": 2, "train/loss": 0.2},
            {"epoch": 1, "step": 3, "val/psnr_brain": 19.0},
        ],
    )
    rows = run_files.read_metrics(path)
    assert run_files.per_epoch(rows, "lr-Adam") == ([0, 1], [1e-3, 5e-4])
    assert run_files.per_epoch(rows, "train/loss", "mean") == ([0, 1], [pytest.approx(0.4), pytest.approx(0.2)])
    assert run_files.per_epoch(rows, "val/psnr_brain") == ([0, 1], [20.0, 19.0])
    assert run_files.last_value(rows, "val/psnr_brain") == 19.0 and run_files.last_value(rows, "val/mae") is None


def test_progress_marks_the_best_epoch_and_draws_both_baselines(tmp_path, monkeypatch):
    figures = _capture(monkeypatch)
    rows = []
    for epoch, psnr in enumerate((18.0, 21.0, 20.0)):
        rows += [
            {"step": epoch * 2, "lr-Adam": 1e-3},
            {"epoch": epoch, "step": epoch * 2, "train/loss": 0.5 / (epoch + 1)},
            {
                "epoch": epoch,
                "step": epoch * 2 + 1,
                "val/psnr_brain": psnr,
                "val/ssim_brain": 0.8,
                "val/mae": 0.02,
                "val/identity/psnr_brain": 16.0,
                "val/lut/psnr_brain": 17.0,
            },
            {"epoch": epoch, "step": epoch * 2 + 1, "train/epoch_time": 30.0 + epoch},
        ]
    path = _metrics(tmp_path / "metrics.csv", rows)
    assert charts.save_progress(path, tmp_path / "progress.png", "run") == tmp_path / "progress.png"
    axes = {axis.get_title(): axis for axis in figures[0].axes}
    psnr = axes["validation PSNR brain (dB)"]
    labels = [line.get_label() for line in psnr.get_lines()]
    assert labels == ["model", "identity (3T input)", "intensity LUT", "best.ckpt (epoch 1)"]
    assert [line.get_ydata()[0] for line in psnr.get_lines()[1:3]] == [16.0, 17.0]
    assert psnr.get_xlabel() == "epoch"
    times = axes["epoch time (training + validation)"]
    assert [patch.get_height() for patch in times.patches] == [30.0, 31.0, 32.0]


def test_one_validation_sits_at_its_epoch_and_counts_are_not_losses(tmp_path, monkeypatch):
    # The demo validates once, at its last epoch: the point belongs at the end of the
    # epochs trained, not alone on a zoomed axis; skipped steps are a count, not a loss.
    figures = _capture(monkeypatch)
    rows = [
        {"epoch": e, "step": e, "train/loss": 0.5 - 0.1 * e, run_files.SKIPPED_STEPS: float(e == 1)} for e in range(4)
    ]
    rows.append({"epoch": 3, "step": 3, "val/model/psnr_brain": 22.0, "val/identity/psnr_brain": 16.0})
    charts.save_progress(_metrics(tmp_path / "metrics.csv", rows), tmp_path / "progress.png")
    axes = {axis.get_title(): axis for axis in figures[0].axes}
    low, high = axes["validation PSNR brain (dB)"].get_xlim()
    assert low < 0 and 3 < high < 4.5
    losses = axes["training losses (epoch mean); 1 non-finite steps skipped"]
    assert [line.get_label() for line in losses.get_lines()] == ["loss"]


def test_nothing_logged_yet_draws_nothing(tmp_path):
    assert charts.save_progress(tmp_path / "missing.csv", tmp_path / "progress.png") is None
    _metrics(tmp_path / "metrics.csv", [{"epoch": 0, "step": 0, "train/loss": 0.5}])
    assert charts.save_curves([("run", tmp_path / "metrics.csv")], tmp_path / "curves.png") is None  # no validation
    assert not (tmp_path / "progress.png").exists() and not (tmp_path / "curves.png").exists()


def test_a_learning_rate_logged_per_step_is_drawn_per_step(tmp_path, monkeypatch):
    figures = _capture(monkeypatch)
    rows = []
    for epoch in range(2):
        for index in range(4):  # one-cycle: the LR monitor logs every step, without an epoch
            rows.append({"step": epoch * 4 + index, "lr-Adam": 1e-4 * (1 + epoch * 4 + index)})
        rows.append({"epoch": epoch, "step": epoch * 4 + 3, "train/loss": 0.5})
    charts.save_progress(_metrics(tmp_path / "metrics.csv", rows), tmp_path / "progress.png")
    axes = {axis.get_title(): axis for axis in figures[0].axes}
    (line,) = axes["learning rate"].get_lines()
    assert list(line.get_xdata()) == [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75]  # a point per step, not a stair
    assert line.get_drawstyle() == "default"


def test_a_baseline_outside_the_data_is_inside_the_picture():
    plt = plotting.pyplot()
    figure, axis = plt.subplots()
    axis.plot([0, 1], [20.0, 21.0], label="model")
    axis.set_ylim(19.5, 21.5)  # as a log scale or a fixed range would leave it
    axis.axhline(12.0, linestyle="--", label="identity (3T input)")
    charts.keep_lines_in_range(axis)
    low, high = axis.get_ylim()
    assert low < 12.0 and high >= 21.5
    plt.close(figure)
