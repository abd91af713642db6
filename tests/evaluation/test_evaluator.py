"""``evaluate`` on any test set: the LUT from a checkpoint or left out, true tissue labels."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from helpers import make_dataset, write_nifti

from t7synth.cli import run_main
from t7synth.config import Config
from t7synth.data import naming
from t7synth.data.layout import discover
from t7synth.data.preprocess import Preprocessing, preprocess_record
from t7synth.evaluation.evaluator import evaluate
from t7synth.measures import metrics, segmentation

AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])  # make_dataset's grid


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _all_test(root):
    """The dataset's participants.tsv with every subject in the test split (an external site)."""
    lines = (root / naming.PARTICIPANTS).read_text().splitlines()
    (root / naming.PARTICIPANTS).write_text(
        "\n".join([lines[0], *(line.rsplit("\t", 1)[0] + "\ttest" for line in lines[1:])]) + "\n"
    )
    return root


def _perfect_predictions(root, folder, subjects=None):
    """Each subject's preprocessed 7T as its prediction (make_dataset's grids need no crop)."""
    folder.mkdir(parents=True, exist_ok=True)
    targets = {}
    for record in discover(root):
        if subjects is None or record.subject in subjects:
            data = preprocess_record(record, Preprocessing())
            targets[record.subject] = data
            write_nifti(folder / naming.synthetic_name(record.subject), data["target"][0].numpy(), AFFINE)
    return targets


def _checkpoint(path, lut):
    """A checkpoint as evaluate reads it: the config and the stored LUT (no weights needed)."""
    torch.save({"state_dict": {"lut": lut}, "hyper_parameters": {"config": Config().to_dict()}}, path)
    return path


def test_a_dataset_of_test_subjects_only_is_scored_without_a_lut_row(tmp_path):
    root = _all_test(make_dataset(tmp_path / "data", n_subjects=2))
    pred = tmp_path / "pred"
    _perfect_predictions(root, pred)
    report = evaluate(pred, root, split="test", out=tmp_path / "eval", progress=False)
    assert report.count("Note:") == 1 and "no intensity LUT row" in report
    assert "intensity LUT" not in report.split("Note:")[0]
    rows = _rows(tmp_path / "eval" / "scores.csv")
    assert {r["model"] for r in rows} == {"model", "identity"} and len(rows) == 4
    for row in rows:
        if row["model"] == "model":  # the 7T scores perfectly against itself, structure included
            assert float(row["mae"]) == 0.0 and float(row["gmsd"]) == 0.0 and float(row["hf_ratio"]) == 1.0
            assert float(row["dice_gm"]) == 1.0 and float(row["vol_err_wm"]) == 0.0


def test_the_checkpoints_lut_is_the_lut_row(tmp_path, capsys):
    root = _all_test(make_dataset(tmp_path / "data", n_subjects=2))
    pred = tmp_path / "pred"
    targets = _perfect_predictions(root, pred)
    ckpt = _checkpoint(tmp_path / "model.ckpt", torch.full((256,), 0.5))  # maps every brain voxel to 0.5
    argv = [
        "--pred",
        str(pred),
        "--data",
        str(root),
        "--split",
        "test",
        "--ckpt",
        str(ckpt),
        "--out",
        str(tmp_path / "eval"),
        "--no-progress",
    ]
    from t7synth import evaluate as command

    assert run_main(command.main, argv) == 0
    printed = capsys.readouterr().out
    assert "intensity LUT" in printed and "Note:" not in printed
    rows = {(r["model"], r["subject"]): r for r in _rows(tmp_path / "eval" / "scores.csv")}
    for subject, data in targets.items():
        mask = data["mask"]
        expected = metrics.volume_scores(0.5 * (mask > 0).float(), data["target"], mask)
        for name in metrics.NAMES:
            assert float(rows[("lut", subject)][name]) == pytest.approx(expected[name], abs=1e-5)


