"""prepare --fieldbridge: a FieldBridge-MRI download to a dataset folder (t7synth.data.fieldbridge)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import FIELDBRIDGE_SITES, make_fieldbridge, write_nifti

from t7synth.data import fieldbridge, naming
from t7synth.data.layout import discover, read_participants
from t7synth.data.volumes import load_volume
from t7synth.errors import UserError
from t7synth.prepare import main as prepare_main


def expected_subjects() -> dict[str, str]:
    return {
        fieldbridge.subject_label(site, f"{site}_{i + 1:03d}"): site for site, n in FIELDBRIDGE_SITES for i in range(n)
    }


def test_plan_takes_exactly_the_t1w_3t_7t_pairs(tmp_path):
    plan = fieldbridge.read_plan(make_fieldbridge(tmp_path / "fb"))
    subjects = {p.subject: p.site for p in plan.pairs}
    assert subjects == {**expected_subjects(), "sub-penn099": "penn"}
    # per site one T2W pair (2 rows) and one 1.5T/3T T1W pair (2 rows) skipped
    assert plan.skipped["T2W"] == 2 * len(FIELDBRIDGE_SITES)
    assert sum(n for reason, n in plan.skipped.items() if reason.startswith("T1W")) == 2 * len(FIELDBRIDGE_SITES)
    assert plan.problems == []
    pair = next(p for p in plan.pairs if p.subject == "sub-unc001")
    assert pair.source.name == "T1w_3T.nii.gz" and pair.target.name == "T1w_7T.nii.gz"


def test_sources_filter_and_table_at_root(tmp_path):
    root = make_fieldbridge(tmp_path / "fb", metadata=False)
    plan = fieldbridge.read_plan(root, ["UNC", "lausanne"])
    assert {p.site for p in plan.pairs} == {"unc", "lausanne"}
    with pytest.raises(UserError, match="--sources nosuch"):
        fieldbridge.read_plan(root, ["nosuch"])


def test_bad_rows_are_one_line_each(tmp_path):
    root = make_fieldbridge(tmp_path / "fb", missing=False)
    table = root / "metadata" / "pairs.tsv"
    lines = table.read_text().splitlines()
    lines.append("x1\tunc\tunc_050\tT1W\tthree\t7T\tunc/x.nii.gz\ttrain")  # unreadable field strength
    lines.append("x2\tunc\tunc_051\tT1W\t3T\t7T\tunc/y.nii.gz\ttrain")  # no 7T partner row
    table.write_text("\n".join(lines) + "\n")
    plan = fieldbridge.read_plan(root)
    assert len(plan.problems) == 2
    assert "line" in plan.problems[0] and "'three'" in plan.problems[0]
    assert "unc_051 has no T1W 7T row" in plan.problems[1]


def test_field_strengths():
    assert fieldbridge.field_tesla("3T") == 3.0
    assert fieldbridge.field_tesla("1.5 T") == 1.5
    assert fieldbridge.field_tesla("64mT") == pytest.approx(0.064)
    assert fieldbridge.field_tesla("7") == 7.0
    assert fieldbridge.field_tesla("high") is None


def test_prepare_writes_the_pairs_with_sites_and_reports_the_missing_file(tmp_path, capsys):
    root, out = make_fieldbridge(tmp_path / "fb"), tmp_path / "out"
    status = prepare_main(["--fieldbridge", str(root), "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert status == 2
    assert len(errors) == 1 and "penn_099/T1w_7T.nii.gz" in errors[0]
    assert "skipped rows" in captured.out and "1 failed" in captured.out
    rows = {row["participant_id"]: row["site"] for row in read_participants(out / naming.PARTICIPANTS)}
    assert rows == expected_subjects()
    records = discover(out)
    assert {r.subject: r.site for r in records} == expected_subjects()
    # cropped to the brain's box plus the margin (8 voxels at 0.5 mm), on one grid
    source, source_affine = load_volume(naming.source_path(out, "sub-unc001"))
    target, target_affine = load_volume(naming.target_path(out, "sub-unc001"))
    margin = int(fieldbridge.MARGIN_MM / 0.5)
    assert source.shape == target.shape
    assert all(n <= 16 + 2 * 8 and n < 16 + 8 + 2 * margin for n in source.shape)
    assert np.allclose(source_affine, target_affine)
    original, original_affine = load_volume(root / "unc" / "unc_001" / "T1w_7T.nii.gz")
    # the same voxel at the same world position
    corner = np.linalg.inv(original_affine) @ target_affine @ np.array([0, 0, 0, 1.0])
    i, j, k = np.round(corner[:3]).astype(int)
    assert target[0, 0, 0] == original[i, j, k]
    assert np.isclose(target.sum(), original.sum(), rtol=1e-5)  # nothing of the brain cut away

    # a re-run resumes: nothing prepared again, the failure reported again
    status = prepare_main(["--fieldbridge", str(root), "--out", str(out), "--no-progress", "--jobs", "2"])
    assert status == 2 and "0 prepared, 5 already complete" in capsys.readouterr().out


def test_voxel_size_and_jobs(tmp_path, capsys):
    root, out = make_fieldbridge(tmp_path / "fb", missing=False), tmp_path / "out"
    status = prepare_main(
        ["--fieldbridge", str(root), "--out", str(out), "--sources", "unc", "--voxel-size", "1", "--jobs", "2"]
    )
    assert status == 0, capsys.readouterr().err
    _, affine = load_volume(naming.target_path(out, "sub-unc002"))
    assert np.allclose(np.abs(np.diag(affine)[:3]), 1.0)
    assert len(discover(out)) == 2


def test_grid_mismatch_names_both_files(tmp_path, capsys):
    root, out = make_fieldbridge(tmp_path / "fb", missing=False), tmp_path / "out"
    volume, _ = load_volume(root / "unc" / "unc_001" / "T1w_7T.nii.gz")
    write_nifti(root / "unc" / "unc_001" / "T1w_7T.nii.gz", volume, np.diag([0.6, 0.5, 0.5, 1.0]))
    status = prepare_main(["--fieldbridge", str(root), "--out", str(out), "--no-progress"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1
    assert "unc_001/T1w_7T.nii.gz" in errors[0] and "unc_001/T1w_3T.nii.gz" in errors[0]
    assert "sub-unc001" not in {r.subject for r in discover(out)}
