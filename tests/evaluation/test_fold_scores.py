"""compare runs/<name> on a cross-validation: per fold, pooled and per site (t7synth.evaluation.fold_scores)."""

from __future__ import annotations

import csv

from t7synth import compare
from t7synth.cli import run_main
from t7synth.data.folds import write_split_table
from t7synth.data.layout import SubjectRecord
from t7synth.scores import COLUMNS


def fold_run(root, fold, test, train, psnr):
    """A finished fold: test_scores.csv (model and references) and split.tsv."""
    run = root / f"fold_{fold}" / "version_0"
    run.mkdir(parents=True)
    names = ["psnr", "ssim", "psnr_brain", "ssim_brain", "mae"]
    with open(run / "test_scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "subject", *names])
        for kind, offset in (("model", 0.0), ("identity", -3.0), ("lut", -2.0)):
            for subject, _site in test:
                writer.writerow([kind, subject, psnr + offset, 0.5, psnr + offset, 0.5, 0.1])
    record = lambda subject, site: SubjectRecord(subject, run, run, None, site=site)  # noqa: E731
    write_split_table(run, {"train": [record(*t) for t in train], "test": [record(*t) for t in test]})
    return run


def test_compare_prints_folds_pooled_and_sites(tmp_path, capsys):
    root = tmp_path / "runs" / "cv"
    a = [("sub-001", "unc"), ("sub-002", "penn")]
    b = [("sub-003", "unc"), ("sub-004", "penn"), ("sub-005", "osf")]
    fold_run(root, 0, a, b, psnr=20.0)
    fold_run(root, 1, b, a, psnr=26.0)
    assert run_main(compare.main, [str(root), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert {"fold_0", "fold_1", "pooled", "site unc", "site penn", "site osf"} <= set(rows)
    assert "fold_0 intensity LUT" in rows and "pooled identity (3T input)" in rows
    cells = lambda label: [c.strip() for c in rows[label].strip("|").split("|")]  # noqa: E731
    assert cells("pooled")[2] == "5"  # n: every subject of the cross-validation once
    assert cells("fold_0")[2] == "2" and cells("fold_1")[2] == "3"
    position = 3  # psnr_brain first
    assert cells("pooled")[position].startswith("23.60")  # (2 x 20 + 3 x 26) / 5
    assert cells("site unc")[position].startswith("23.00") and cells("site unc")[2] == "2"
    assert cells("site osf")[position].startswith("26.00")
    assert cells("fold_1 intensity LUT")[position].startswith("24.00")
    assert COLUMNS["psnr_brain"].heading in out
    with open(tmp_path / "cmp" / "comparison.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [r["run"] for r in table if r["run"] == "pooled"] and len(table) == 3 * (2 + 1 + 3)


def test_an_unfinished_fold_is_one_line(tmp_path, capsys):
    root = tmp_path / "runs" / "cv"
    fold_run(root, 0, [("sub-001", "unc")], [("sub-002", "penn")], psnr=20.0)
    (root / "fold_1" / "version_0").mkdir(parents=True)
    assert run_main(compare.main, [str(root), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert "fold_1" in err and "--fold 1" in err and not (tmp_path / "cmp").exists()


def test_a_dataset_without_sites_gets_no_site_rows(tmp_path, capsys):
    # The demo's subjects have no site: one "site n/a" row would only repeat the pooled one.
    root = tmp_path / "runs" / "cv"
    fold_run(root, 0, [("sub-001", None)], [("sub-002", None)], psnr=20.0)
    fold_run(root, 1, [("sub-002", None)], [("sub-001", None)], psnr=22.0)
    assert run_main(compare.main, [str(root), "--out", str(tmp_path / "cmp")]) == 0
    rows = [line.split(" | ")[0].strip("| ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert "pooled" in rows and not [row for row in rows if row.startswith("site")]
