"""``fit`` → ``predict`` → ``evaluate`` on the tiny dataset: the scores must agree."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from helpers import TINY_UNET, make_pair, write_nifti

from t7synth import evaluate, fit, predict
from t7synth.cli import run_main
from t7synth.measures.metrics import NAMES
from t7synth.scores import SECTION_COLUMNS


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_evaluate_reproduces_fit_test_scores(dataset, tmp_path, capsys):
    runs = tmp_path / "runs"
    sets = [x for item in TINY_UNET for x in ("--set", item)]
    argv = [
        "--model",
        "unet",
        "--data",
        str(dataset),
        "--set",
        f"runs_dir={runs}",
        *sets,
        "--max-epochs",
        "1",
        "--wandb",
        "disabled",
    ]
    assert run_main(fit.main, argv) == 0
    run = runs / "unet" / "version_0"
    ckpt = run / "checkpoints" / "best.ckpt"
    fit_rows = {(r["model"], r["subject"]): r for r in _read(run / "test_scores.csv")}

    pred = tmp_path / "pred"
    assert (
        run_main(
            predict.main,
            ["--ckpt", str(ckpt), "--input", str(dataset), "--split", "test", "--output", str(pred), "--no-progress"],
        )
        == 0
    )
    # A BIDS derivative dataset (data/naming.py), which evaluate reads by subject label.
    assert sorted(str(p.relative_to(pred)) for p in pred.rglob("*.nii.gz")) == [
        "sub-004/anat/sub-004_desc-synth7T_T1w.nii.gz"
    ]
    assert (pred / "dataset_description.json").is_file()

    out = tmp_path / "eval"
    capsys.readouterr()
    assert (
        run_main(
            evaluate.main,
            [
                "--pred",
                str(pred),
                "--data",
                str(dataset),
                "--split",
                "test",
                "--ckpt",
                str(ckpt),
                "--out",
                str(out),
                "--no-progress",
            ],
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "identity (3T input)" in printed and "intensity LUT" in printed
    assert "The 7T's own no-reference quality" in printed and "cnr " in printed

    rows = _read(out / "subject_scores.csv")
    # The structure scores follow the intensity ones; no dseg here, so no true-label Dice.
    # No --segmenter either, so no per-structure columns.
    structure = [name for name in SECTION_COLUMNS if not name.startswith(("dice_true_", "seg_"))]
    assert list(rows[0]) == ["subject", *NAMES, *structure] and [r["subject"] for r in rows] == ["sub-004"]
    assert float(rows[0]["psnr_brain"]) == pytest.approx(float(fit_rows[("model", "sub-004")]["psnr_brain"]), abs=0.05)
    summary = {r["model"]: r for r in _read(out / "summary.csv")}
    assert set(summary) == {"model", "identity", "lut"}
    for baseline in ("identity", "lut"):  # the same preprocessing, LUT (the checkpoint's) and scorers as fit's test
        for name in (*NAMES, *structure):
            assert float(summary[baseline][f"{name}_mean"]) == pytest.approx(
                float(fit_rows[(baseline, "sub-004")][name]), abs=1e-5
            )
    assert (out / "spectra.png").is_file() and (run / "samples" / "test_spectra.png").is_file()
    assert (out / "montages" / "sub-004.png").is_file()


def test_missing_prediction_is_one_line(dataset, tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    argv = ["--pred", str(pred), "--data", str(dataset), "--split", "test", "--out", str(tmp_path / "eval")]
    assert run_main(evaluate.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sub-004" in err[0]
    assert not (tmp_path / "eval").exists()


def test_prediction_on_another_grid_is_refused(dataset, tmp_path, capsys):
    pred = tmp_path / "pred"
    write_nifti(pred / "sub-004_desc-synth7T_T1w.nii.gz", make_pair((10, 10, 10))[0], np.diag([1.5, 1.5, 1.5, 1]))
    argv = ["--pred", str(pred), "--data", str(dataset), "--out", str(tmp_path / "eval"), "--no-progress"]
    assert run_main(evaluate.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sub-004_desc-synth7T_T1w.nii.gz" in err[0] and "shape" in err[0]
    assert not (tmp_path / "eval" / "subject_scores.csv").exists()


def test_perfect_prediction_and_perceptual_distance(dataset, tmp_path, capsys):
    """The 7T target as its own prediction scores perfectly, and a state dict in
    MedicalNet's layout (random weights) gives it a perceptual distance of 0."""
    import nibabel as nib
    import torch
    from monai.networks.nets import resnet10

    from t7synth.data.layout import discover
    from t7synth.data.preprocess import Preprocessing, preprocess_record

    record = next(r for r in discover(dataset) if r.subject == "sub-004")
    data = preprocess_record(record, Preprocessing())
    pred = tmp_path / "pred"
    pred.mkdir()
    nib.save(nib.Nifti1Image(data["target"][0].numpy(), data["affine"].numpy()), str(pred / "sub-004_synth.nii.gz"))
    net = resnet10(spatial_dims=3, n_input_channels=1, conv1_t_stride=2, shortcut_type="B", bias_downsample=False)
    state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    state["module.conv_seg.0.weight"] = torch.zeros(1)  # MedicalNet's segmentation head: ignored
    weights = tmp_path / "resnet_10.pth"
    torch.save({"state_dict": state}, weights)
    out = tmp_path / "eval"
    argv = [
        "--pred",
        str(pred),
        "--data",
        str(dataset),
        "--out",
        str(out),
        "--perceptual-weights",
        str(weights),
        "--no-progress",
    ]
    assert run_main(evaluate.main, argv) == 0
    assert capsys.readouterr().out.startswith("precision: 32-true (evaluate runs no synthesis network")
    row = _read(out / "subject_scores.csv")[0]
    assert float(row["ssim"]) == pytest.approx(1.0) and float(row["mae"]) == 0.0
    assert float(row["perceptual"]) == pytest.approx(0.0, abs=1e-6)
    summary = {r["model"]: r for r in _read(out / "summary.csv")}
    assert float(summary["identity"]["perceptual_mean"]) > 0


