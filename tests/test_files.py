"""Atomic writes: a reader sees the old output or the complete new one, never a half."""

from __future__ import annotations

import os
import stat

import pytest

from t7synth.files import atomic_dir, atomic_path


def test_atomic_path_renames_on_success_and_keeps_the_suffix(tmp_path):
    final = tmp_path / "sub" / "scan.nii.gz"
    with atomic_path(final) as tmp:
        # Writers that pick a format from the extension must see the final one.
        assert tmp.name.endswith(".nii.gz") and tmp.parent == final.parent and tmp != final
        tmp.write_bytes(b"new")
        assert not final.exists()  # nothing visible before the block ends
    assert final.read_bytes() == b"new"
    assert [p.name for p in final.parent.iterdir()] == ["scan.nii.gz"]  # no temporary left


def test_atomic_path_leaves_the_old_file_on_error(tmp_path):
    final = tmp_path / "table.csv"
    final.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_atomic_path_output_is_readable_like_any_file(tmp_path):
    final = tmp_path / "out.txt"
    with atomic_path(final) as tmp:
        tmp.write_text("x")
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(final.stat().st_mode) == 0o666 & ~umask  # mkstemp's 0600 undone


def test_atomic_dir_replaces_a_folder_whole(tmp_path):
    final = tmp_path / "sub-001"
    final.mkdir()
    (final / "stale.nii.gz").write_text("old")
    with atomic_dir(final) as folder:
        (folder / "anat").mkdir()
        (folder / "anat" / "new.nii.gz").write_text("new")
        assert (final / "stale.nii.gz").exists()  # the old folder stays until the end
    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*")) == ["anat", "anat/new.nii.gz"]
    assert [p.name for p in tmp_path.iterdir()] == ["sub-001"]


def test_atomic_dir_leaves_the_old_folder_on_error(tmp_path):
    final = tmp_path / "dataset"
    final.mkdir()
    (final / "kept.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(final) as folder:
            (folder / "half.txt").write_text("half")
            raise KeyboardInterrupt
    assert [p.name for p in final.iterdir()] == ["kept.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]