def _write_truth(root, subject, labels, table=None):
    write_nifti(naming.dseg_path(root, subject), labels.astype(np.uint8), AFFINE)
    if table is not None:
        (naming.anat_dir(root, subject) / f"{subject}_desc-tissue_dseg.tsv").write_text(table)


def test_true_tissue_labels_are_scored_through_their_lookup_table(tmp_path):
    root = make_dataset(tmp_path / "data", n_subjects=3)
    pred = tmp_path / "pred"
    targets = _perfect_predictions(root, pred)
    # Truth = the 7T's own segmentation, stored with other label values that a
    # dataset-level dseg.tsv names; the 7T as prediction then agrees perfectly.
    recode = {1: 10, 2: 20, 3: 30}
    for subject, data in targets.items():
        labels = segmentation.segment(data["target"], data["mask"])
        _write_truth(root, subject, np.vectorize(lambda v: recode.get(v, 0))(labels))
    (root / naming.DSEG_TABLE).write_text("index\tname\tabbreviation\n10\tcsf\tCSF\n20\tcortex\tGM\n30\twhite\tWM\n")
    record = discover(root)[0]
    assert record.dseg == naming.dseg_path(root, record.subject) and record.dseg_table == root / naming.DSEG_TABLE
    report = evaluate(pred, root, out=tmp_path / "eval", progress=False)
    assert "against the true tissue labels" in report and "Note:" not in report
    rows = _rows(tmp_path / "eval" / "scores.csv")
    for row in rows:
        if row["model"] == "model":
            assert [float(row[f"dice_true_{t}"]) for t in ("csf", "gm", "wm")] == [1.0, 1.0, 1.0]
        else:
            assert float(row["dice_true_gm"]) < 1.0


def test_labels_no_table_names_and_partial_truth_are_left_out_with_a_note(tmp_path):
    root = make_dataset(tmp_path / "data", n_subjects=3)
    pred = tmp_path / "pred"
    targets = _perfect_predictions(root, pred)
    subjects = sorted(targets)
    thalamus = "index\tname\n1\tLeft-Thalamus\n"
    for subject in subjects:
        _write_truth(root, subject, (targets[subject]["mask"][0].numpy() > 0) * 1, table=thalamus)
    report = evaluate(pred, root, out=tmp_path / "eval", progress=False)
    assert report.count("Note:") == 1
    assert "not scored for sub-001, sub-002, sub-003: its dseg look-up table names no CSF, GM or WM label" in report
    assert "dice_true_gm" not in _rows(tmp_path / "eval" / "scores.csv")[0]

    # Usable labels (t7synth's convention, no table) for one subject only: dropped too.
    for subject in subjects:
        (naming.anat_dir(root, subject) / f"{subject}_desc-tissue_dseg.tsv").unlink()
        naming.dseg_path(root, subject).unlink()
    labels = segmentation.segment(targets[subjects[0]]["target"], targets[subjects[0]]["mask"])
    _write_truth(root, subjects[0], labels)
    report = evaluate(pred, root, out=tmp_path / "eval2", progress=False)
    assert "only 1 of 3 subjects have usable tissue labels" in report
    assert "dice_true_gm" not in _rows(tmp_path / "eval2" / "scores.csv")[0]


def test_zoom_montage_of_several_models(tmp_path):
    from t7synth.errors import UserError
    from t7synth.evaluation.evaluator import zoom_montage

    root = make_dataset(tmp_path / "data", n_subjects=3)
    first, second = tmp_path / "a", tmp_path / "b"
    _perfect_predictions(root, first, {"sub-003"})
    _perfect_predictions(root, second, {"sub-003"})
    path = zoom_montage(root, "sub-003", [("A", first), ("B", second)], tmp_path / "zoom.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="no prediction of sub-002 in"):
        zoom_montage(root, "sub-002", [("A", first)], tmp_path / "other.png")
    with pytest.raises(UserError, match="sub-099 is not a subject of"):
        zoom_montage(root, "sub-099", [("A", first)], tmp_path / "other.png")
    assert not (tmp_path / "other.png").exists()