def _scanner_scale_prediction(dataset, pred, documented=None):
    """sub-004's 3T in scanner intensities (x 300 + 40 in the brain) as a prediction and,
    in ``documented``, the same image normalised as the target is (predict's scale)."""
    import nibabel as nib
    import torch

    from t7synth.data.layout import discover
    from t7synth.data.preprocess import normalise
    from t7synth.data.volumes import brain_mask, load_volume

    record = next(r for r in discover(dataset) if r.subject == "sub-004")
    source, affine = load_volume(record.source)
    mask = brain_mask(record.source, source, affine, record.mask)
    raw = ((source * 300.0 + 40.0) * mask).astype(np.float32)
    write_nifti(pred / "sub-004_other-tool.nii.gz", raw, nib.load(str(record.source)).affine)
    if documented is not None:
        scaled = normalise(torch.from_numpy(raw[None]), torch.from_numpy(mask[None].astype(np.uint8)))[0].numpy()
        write_nifti(documented / "sub-004_other-tool.nii.gz", scaled, nib.load(str(record.source)).affine)


def test_raw_scale_prediction_is_refused_and_percentile_scales_it_like_the_target(dataset, tmp_path, capsys):
    pred, documented = tmp_path / "pred", tmp_path / "documented"
    _scanner_scale_prediction(dataset, pred, documented)
    base = ["--data", str(dataset), "--split", "test", "--no-progress"]
    assert run_main(evaluate.main, ["--pred", str(pred), "--out", str(tmp_path / "raw"), *base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pred-scale percentile" in err[0] and "sub-004_other-tool.nii.gz" in err[0]
    assert not (tmp_path / "raw" / "scores.csv").exists()

    argv = ["--pred", str(pred), "--out", str(tmp_path / "scaled"), "--pred-scale", "percentile", *base]
    assert run_main(evaluate.main, argv) == 0
    assert run_main(evaluate.main, ["--pred", str(documented), "--out", str(tmp_path / "doc"), *base]) == 0
    scaled = {(r["model"], r["subject"]): r for r in _read(tmp_path / "scaled" / "scores.csv")}
    as_written = {(r["model"], r["subject"]): r for r in _read(tmp_path / "doc" / "scores.csv")}
    assert scaled.keys() == as_written.keys()
    for key, row in scaled.items():
        for name, value in row.items():
            if name not in ("model", "subject"):
                assert float(value) == pytest.approx(float(as_written[key][name]), abs=1e-5), (key, name)
    # The 3T rescaled is the identity: the model row scores as the identity row does.
    assert float(scaled[("model", "sub-004")]["psnr_brain"]) == pytest.approx(
        float(scaled[("identity", "sub-004")]["psnr_brain"]), abs=1e-4
    )
