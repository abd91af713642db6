"""Bad FieldBridge downloads (prepare --fieldbridge) and bad --init files (fit --init):
one ``error:`` line per problem, exit 2, no traceback, nothing written where the whole
command is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TINY_UNET, make_dataset, make_fieldbridge
from robust_helpers import assert_refused, error_lines, malicious_checkpoint, snapshot

from t7synth import fit, prepare
from t7synth.cli import run_main
from t7synth.data import naming


def prepare_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--fieldbridge", str(root), "--out", str(out), "--no-progress", *extra]


# -- prepare --fieldbridge ----------------------------------------------------------------
def _no_table(root):
    (root / "metadata" / "pairs.tsv").unlink()


def _no_column(root):
    table = root / "metadata" / "pairs.tsv"
    table.write_text(table.read_text().replace("relative_path", "path", 1))


def _empty_table(root):
    (root / "metadata" / "pairs.tsv").write_text("")


def _binary_table(root):
    (root / "metadata" / "pairs.tsv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")


def _only_t2w(root):
    table = root / "metadata" / "pairs.tsv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0], *(line for line in lines[1:] if "\tT2W\t" in line)]) + "\n")


@pytest.mark.parametrize(
    ("damage", "extra", "expected"),
    [
        (_no_table, [], "pairs.tsv"),
        (_no_column, [], "no column relative_path"),
        (_empty_table, [], "no column"),
        (_only_t2w, [], "no T1W 3T/7T pair"),
        (_binary_table, [], "pairs.tsv"),
        (None, ["--sources", "mars"], "--sources mars"),
        (None, ["--jobs", "0"], "--jobs 0"),
        (None, ["--voxel-size", "-1"], "--voxel-size -1"),
        (None, ["--voxel-size", "nan"], "--voxel-size nan"),
    ],
)
def test_refused_download_is_one_line_and_writes_nothing(tmp_path, capsys, damage, extra, expected):
    root, out = make_fieldbridge(tmp_path / "fb", missing=False), tmp_path / "out"
    if damage:
        damage(root)
    before = snapshot(tmp_path)
    status = run_main(prepare.main, prepare_args(root, out, *extra))
    assert_refused(status, capsys.readouterr().err, expected)
    assert snapshot(tmp_path) == before


def test_sources_without_fieldbridge_is_one_line(tmp_path, capsys):
    status = run_main(prepare.main, ["--raw", str(tmp_path), "--out", str(tmp_path / "o"), "--sources", "unc"])
    assert_refused(status, capsys.readouterr().err, "--fieldbridge")


def test_broken_files_are_one_line_each_and_the_rest_is_written(tmp_path, capsys):
    root, out = make_fieldbridge(tmp_path / "fb"), tmp_path / "out"
    (root / "unc" / "unc_001" / "T1w_3T.nii.gz").write_bytes(b"\x1f\x8b not really gzip")  # unreadable
    data = (root / "penn" / "penn_001" / "T1w_7T.nii.gz").read_bytes()
    (root / "penn" / "penn_001" / "T1w_7T.nii.gz").write_bytes(data[: len(data) // 2])  # truncated
    status = run_main(prepare.main, prepare_args(root, out, "--jobs", "2"))
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert status == 2 and "Traceback" not in err
    assert len(lines) == 3, lines  # the two broken files and the missing one
    assert any("unc_001/T1w_3T.nii.gz" in line for line in lines)
    assert any("penn_001/T1w_7T.nii.gz" in line for line in lines)
    assert any("penn_099/T1w_7T.nii.gz" in line for line in lines)
    listed = (out / naming.PARTICIPANTS).read_text()
    assert "sub-unc002" in listed and "sub-unc001" not in listed and "sub-penn001" not in listed
    assert not (out / "sub-unc001").exists()


def test_output_that_is_not_ours_is_refused(tmp_path, capsys):
    root, out = make_fieldbridge(tmp_path / "fb", missing=False), tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    assert_refused(run_main(prepare.main, prepare_args(root, out)), capsys.readouterr().err, "not empty")
    assert snapshot(out) == before


# -- fit --init ---------------------------------------------------------------------------
def fit_args(data: Path, runs: Path, *extra: str) -> list[str]:
    sets = [x for item in TINY_UNET for x in ("--set", item)]
    return ["--model", "unet", "--data", str(data), "--set", f"runs_dir={runs}", *sets, "--wandb", "disabled", *extra]


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _text(path: Path) -> Path:
    path.write_text("not a checkpoint")
    return path


def _other_net(path: Path) -> Path:
    from t7synth.models.unet import UNetModule
    from t7synth.registry import resolve

    config = resolve("unet", None, [*TINY_UNET, "model.net.channels=16"]).to_dict()
    torch.save({"state_dict": UNetModule(config).state_dict(), "hyper_parameters": {"config": config}}, path)
    return path


def _foreign_dict(path: Path) -> Path:
    torch.save({"weights": torch.zeros(3)}, path)
    return path


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p, "not found"),
        (_empty, "empty"),
        (_text, "cannot read checkpoint"),
        (_other_net, "has shape (64, 16)"),
        (_foreign_dict, "not a t7synth checkpoint"),
    ],
)
def test_bad_init_file_is_one_line_and_writes_nothing(tmp_path, capfd, make, expected):
    data, runs = make_dataset(tmp_path / "data"), tmp_path / "runs"
    init = make(tmp_path / "init.ckpt")
    status = run_main(fit.main, fit_args(data, runs, "--init", str(init)))
    err = capfd.readouterr().err
    line = assert_refused(status, err, expected)
    assert "--init" in line
    assert not runs.exists()


def test_hostile_init_file_runs_no_code(tmp_path, capfd):
    data, runs, marker = make_dataset(tmp_path / "data"), tmp_path / "runs", tmp_path / "ran"
    hostile = malicious_checkpoint(tmp_path / "hostile.ckpt", marker)
    status = run_main(fit.main, fit_args(data, runs, "--init", str(hostile)))
    assert_refused(status, capfd.readouterr().err, "hostile.ckpt")
    assert not marker.exists() and not runs.exists()
