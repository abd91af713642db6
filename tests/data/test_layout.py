"""Every bad input a user can hand the data layer ends with one line naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_dataset, make_pair, make_sited_dataset, write_nifti

from t7synth.cli import run_main
from t7synth.data import naming
from t7synth.data.layout import discover
from t7synth.data.volumes import load_volume
from t7synth.errors import UserError


def _corrupt(root, kind):
    """Break sub-002 in one way; return the file the error must name."""
    subject = "sub-002"
    source = naming.source_path(root, subject)
    target = naming.target_path(root, subject)
    array = np.asarray(__import__("nibabel").load(str(source)).dataobj)
    if kind == "shape":
        write_nifti(target, np.zeros((5, 6, 7), np.float32) + 1)
        return target
    if kind == "affine":
        write_nifti(target, array, np.diag([2.0, 2.0, 2.0, 1.0]))
        return target
    if kind == "unreadable":
        source.write_bytes(b"this is not a nifti file")
        return source
    if kind == "truncated":
        data = source.read_bytes()
        source.write_bytes(data[: len(data) // 2])
        return source
    if kind == "4d":
        write_nifti(source, np.stack([array, array], axis=-1))
        return source
    if kind == "nan":
        broken = array.copy()
        broken[3, 3, 3] = np.nan
        write_nifti(source, broken)
        return source
    if kind == "empty":
        write_nifti(target, np.zeros_like(array))
        return target
    if kind == "missing":
        target.unlink()
        return target
    raise AssertionError(kind)


KINDS = ["shape", "affine", "unreadable", "truncated", "4d", "nan", "empty", "missing"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_subject_ends_fit_with_one_line(tmp_path, capsys, kind):
    from t7synth import fit

    root = make_dataset(tmp_path / "data")
    bad = _corrupt(root, kind)
    status = run_main(
        fit.main,
        [
            "--model",
            "unet",
            "--data",
            str(root),
            "--wandb",
            "disabled",
            "--fast-dev-run",
            "--set",
            f"runs_dir={tmp_path / 'runs'}",
        ],
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status != 0
    assert len(lines) == 1, err
    assert bad.name in lines[0]
    assert "Traceback" not in err


def test_participants_table_is_read(tmp_path):
    root = make_dataset(tmp_path / "data", n_subjects=3)
    records = discover(root)
    assert [r.subject for r in records] == ["sub-001", "sub-002", "sub-003"]
    assert records[1].sex == 1.0 and records[0].sex == 0.0
    assert records[2].age == 62.0
    assert [r.split for r in records] == ["train", "val", "test"]
    assert all(r.mask is not None for r in records)


def test_subjects_found_without_participants_table(tmp_path):
    root = make_dataset(tmp_path / "data", n_subjects=3, masks=False)
    (root / naming.PARTICIPANTS).unlink()
    records = discover(root)
    assert len(records) == 3 and all(r.mask is None and r.split is None for r in records)


def test_bad_split_value_names_the_table(tmp_path):
    root = make_dataset(tmp_path / "data", n_subjects=3)
    table = root / naming.PARTICIPANTS
    table.write_text(table.read_text().replace("\tval", "\tvalidation"))
    with pytest.raises(UserError, match="participants.tsv: split 'validation'"):
        discover(root)


def test_missing_folder():
    with pytest.raises(UserError, match="dataset folder not found"):
        discover("/nonexistent/t7synth")


def test_volume_is_reoriented_to_ras(tmp_path):
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    path = write_nifti(tmp_path / "lps.nii.gz", array, lps)
    loaded, affine = load_volume(path)
    assert np.allclose(loaded, array[::-1, ::-1, :])
    assert np.all(np.diag(affine)[:3] > 0)


def test_trailing_singleton_dimension_is_accepted(tmp_path):
    path = write_nifti(tmp_path / "v.nii.gz", np.ones((3, 4, 5, 1), np.float32) * np.arange(5).reshape(1, 1, 5, 1))
    assert load_volume(path)[0].shape == (3, 4, 5)


def test_site_column_is_read_from_participants_and_from_a_pairs_table(tmp_path, capsys):
    """``site`` reaches SubjectRecord from participants.tsv, and prepare --pairs copies it there."""
    from t7synth.prepare import main as prepare_main

    records = {r.subject: r.site for r in discover(make_sited_dataset(tmp_path / "sited"))}
    assert records["sub-001"] == "siteA" and records["sub-008"] == "siteC"
    lines = ["subject,source,target,site"]
    for index, site in enumerate(("unc", "penn", "n/a")):
        source, target, _ = make_pair((12, 14, 10), seed=index)
        write_nifti(tmp_path / "raw" / f"{index}_3T.nii.gz", source)
        write_nifti(tmp_path / "raw" / f"{index}_7T.nii.gz", target)
        lines.append(f"{index},raw/{index}_3T.nii.gz,raw/{index}_7T.nii.gz,{site}")
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert prepare_main(["--pairs", str(tmp_path / "pairs.csv"), "--out", str(out), "--no-register"]) == 0
    assert {r.subject: r.site for r in discover(out)} == {"sub-0": "unc", "sub-1": "penn", "sub-2": None}
