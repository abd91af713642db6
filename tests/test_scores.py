"""The score vocabulary: summaries, cells, gain lines and the tables built from them."""

from __future__ import annotations

import csv

import pytest

from t7synth import run_files, scores
from t7synth.errors import UserError


def _rows(model_psnr=(25.0, 27.0), identity_psnr=(20.0, 22.0), lut_psnr=(22.5, 23.5)):
    rows = []
    for kind, values in (("lut", lut_psnr), ("model", model_psnr), ("identity", identity_psnr)):
        for subject, value in zip(("sub-002", "sub-001"), values):
            rows.append(
                {
                    "model": kind,
                    "subject": subject,
                    "psnr": value + 5,
                    "ssim": 0.9,
                    "psnr_brain": value,
                    "ssim_brain": 0.8,
                    "mae": 0.01,
                }
            )
    return rows


def test_summary_is_mean_and_sample_sd_in_table_order():
    table = scores.summarise(_rows())
    assert list(table) == ["model", "identity", "lut"]  # model first, whatever the input order
    mean, sd = table["model"]["psnr_brain"]
    assert mean == pytest.approx(26.0) and sd == pytest.approx(2**0.5)  # sample SD of 25 and 27
    assert scores.mean_sd([3.0]) == (3.0, 0.0)


def test_gain_line_is_model_minus_reference():
    line = scores.gain_line(scores.summarise(_rows()))
    assert line == "In-brain PSNR gain: +5.00 dB over identity (3T input), +3.00 dB over intensity LUT"
    worse = scores.gain_line(scores.summarise(_rows(model_psnr=(19.0, 19.0))))
    assert "-2.00 dB over identity" in worse and "-4.00 dB over intensity LUT" in worse


def test_gain_line_without_references_or_model():
    only_model = [r for r in _rows() if r["model"] == "model"]
    assert scores.gain_line(scores.summarise(only_model)) is None
    no_lut = [r for r in _rows() if r["model"] != "lut"]
    assert scores.gain_line(scores.summarise(no_lut)) == "In-brain PSNR gain: +5.00 dB over identity (3T input)"


def test_cells_use_the_column_decimals():
    assert scores.format_cell("psnr_brain", 23.456, 0.314) == "23.46 ± 0.31"
    assert scores.format_cell("ssim", 0.87654, 0.00123) == "0.8765 ± 0.0012"


def test_fit_report_shows_both_references_and_the_gain(tmp_path):
    report = run_files.format_test_report(_rows(), "unet", "best.ckpt", tmp_path)
    lines = report.splitlines()
    assert lines[0] == "Test split: 2 held-out subjects, checkpoint best.ckpt"
    assert lines[1].split() == ["psnr_brain", "ssim_brain", "psnr", "ssim"]
    assert lines[2].startswith("unet (synthetic 7T)") and "26.00 ± 1.41" in lines[2]
    assert lines[3].startswith("identity (3T input)") and lines[4].startswith("intensity LUT")
    # Paired per subject: identity gains 5 and 5 (interval 5 to 5), LUT gains 2.5 and 3.5.
    assert (
        "In-brain PSNR gain over identity (3T input): +5.00 dB, 95% CI +5.00 to +5.00, Wilcoxon p = 0.50, n = 2"
        in lines
    )
    assert "In-brain PSNR gain over intensity LUT: +3.00 dB, 95% CI +2.50 to +3.50, Wilcoxon p = 0.50, n = 2" in lines


def test_evaluate_summary_uses_the_same_vocabulary():
    from t7synth.evaluation.evaluator import format_summary

    report = format_summary(_rows())
    assert report.splitlines()[0] == "2 subjects"
    assert report.splitlines()[1].split() == ["psnr_brain", "ssim_brain", "psnr", "ssim", "mae"]
    assert "In-brain PSNR gain over identity (3T input): +5.00 dB, 95% CI +5.00 to +5.00" in report
    assert "In-brain PSNR gain over intensity LUT: +3.00 dB, 95% CI +2.50 to +3.50" in report


def test_rows_round_trip_through_the_per_subject_file(tmp_path):
    path = scores.write_rows(tmp_path / "scores.csv", scores.sort_rows(_rows()))
    with open(path, newline="") as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == ["model", "subject", "psnr", "ssim", "psnr_brain", "ssim_brain", "mae"]
    assert [(r["model"], r["subject"]) for r in read[:2]] == [("model", "sub-001"), ("model", "sub-002")]
    assert float(read[0]["psnr_brain"]) == 27.0


def test_summary_values_are_namespaced_keys():
    values = scores.summary_values(_rows(), "test")
    assert values["test/psnr_brain"] == pytest.approx(26.0)
    assert values["test/identity/psnr_brain"] == pytest.approx(21.0)
    assert values["test/lut/psnr_brain_sd"] == pytest.approx(2**0.5 / 2)
    assert (
        scores.metric_key("val", "model", "ssim") == "val/ssim"
        and scores.metric_key("val", "lut", "ssim") == "val/lut/ssim"
    )


def test_score_files_have_one_rule_infinity_is_a_score_nan_is_not(tmp_path):
    rows = _rows()
    rows[0]["psnr_brain"] = float("inf")  # a perfect prediction
    path = scores.write_rows(tmp_path / "test_scores.csv", rows)
    assert [r["psnr_brain"] for r in scores.read_rows(path)][0] == "inf"
    rows[0]["psnr_brain"] = float("nan")
    scores.write_rows(path, rows)
    with pytest.raises(UserError, match=r"test_scores.csv, line 2: psnr_brain of sub-002 is not a number"):
        scores.read_rows(path)
