"""``evaluate --ssim authors``: the two SSIM forms of the authors' evaluation against
scikit-image itself, on volumes this test did not design for them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from t7synth.measures import metrics
from t7synth.scores import COLUMNS

skimage_metrics = pytest.importorskip("skimage.metrics")


def _pair(shape, seed):
    """A smooth 'brain' with background 0 and a noisy, blurred prediction of it."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = np.sqrt((grid**2).sum(0)) < 0.85
    target = np.clip(0.5 + 2.0 * gaussian_filter(rng.standard_normal(shape), 1.5), 0, 1) * brain
    prediction = gaussian_filter(target, 0.7) + 0.05 * rng.standard_normal(shape)
    return prediction, target  # the prediction overshoots [0, 1]: scoring clamps it


@pytest.mark.parametrize(("shape", "seed"), [((24, 28, 20), 0), ((40, 9, 13), 1), ((7, 12, 10), 2)])
def test_whole_volume_form_is_scikit_image_default(shape, seed):
    prediction, target = _pair(shape, seed)
    clamped = np.clip(prediction, 0, 1)
    ours = metrics.authors_ssim_scores(torch.from_numpy(prediction), torch.from_numpy(target))
    assert ours["ssim_skimage"] == pytest.approx(
        skimage_metrics.structural_similarity(target, clamped, data_range=1.0), abs=1e-6
    )


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_flattened_in_brain_form_is_the_authors_call(axis):
    prediction, target = _pair((22, 18, 26), 3)
    clamped = np.clip(prediction, 0, 1)
    # LoadingModel.py: their volume is a stack of slices along slice_dim, flattened in C order.
    f_true = np.moveaxis(target, axis, 0).flatten()
    f_gen = np.moveaxis(clamped, axis, 0).flatten()
    f_gen, f_true = f_gen[f_true > 0], f_true[f_true > 0]
    expected = skimage_metrics.structural_similarity(f_true, f_gen, data_range=1)
    ours = metrics.authors_ssim_scores(torch.from_numpy(prediction), torch.from_numpy(target), axis=axis)
    assert ours["ssim_brain_flat"] == pytest.approx(expected, abs=1e-6)


def test_flattening_order_matters_and_differs_from_the_spatial_form():
    prediction, target = (torch.from_numpy(x) for x in _pair((22, 18, 26), 4))
    by_axis = [metrics.authors_ssim_scores(prediction, target, axis=a)["ssim_brain_flat"] for a in (0, 2)]
    assert abs(by_axis[0] - by_axis[1]) > 1e-3
    spatial = metrics.volume_scores(prediction, target, target > 0)["ssim_brain"]
    assert all(abs(value - spatial) > 1e-2 for value in by_axis)


def test_long_first_axis_is_filtered_in_chunks_exactly():
    """More output slices than one chunk: the chunked mean equals scikit-image's."""
    prediction, target = _pair((3 * 32 + 11, 8, 9), 5)
    expected = skimage_metrics.structural_similarity(target, np.clip(prediction, 0, 1), data_range=1.0)
    assert metrics.authors_ssim_scores(torch.from_numpy(prediction), torch.from_numpy(target))[
        "ssim_skimage"
    ] == pytest.approx(expected, abs=1e-6)


def test_too_small_for_the_window_and_registered_columns():
    with pytest.raises(ValueError, match="at least 7"):
        metrics.skimage_ssim(torch.zeros(6, 9, 9), torch.zeros(6, 9, 9))
    assert all(name in COLUMNS and COLUMNS[name].higher_is_better for name in metrics.AUTHORS_SSIM_NAMES)


def test_evaluate_adds_the_columns_for_every_row(dataset, tmp_path, capsys):
    import csv

    import nibabel as nib

    from t7synth import evaluate
    from t7synth.cli import run_main
    from t7synth.config import Config
    from t7synth.data import naming
    from t7synth.evaluation.evaluator import Evaluator

    pred = tmp_path / "pred"
    target = nib.load(str(naming.target_path(dataset, "sub-004")))
    noisy = np.asarray(target.dataobj) + 0.05 * np.random.default_rng(0).standard_normal(target.shape)
    pred.mkdir()
    nib.save(nib.Nifti1Image(noisy.astype(np.float32), target.affine), str(pred / naming.synthetic_name("sub-004")))
    out = tmp_path / "eval"
    argv = [
        "--pred",
        str(pred),
        "--data",
        str(dataset),
        "--split",
        "test",
        "--ssim",
        "authors",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert run_main(evaluate.main, argv) == 0
    assert "ssim_brain_flat" in capsys.readouterr().out
    with open(out / "scores.csv", newline="") as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"model", "identity", "lut"}
    # The identity row scores the preprocessed 3T input against the preprocessed 7T.
    evaluator = Evaluator(dataset, Config())
    data = evaluator.preprocessed(next(r for r in evaluator.records if r.subject == "sub-004"))
    source, seven = data["source"][0].numpy().astype(np.float64), data["target"][0].numpy().astype(np.float64)
    expected = skimage_metrics.structural_similarity(seven, np.clip(source, 0, 1), data_range=1.0)
    assert float(rows["identity"]["ssim_skimage"]) == pytest.approx(expected, abs=1e-5)
    flat_true, flat_source = (
        np.moveaxis(seven, 1, 0).flatten(),
        np.moveaxis(source, 1, 0).flatten(),
    )  # default geometry.axis 1
    expected_flat = skimage_metrics.structural_similarity(
        flat_true[flat_true > 0], np.clip(flat_source, 0, 1)[flat_true > 0], data_range=1
    )
    assert float(rows["identity"]["ssim_brain_flat"]) == pytest.approx(expected_flat, abs=1e-5)
    assert float(rows["model"]["ssim_skimage"]) != pytest.approx(float(rows["identity"]["ssim_skimage"]), abs=1e-3)
