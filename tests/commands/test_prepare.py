"""``prepare``: raw 3T/7T pairs on different grids become a dataset folder ``fit`` accepts.

The phantom is a smooth, asymmetric blob "head" defined in world millimetres, so each
scan samples it exactly on its own grid: the 7T on a 28-voxel RAS cube at 1 mm, the
3T on a 1.3 mm grid with permuted and flipped axes, a different field of view, another
contrast, and the head moved by a known rigid motion. The ideal prepared 3T is the
3T contrast sampled at the 7T's voxel centres, which the tests compare against.
"""

from __future__ import annotations

import csv
import gzip
import os

import numpy as np
import pytest
from helpers import write_nifti

from t7synth import prepare
from t7synth.cli import run_main
from t7synth.data import naming
from t7synth.data.layout import discover
from t7synth.data.prepare import QC_TABLE
from t7synth.data.volumes import load_volume

TARGET_SHAPE = (28, 28, 28)
TARGET_AFFINE = np.array([[1.0, 0, 0, -13.5], [0, 1.0, 0, -13.0], [0, 0, 1.0, -14.0], [0, 0, 0, 1]])
SOURCE_SHAPE = (27, 26, 25)
#: 1.3 mm voxels; array axes (i, j, k) run along (-y, +z, -x): another orientation.
SOURCE_DIRECTIONS = np.array([[0, 0, -1.3], [-1.3, 0, 0], [0, 1.3, 0]])


def _rotation(x_deg: float, z_deg: float) -> np.ndarray:
    x, z = np.radians([x_deg, z_deg])
    about_x = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    about_z = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return about_z @ about_x


#: Head motion between the sessions: the 3T at world point y shows the anatomy at M(y).
MOTION_R = _rotation(-3.0, 4.0)
MOTION_T = np.array([2.0, -1.5, 1.2])


def source_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = SOURCE_DIRECTIONS
    # Centre the 3T grid 1 mm off the 7T's: a different field of view.
    affine[:3, 3] = -SOURCE_DIRECTIONS @ ((np.array(SOURCE_SHAPE) - 1) / 2) + np.array([1.0, 0.5, -1.0])
    return affine


def anatomy(points: np.ndarray) -> np.ndarray:
    """Smooth asymmetric blobs (mm in, intensity out): something to lock onto."""
    blobs = [
        ((0, 0, 0), (9, 11, 8), 1.0),
        ((3, 4, 2), (3, 2, 2.5), 0.8),
        ((-4, -2, 3), (2, 3, 2), -0.5),
        ((1, -5, -3), (2.5, 2, 3), 0.6),
    ]
    total = np.zeros(points.shape[:-1])
    for centre, radii, amplitude in blobs:
        distance = (((points - np.array(centre)) / np.array(radii)) ** 2).sum(-1)
        total += amplitude * np.exp(-0.5 * distance**1.5)
    return np.clip(total, 0, None)


def three_t_contrast(value: np.ndarray) -> np.ndarray:
    return 0.6 * value**0.8


def world(shape, affine) -> np.ndarray:
    index = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(float)
    return index @ affine[:3, :3].T + affine[:3, 3]


def write_subject(root, subject: str, motion: bool = True, mask: bool = False) -> None:
    """A raw subject: 7T on the RAS cube, 3T on its own grid (moved head), 3T-grid mask."""
    points = world(SOURCE_SHAPE, source_affine())
    if motion:
        points = points @ MOTION_R.T + MOTION_T
    head = anatomy(points)
    write_nifti(naming.source_path(root, subject), three_t_contrast(head).astype(np.float32), source_affine())
    write_nifti(
        naming.target_path(root, subject), anatomy(world(TARGET_SHAPE, TARGET_AFFINE)).astype(np.float32), TARGET_AFFINE
    )
    if mask:
        write_nifti(naming.mask_path(root, subject), (head > 0.3).astype(np.uint8), source_affine())


