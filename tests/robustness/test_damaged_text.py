"""Damaged, hostile and non-UTF-8 text files, in every command that reads one.

Every reader of a user- or run-provided text file goes through :mod:`t7synth.textfiles`;
these cases check, command by command, that a binary or non-UTF-8 table, a number that
is no epoch or rank, and YAML or JSON nested tens of thousands of levels deep end in
one ``error:`` line, exit 2, no traceback and nothing written (``robust_helpers``), and
that a Latin-1 ``--pairs`` table from a European clinic prepares with its accents kept.
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_UNET, make_dataset, make_pair, write_nifti
from robust_helpers import assert_refused, snapshot

from t7synth import compare, fit, predict, prepare, sweep
from t7synth.cli import run_main
from t7synth.data import naming
from t7synth.inference import package

#: Tens of thousands of nested lists: Python's parsers raise RecursionError on these.
DEEP = 20_000
DEEP_YAML = "name: deep\nmodel: " + "[" * DEEP + "]" * DEEP + "\n"
DEEP_JSON = "[" * DEEP + "]" * DEEP
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01"
SCORES = "model,subject,psnr_brain,ssim_brain,psnr,ssim,mae\nmodel,sub-1,25.0,0.9,30,0.95,0.01\n"
METRICS = "epoch,step,val/psnr_brain\n0,9,20.0\n1,19,21.0\n"


def _fit_run(folder: Path, metrics: str | bytes = METRICS) -> Path:
    folder.mkdir(parents=True)
    (folder / "test_scores.csv").write_text(SCORES)
    (folder / "config.yaml").write_text("name: demo\nmodel:\n  name: unet\n")
    (folder / "metrics.csv").write_bytes(metrics.encode() if isinstance(metrics, str) else metrics)
    return folder


def _refused(tmp_path: Path, capsys, main, argv: list[str], *expected: str) -> str:
    """Run a command that must refuse: one line, exit 2, no traceback, nothing written."""
    before = snapshot(tmp_path)
    status = run_main(main, argv)
    line = assert_refused(status, capsys.readouterr().err, *expected)
    assert snapshot(tmp_path) == before, "a refused command wrote something"
    return line


# -- compare: a damaged run folder ---------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("metrics.csv", PNG, "metrics.csv is binary, not text"),
        ("metrics.csv", "epoch,step,note\n0,9,caf\xe9\n".encode("latin-1"), "metrics.csv is not UTF-8 text"),
        ("metrics.csv", b"epoch,step,val/psnr_brain\ninf,9,20.0\n", "line 2: epoch must be a finite number"),
        ("metrics.csv", b"epoch,step,val/psnr_brain\n0,9,20\nfirst,19,21\n", "line 3: epoch is not a number"),
        ("metrics.csv", b"epoch,step,val/psnr_brain\n-1,9,20.0\n", "epoch must be at least 0"),
        ("metrics.csv", b"epoch,step,val/psnr_brain\n0.5,9,20.0\n", "epoch must be a whole number"),
        ("config.yaml", DEEP_YAML.encode(), "config.yaml nests lists or mappings more than 64 levels deep"),
        ("config.yaml", b"name: a\nb: &b [1, *b]\n", "config.yaml contains itself"),
        ("config.yaml", PNG, "config.yaml is binary"),
        ("test_scores.csv", PNG, "test_scores.csv is binary"),
        ("test_scores.csv", SCORES.replace("25.0", "caf\xe9").encode("latin-1"), "test_scores.csv is not UTF-8"),
        ("wandb_id.txt", PNG, "wandb_id.txt is binary"),
    ],
    ids=[
        "binary-metrics",
        "latin1-metrics",
        "infinite-epoch",
        "word-epoch",
        "negative-epoch",
        "fractional-epoch",
        "deep-config",
        "self-containing-config",
        "binary-config",
        "binary-scores",
        "latin1-scores",
        "binary-wandb-id",
    ],
)
def test_compare_refuses_a_damaged_run_folder_in_one_line(tmp_path, capsys, name, content, expected):
    good = _fit_run(tmp_path / "good")
    bad = _fit_run(tmp_path / "bad")
    (bad / name).write_bytes(content)
    line = _refused(tmp_path, capsys, compare.main, [str(good), str(bad), "--out", str(tmp_path / "cmp")], expected)
    assert str(bad) in line


def _study(folder: Path, trials_csv: bytes | str, trial_json: str | None = None) -> Path:
    run = _fit_run(folder / "trial-0000" / "version_0")
    if trial_json is not None:
        (run / "trial.json").write_text(trial_json)
    text = trials_csv.replace("RUN", str(run)) if isinstance(trials_csv, str) else trials_csv
    (folder / "trials.csv").write_bytes(text.encode() if isinstance(text, str) else text)
    return folder


@pytest.mark.parametrize(
    ("trials_csv", "expected"),
    [
        (PNG, "trials.csv is binary"),
        ("number,rank,run_dir,note\n0,1,RUN,caf\xe9\n".encode("latin-1"), "trials.csv is not UTF-8"),
        ("number,rank,run_dir\n0,inf,RUN\n", "trials.csv, line 2: rank must be a finite number, not 'inf'"),
        ("number,rank,run_dir\n0,first,RUN\n", "trials.csv, line 2: rank is not a number: 'first'"),
        ("number,rank,run_dir\n0,0,RUN\n", "rank must be at least 1"),
        ("number,rank,run_dir\n0,1\n", "trials.csv, line 2: 3 cells expected"),
    ],
    ids=["binary", "latin1", "infinite-rank", "word-rank", "zero-rank", "short-row"],
)
def test_compare_refuses_a_damaged_study_folder_in_one_line(tmp_path, capsys, trials_csv, expected):
    study = _study(tmp_path / "study", trials_csv)
    _refused(tmp_path, capsys, compare.main, [str(study), "--out", str(tmp_path / "cmp")], expected, str(study))


def test_compare_reads_a_trial_whose_trial_json_is_hostile_as_a_plain_run(tmp_path, capsys):
    # trial.json only labels a run; an unreadable one (here nested 20 000 deep) makes it a fit run.
    study = _study(tmp_path / "study", "number,rank,run_dir\n0,1.0,RUN\n", trial_json=DEEP_JSON)
    assert run_main(compare.main, [str(study), "--out", str(tmp_path / "cmp")]) == 0, capsys.readouterr().err
    assert "| demo/version_0 | unet | 1 |" in (tmp_path / "cmp" / "comparison.md").read_text()


# -- predict --model: a hostile package ----------------------------------------------------
MANIFEST = json.dumps({"format": package.FORMAT, "format_version": 1, "model": "unet"})


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ({package.MANIFEST: DEEP_JSON}, f"{package.MANIFEST} nests lists or mappings more than 64 levels deep"),
        ({package.MANIFEST: '{"a": ' * DEEP + "1" + "}" * DEEP}, f"{package.MANIFEST} nests"),
        ({package.MANIFEST: MANIFEST, package.CONFIG: DEEP_YAML}, "config.yaml nests lists or mappings"),
        ({package.MANIFEST: MANIFEST, package.CONFIG: "a: &a [*a]\n"}, "config.yaml contains itself"),
        ({package.MANIFEST: PNG}, f"{package.MANIFEST} is binary"),
        ({package.MANIFEST: MANIFEST.encode("utf-16-le")}, f"{package.MANIFEST} is binary"),
        ({package.MANIFEST: MANIFEST, package.CONFIG: "name: caf\xe9\n".encode("latin-1")}, "is not UTF-8"),
    ],
    ids=["deep-list-manifest", "deep-object-manifest", "deep-config", "self-config", "binary", "utf16", "latin1"],
)
def test_predict_refuses_a_hostile_package_in_one_line(tmp_path, capsys, members, expected):
    model = tmp_path / "model.zip"
    with zipfile.ZipFile(model, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    scan = write_nifti(tmp_path / "scan.nii.gz", make_pair((20, 24, 18))[0], np.diag([1.5, 1.5, 1.5, 1]))
    argv = ["--model", str(model), "--input", str(scan), "--output", str(tmp_path / "out.nii.gz")]
    _refused(tmp_path, capsys, predict.main, argv, expected, str(model))


# -- configs, sweeps and --set: the same depth limit -----------------------------------
def test_fit_sweep_and_set_refuse_deep_yaml_in_one_line(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text(DEEP_YAML)
    _refused(tmp_path, capsys, fit.main, ["--config", str(path), "--summary"], str(path), "nests")
    _refused(tmp_path, capsys, sweep.main, [str(path), "--set", f"runs_dir={tmp_path / 'runs'}"], str(path), "nests")
    deep_set = "optim.lr=" + "[" * DEEP + "]" * DEEP
    _refused(tmp_path, capsys, fit.main, ["--model", "unet", "--set", deep_set, "--summary"], "--set optim.lr", "64")


def test_fit_refuses_a_binary_participants_table_in_one_line(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n_subjects=3)
    (data / naming.PARTICIPANTS).write_bytes(PNG)
    sets = [x for item in TINY_UNET for x in ("--set", item)]
    argv = ["--model", "unet", "--data", str(data), "--set", f"runs_dir={tmp_path / 'runs'}", *sets]
    _refused(tmp_path, capsys, fit.main, [*argv, "--wandb", "disabled"], "participants.tsv is binary")


# -- prepare: a Latin-1 --pairs table ---------------------------------------------------
def _pairs(tmp_path: Path, subjects: list[str], sites: list[str], encoding: str = "latin-1") -> Path:
    scans = make_dataset(tmp_path / "scans", n_subjects=len(subjects), splits=False)
    table = tmp_path / "pairs.csv"
    lines = [["subject", "source", "target", "split", "site"]]
    for index, (subject, site) in enumerate(zip(subjects, sites)):
        original = f"sub-{index + 1:03d}"
        source, target = naming.source_path(scans, original), naming.target_path(scans, original)
        lines.append([subject, str(source), str(target), "train" if index else "test", site])
    with open(table, "w", newline="", encoding=encoding) as handle:
        csv.writer(handle).writerows(lines)
    return table


def test_prepare_reads_a_latin1_pairs_table_with_its_accents(tmp_path, capsys):
    sites = ["Hôpital Édouard Herriot, Lyon", "Universitätsspital Zürich"]
    table = _pairs(tmp_path, ["a1", "b2"], sites)
    assert "ô".encode("latin-1") in table.read_bytes()  # really Latin-1, not UTF-8
    out = tmp_path / "prepared"
    status = run_main(prepare.main, ["--pairs", str(table), "--out", str(out), "--no-register", "--no-progress"])
    assert status == 0, capsys.readouterr().err
    with open(out / naming.PARTICIPANTS, newline="", encoding="utf-8") as handle:  # written as UTF-8
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [(row["participant_id"], row["site"]) for row in rows] == [("sub-a1", sites[0]), ("sub-b2", sites[1])]


def test_prepare_refuses_an_accented_subject_label_naming_it_right(tmp_path, capsys):
    # BIDS labels are letters and digits of ASCII; the name is shown as the clinic wrote it.
    table = _pairs(tmp_path, ["José", "b2"], ["Lyon", "Zürich"])
    out = tmp_path / "prepared"
    argv = ["--pairs", str(table), "--out", str(out), "--no-register", "--no-progress"]
    _refused(tmp_path, capsys, prepare.main, argv, "line 2: subject 'José' must be letters and digits")


@pytest.mark.parametrize(
    ("content", "expected"),
    [(PNG, "pairs.csv is binary"), (b"subject,source,target\na,\x81,x\n", "pairs.csv is not UTF-8 text (byte 24)")],
    ids=["binary", "undefined-in-windows-1252"],
)
def test_prepare_refuses_an_unreadable_pairs_table_in_one_line(tmp_path, capsys, content, expected):
    table = tmp_path / "pairs.csv"
    table.write_bytes(content)
    argv = ["--pairs", str(table), "--out", str(tmp_path / "prepared"), "--no-register", "--no-progress"]
    _refused(tmp_path, capsys, prepare.main, argv, expected)


# -- prepare --raw: BIDS sidecars and participants.tsv ------------------------------------
def _raw_bids(root: Path, sidecar: bytes, participants: bytes) -> Path:
    """One subject in two neutral sessions; the sidecars tell the field strength."""
    source, target, _ = make_pair((20, 24, 18))
    for session, array, content in (("01", source, b'{"MagneticFieldStrength": 2.89}'), ("02", target, sidecar)):
        path = write_nifti(root / "sub-01" / f"ses-{session}" / "anat" / f"sub-01_ses-{session}_T1w.nii.gz", array)
        path.with_name(f"sub-01_ses-{session}_T1w.json").write_bytes(content)
    (root / naming.PARTICIPANTS).write_bytes(participants)
    return root


@pytest.mark.parametrize(
    ("sidecar", "expected"),
    [(DEEP_JSON.encode(), "nests lists or mappings more than 64 levels deep"), (PNG, "is binary")],
    ids=["deep", "binary"],
)
def test_prepare_refuses_a_hostile_bids_sidecar_in_one_line(tmp_path, capsys, sidecar, expected):
    raw = _raw_bids(tmp_path / "raw", sidecar, b"participant_id\tsplit\nsub-01\ttest\n")
    argv = ["--raw", str(raw), "--out", str(tmp_path / "prepared"), "--no-register", "--no-progress"]
    _refused(tmp_path, capsys, prepare.main, argv, "sub-01_ses-02_T1w.json", expected)


def test_prepare_reads_a_latin1_participants_table_of_a_raw_dataset(tmp_path, capsys):
    participants = "participant_id\tsplit\tsite\nsub-01\ttest\tUniversitätsspital Zürich\n".encode("latin-1")
    raw = _raw_bids(tmp_path / "raw", b'{"MagneticFieldStrength": 6.98}', participants)
    out = tmp_path / "prepared"
    status = run_main(prepare.main, ["--raw", str(raw), "--out", str(out), "--no-register", "--no-progress"])
    assert status == 0, capsys.readouterr().err
    text = (out / naming.PARTICIPANTS).read_text(encoding="utf-8")
    assert "Universitätsspital Zürich" in text
