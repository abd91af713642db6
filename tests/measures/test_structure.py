"""The structure scorer, its columns in the score tables, and the pictures drawn from it."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_pair
from scipy import ndimage

from t7synth import plotting, scores
from t7synth.measures.structure import StructureScorer
from t7synth.scores import SPECTRUM, SPECTRUM_BINS, TARGET_SPECTRUM


@pytest.fixture(scope="module")
def volumes():
    source, target, mask = make_pair((24, 26, 22))
    return source, target, mask


def test_the_target_scores_perfectly_and_a_blur_does_not(volumes):
    source, target, mask = volumes
    truth = np.where(mask > 0, np.where(target > 0.6, 3, 2), 0).astype(np.uint8)
    scorer = StructureScorer(target, mask, truth)
    perfect = scorer(target)
    assert perfect["gmsd"] == 0.0 and perfect["hf_ratio"] == 1.0
    assert all(perfect[f"dice_{t}"] == 1.0 and perfect[f"vol_err_{t}"] == 0.0 for t in ("csf", "gm", "wm"))
    assert perfect[SPECTRUM] == perfect[TARGET_SPECTRUM] and len(perfect[SPECTRUM]) == SPECTRUM_BINS
    blurred = scorer(ndimage.gaussian_filter(target, 1.0) * mask)
    assert blurred["gmsd"] > 0.02 and blurred["hf_ratio"] < 0.5 and blurred["dice_gm"] < 1.0
    assert {f"dice_true_{t}" for t in ("csf", "gm", "wm")} <= set(blurred)
    assert "dice_true_gm" not in StructureScorer(target, mask)(target)  # no truth, no truth columns
    # No-reference quality comes from the same segmentation: the 7T scores its own.
    assert {name: perfect[name] for name in ("cnr", "cjv", "snr_wm")} == scorer.target_quality
    assert perfect["cnr"] > 0 and perfect["cjv"] > 0


def test_structure_columns_print_as_their_own_blocks():
    row = {"psnr": 30.0, "ssim": 0.9, "psnr_brain": 25.0, "ssim_brain": 0.8, "mae": 0.01, "gmsd": 0.1, "hf_ratio": 0.7}
    rows = [{"model": kind, "subject": "sub-001", **row} for kind in ("model", "identity")]
    report = scores.format_report(rows, "unet", scores.DISPLAY_ORDER, "1 subject")
    lines = report.splitlines()
    assert "gmsd" not in lines[1]  # the intensity table's header
    assert (
        "Sharpness against the 7T:" in lines
        and "Tissue segmentation against the true tissue labels (dseg):" not in lines
    )
    header = lines[lines.index("Sharpness against the 7T:") + 1]
    assert header.split() == ["gmsd", "hf_ratio"]
    without = scores.format_report(
        [{k: v for k, v in r.items() if k not in ("gmsd", "hf_ratio")} for r in rows],
        "unet",
        scores.DISPLAY_ORDER,
        "1 subject",
    )
    assert "Sharpness" not in without


def test_best_value_of_a_ratio_is_the_closest_to_its_ideal():
    assert scores.COLUMNS["hf_ratio"].best([0.4, 1.3, 0.8]) == 0.8
    assert scores.COLUMNS["gmsd"].best([0.2, 0.1, 0.3]) == 0.1
    assert scores.COLUMNS["dice_gm"].best([0.7, 0.9, 0.8]) == 0.9


def test_spectra_plot_needs_spectra(volumes, tmp_path):
    _, target, mask = volumes
    scorer = StructureScorer(target, mask)
    rows = [
        {"model": kind, "subject": "sub-001", **scorer(guess)}
        for kind, guess in (("model", target), ("identity", target * 0.5))
    ]
    path = plotting.save_spectra(tmp_path / "spectra.png", rows)
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plain = [{k: v for k, v in row.items() if k not in (SPECTRUM, TARGET_SPECTRUM)} for row in rows]
    assert plotting.save_spectra(tmp_path / "none.png", plain) is None and not (tmp_path / "none.png").exists()


def test_zoom_region_lies_in_the_brain_and_the_array():
    mask = np.zeros((60, 70, 50), bool)
    mask[10:50, 5:65, 8:45] = True
    k, window_i, window_j = plotting.zoom_region(mask, mask.shape)
    assert 8 <= k <= 44 and k == round(8 + 0.7 * 36)
    assert window_i.stop - window_i.start == window_j.stop - window_j.start == round(0.35 * 40)
    assert 10 <= window_i.start and window_i.stop <= 50  # the left part of the brain
    # A window that would cross the array's edge is moved inside it.
    k, window_i, window_j = plotting.zoom_region(mask, mask.shape, fractions=(0.0, 1.0, 0.5), size=30)
    assert window_i.start == 0 and window_j.stop == 70 and window_i.stop - window_i.start == 30


def test_zoom_montage_needs_volumes_on_one_grid(volumes, tmp_path):
    source, target, mask = volumes
    path = plotting.save_zoom(tmp_path / "zoom.png", [("3T", source), ("a", target), ("7T", target)], mask, title="t")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="not on one grid"):
        plotting.save_zoom(tmp_path / "bad.png", [("3T", source), ("7T", target[:-1])], mask)
    assert not (tmp_path / "bad.png").exists()


def test_compare_shows_structure_columns_only_when_every_run_has_them():
    from t7synth.evaluation import compare as runs

    base = {"psnr": "30", "ssim": "0.9", "psnr_brain": "25", "ssim_brain": "0.8", "mae": "0.01"}
    entries = [
        runs._entry("a", "unet", "run", [dict(base, subject="sub-001", gmsd="0.1", hf_ratio="0.7")]),
        runs._entry("b", "gan_unet", "run", [dict(base, subject="sub-001", gmsd="0.2", hf_ratio="1.2")]),
    ]
    table = runs.markdown_table(entries)
    assert table.count("| run | model | n |") == 2  # the structure scores are a second table
    second = table.split("\n\n")[1]
    assert "HF energy / 7T" in second and "**1.200 ± 0.000**" in second  # 1.2 is closer to 1 than 0.7
    assert "**0.1000 ± 0.0000**" in second  # GMSD: lower is better
    older = runs._entry("c", "vnet", "run", [dict(base, subject="sub-001")])  # written before these columns
    assert "gmsd" not in runs.markdown_table([*entries, older]) and "\n\n" not in runs.markdown_table([*entries, older])
    assert "gmsd_mean" in runs.table_columns(entries) and "gmsd_mean" not in runs.table_columns([*entries, older])