def write_raw(root, subjects=("sub-001", "sub-002"), motion: bool = True, table: bool = True):
    for index, subject in enumerate(subjects):
        write_subject(root, subject, motion=motion, mask=index == 0)
    if table:
        lines = ["participant_id\tage\tsex\tgroup"] + [
            f"{s}\t{60 + i}\t{'FM'[i % 2]}\tCU" for i, s in enumerate(subjects)
        ]
        (root / naming.PARTICIPANTS).write_text("\n".join(lines) + "\n")
    return root


def ideal_source() -> np.ndarray:
    """The 3T contrast of the 7T's anatomy, on the 7T's grid: a perfect prepare."""
    return three_t_contrast(anatomy(world(TARGET_SHAPE, TARGET_AFFINE)))


def read_tsv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def run(capsys, *args) -> tuple[int, str, str]:
    status = run_main(prepare.main, [*map(str, args), "--no-progress"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def corr(a, b, region) -> float:
    return float(np.corrcoef(a[region], b[region])[0, 1])


@pytest.fixture(autouse=True)
def _one_itk_thread():
    """ITK ignores OMP_NUM_THREADS; keep registration to one core like the rest."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def test_registers_raw_folder_onto_the_7t_grid(tmp_path, capsys):
    raw, out = write_raw(tmp_path / "raw"), tmp_path / "dataset"
    status, stdout, err = run(capsys, "--raw", raw, "--out", out)
    assert status == 0, err
    assert stdout.splitlines()[0] == str(out)
    assert "2 prepared, 0 already complete" in stdout

    records = discover(out)  # the contract with fit: pairs on one grid, masks optional
    assert [r.subject for r in records] == ["sub-001", "sub-002"]
    assert records[0].mask is not None and records[1].mask is None
    assert (records[0].age, records[0].sex, records[1].sex) == (60.0, 1.0, 0.0)
    assert read_tsv(out / naming.PARTICIPANTS)[0]["group"] == "CU"

    truth = ideal_source()
    head = anatomy(world(TARGET_SHAPE, TARGET_AFFINE)) > 0.3
    for record in records:
        source, affine = load_volume(record.source)
        target, target_affine = load_volume(record.target)
        assert source.shape == target.shape == TARGET_SHAPE
        np.testing.assert_allclose(affine, TARGET_AFFINE, atol=1e-6)
        np.testing.assert_allclose(target_affine, TARGET_AFFINE, atol=1e-6)
        assert corr(source, truth, head) > 0.99

    rows = read_tsv(out / QC_TABLE)
    assert [row["subject"] for row in rows] == ["sub-001", "sub-002"]
    for row in rows:
        assert row["registration"].startswith("rigid") and row["qc"] == "ok"
        assert float(row["corr_after"]) > float(row["corr_before"]) + 0.1
        assert 3.0 < float(row["rotation_deg"]) < 7.0  # 5 degrees in all
        assert (out / "qc" / f"{row['subject']}.png").stat().st_size > 1000

    # The stored transform maps each 7T point to where the 3T shows it: M^-1.
    import SimpleITK as sitk

    transform = sitk.ReadTransform(str(out / "qc" / "sub-002_3Tto7T.tfm"))
    points = world(TARGET_SHAPE, TARGET_AFFINE)[head][::7]
    lps = np.array([-1.0, -1.0, 1.0])
    found = np.array([np.asarray(transform.TransformPoint(tuple(p * lps))) * lps for p in points])
    expected = (points - MOTION_T) @ MOTION_R  # M^-1(p) = R^T (p - t)
    assert np.abs(found - expected).max() < 0.5  # mm; voxels are 1 mm (7T) and 1.3 mm (3T)

    # The 3T-grid mask followed the 3T onto the 7T grid.
    mask = load_volume(records[0].mask)[0] > 0
    assert 2 * (mask & head).sum() / (mask.sum() + head.sum()) > 0.9


def test_no_register_resamples_by_scanner_coordinates(tmp_path, capsys):
    raw, out = write_raw(tmp_path / "raw", subjects=("sub-01",), motion=False, table=False), tmp_path / "dataset"
    status, _, err = run(capsys, "--raw", raw, "--out", out, "--no-register", "--interpolation", "bspline")
    assert status == 0, err
    (record,) = discover(out)
    source, affine = load_volume(record.source)
    np.testing.assert_allclose(affine, TARGET_AFFINE, atol=1e-6)
    head = anatomy(world(TARGET_SHAPE, TARGET_AFFINE)) > 0.3
    assert corr(source, ideal_source(), head) > 0.99
    (row,) = read_tsv(out / QC_TABLE)
    assert row["registration"].startswith("none") and float(row["rotation_deg"]) == 0.0
    assert read_tsv(out / naming.PARTICIPANTS) == [{"participant_id": "sub-01", "age": "n/a", "sex": "n/a"}]


def test_rerun_skips_complete_subjects(tmp_path, capsys):
    raw, out = write_raw(tmp_path / "raw"), tmp_path / "dataset"
    assert run(capsys, "--raw", raw, "--out", out)[0] == 0
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}

    status, stdout, _ = run(capsys, "--raw", raw, "--out", out)
    assert status == 0 and "0 prepared, 2 already complete and skipped" in stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == written
    assert len(read_tsv(out / QC_TABLE)) == 2

    # A changed input is prepared again; so is everything with --overwrite.
    changed = naming.source_path(raw, "sub-002")
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    assert "1 prepared, 1 already complete" in run(capsys, "--raw", raw, "--out", out)[1]
    assert "2 prepared, 0 already complete" in run(capsys, "--raw", raw, "--out", out, "--overwrite")[1]
    assert not list(out.glob(".*"))  # no temporary leftovers


def test_pairs_table(tmp_path, capsys):
    scans = tmp_path / "scans"
    write_subject(scans, "sub-a", mask=True)
    table = tmp_path / "pairs.csv"
    relative = lambda path: path.relative_to(tmp_path).as_posix()  # noqa: E731
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", "source", "target", "mask", "age", "sex", "split", "site"])
        writer.writerow(
            [
                "a",
                relative(naming.source_path(scans, "sub-a")),
                relative(naming.target_path(scans, "sub-a")),
                relative(naming.mask_path(scans, "sub-a")),
                "71",
                "F",
                "test",
                "X",
            ]
        )
        # The same scans under a second label, with a gzip-less 7T and no mask.
        target = naming.target_path(scans, "sub-a")
        plain = scans / "b_7T.nii"
        plain.write_bytes(gzip.decompress(target.read_bytes()))
        writer.writerow(
            ["sub-b", relative(naming.source_path(scans, "sub-a")), relative(plain), "", "", "M", "train", ""]
        )
    out = tmp_path / "dataset"
    status, _, err = run(capsys, "--pairs", table, "--out", out)
    assert status == 0, err
    records = discover(out)
    assert [(r.subject, r.split, r.age, r.mask is not None) for r in records] == [
        ("sub-a", "test", 71.0, True),
        ("sub-b", "train", 0.0, False),
    ]
    participants = read_tsv(out / naming.PARTICIPANTS)
    assert list(participants[0]) == ["participant_id", "age", "sex", "split", "site"]
    assert participants[1]["site"] == "n/a" and participants[1]["age"] == "n/a"


def test_interrupted_run_leaves_no_half_subject(tmp_path, capsys, monkeypatch):
    from t7synth.data import volumes

    raw, out = write_raw(tmp_path / "raw"), tmp_path / "dataset"
    write = volumes.write_nifti
    calls = []

    def interrupted(path, array, affine):
        calls.append(path)
        if len(calls) == 4:  # sub-001 has 3 files (with its mask); stop inside sub-002
            raise KeyboardInterrupt
        write(path, array, affine)

    monkeypatch.setattr(volumes, "write_nifti", interrupted)
    assert run(capsys, "--raw", raw, "--out", out)[0] == 130
    assert sorted(p.name for p in out.iterdir()) == ["qc", "sub-001"]  # no half sub-002, no temporaries
    monkeypatch.setattr(volumes, "write_nifti", write)
    status, stdout, _ = run(capsys, "--raw", raw, "--out", out)
    assert status == 0 and "1 prepared, 1 already complete" in stdout
    assert len(discover(out)) == 2


def _break(raw, tmp_path, kind):
    """Break the raw input one way; return the arguments and what the error must name."""
    source, target = naming.source_path(raw, "sub-002"), naming.target_path(raw, "sub-002")
    if kind == "truncated":
        data = source.read_bytes()
        source.write_bytes(data[: len(data) // 2])
        return ["--raw", raw], str(source)
    if kind == "missing 7T":
        target.unlink()
        return ["--raw", raw], str(target)
    if kind == "4d":
        array = np.asarray(__import__("nibabel").load(str(target)).dataobj)
        write_nifti(target, np.stack([array, array], axis=-1), TARGET_AFFINE)
        return ["--raw", raw], str(target)
    if kind == "folder without row":
        write_subject(raw, "sub-003")
        return ["--raw", raw], "sub-003"
    if kind == "mask on another grid":
        write_nifti(naming.mask_path(raw, "sub-002"), np.ones((5, 5, 5), np.uint8))
        return ["--raw", raw], str(naming.mask_path(raw, "sub-002"))
    table = tmp_path / "pairs.tsv"
    rows = [
        f"sub-001\t{naming.source_path(raw, 'sub-001')}\t{naming.target_path(raw, 'sub-001')}",
        f"sub-002\t{source}\t{target}",
    ]
    header = "subject\tsource\ttarget"
    if kind == "table without target column":
        header, rows = "subject\tsource\tseven", rows
        needle = "target"
    elif kind == "empty cell":
        rows[1] = f"sub-002\t{source}\t"
        needle = "line 3: column target"
    elif kind == "duplicate subject":
        rows[1] = rows[0].replace("sub-001", "001")
        needle = "sub-001 already appears on line 2"
    elif kind == "bad sex":
        header, rows = header + "\tsex", [rows[0] + "\tF", rows[1] + "\tyes"]
        needle = "'yes'"
    else:
        raise AssertionError(kind)
    table.write_text("\n".join([header, *rows]) + "\n")
    return ["--pairs", table], needle


BAD = [
    "truncated",
    "missing 7T",
    "4d",
    "folder without row",
    "mask on another grid",
    "table without target column",
    "empty cell",
    "duplicate subject",
    "bad sex",
]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, kind):
    raw = write_raw(tmp_path / "raw")
    arguments, needle = _break(raw, tmp_path, kind)
    out = tmp_path / "dataset"
    status, stdout, err = run(capsys, *arguments, "--out", out)
    assert status == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not out.exists()


def test_bad_input_on_rerun_leaves_the_dataset_as_it_was(tmp_path, capsys):
    raw, out = write_raw(tmp_path / "raw"), tmp_path / "dataset"
    assert run(capsys, "--raw", raw, "--out", out)[0] == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    source = naming.source_path(raw, "sub-002")
    source.write_bytes(source.read_bytes()[:200])  # truncated, and now stale in the output
    status, _, err = run(capsys, "--raw", raw, "--out", out)
    assert status == 2 and str(source) in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert len(discover(out)) == 2


@pytest.mark.parametrize("where", ["raw itself", "foreign folder", "file"])
def test_refuses_output_it_could_damage(tmp_path, capsys, where):
    raw = write_raw(tmp_path / "raw")
    out = {"raw itself": raw, "foreign folder": tmp_path / "mine", "file": tmp_path / "file"}[where]
    if where == "foreign folder":
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    if where == "file":
        out.write_text("x")
    status, _, err = run(capsys, "--raw", raw, "--out", out)
    assert status == 2 and err.startswith("error: ") and str(out) in err
    assert not (out / "qc").exists() if out.is_dir() else out.read_text() == "x"


def test_workers(tmp_path, capsys):
    raw, out = write_raw(tmp_path / "raw"), tmp_path / "dataset"
    status, stdout, err = run(capsys, "--raw", raw, "--out", out, "--workers", "2")
    assert status == 0, err
    assert "2 prepared" in stdout and len(discover(out)) == 2
