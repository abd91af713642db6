"""The building blocks the commands' promises rest on (fast, no training):

* checkpoints are read with the restricted unpickler even under
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, by t7synth's reader and by Lightning's loads
  through :class:`~t7synth.training.callbacks.AtomicCheckpointIO`;
* a checkpoint's network is checked on the meta device before it is allocated;
* atomic writes flush before they rename, a failed write is one :class:`UserError`
  naming the path, several outputs are renamed all or none;
* killed commands' temporaries are removed by the next run, live ones are not;
* run folders are claimed race-free;
* ``metrics.csv`` keeps exactly the history a resumed checkpoint vouches for.
"""

from __future__ import annotations

import csv
import errno
import os
import threading
from pathlib import Path

import pytest
import torch
from robust_helpers import dead_pid, malicious_checkpoint

from t7synth import files, textfiles
from t7synth.errors import UserError
from t7synth.registry import resolve
from t7synth.training import checkpoint as ckpt_io

TINY = [
    "model.net.channels=8",
    "model.net.channel_mult=[1,2]",
    "model.net.num_res_blocks=1",
    "model.net.attention_levels=[1]",
    "model.net.norm_groups=4",
]


@pytest.fixture
def force_full_unpickling(monkeypatch):
    """What a user (or an old torch) does: torch.load without weights_only runs pickled code."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def test_the_hostile_file_really_runs_code_when_loaded_naively(tmp_path, force_full_unpickling):
    # Not vacuous: the file the tests below refuse does create its marker when unpickled in full.
    marker = tmp_path / "ran"
    path = malicious_checkpoint(tmp_path / "last.ckpt", marker)
    with pytest.warns(UserWarning, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        torch.load(path, map_location="cpu")
    assert marker.exists()


def test_reader_refuses_pickled_code_even_when_the_environment_forces_full_unpickling(tmp_path, force_full_unpickling):
    marker = tmp_path / "ran"
    path = malicious_checkpoint(tmp_path / "last.ckpt", marker)
    with pytest.raises(UserError, match=r"cannot read checkpoint .*last\.ckpt"):
        ckpt_io.read_checkpoint(path)
    assert not marker.exists()


def test_lightning_loads_go_through_the_restricted_unpickler(tmp_path, force_full_unpickling):
    """--resume and the final test load checkpoints through the plugin, never in full."""
    import pickle

    from t7synth.training.callbacks import AtomicCheckpointIO

    marker = tmp_path / "ran"
    path = malicious_checkpoint(tmp_path / "best.ckpt", marker)
    for kwargs in ({}, {"map_location": "cpu"}, {"weights_only": None}, {"weights_only": False}):
        with pytest.raises(pickle.UnpicklingError):
            AtomicCheckpointIO().load_checkpoint(path, **kwargs)
    assert not marker.exists()


def test_reader_refuses_to_load_when_torch_would_not_restrict_unpickling(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt_io, "_weights_only_is_honoured", lambda: False)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"config": {}}}, path)
    with pytest.raises(UserError, match="refusing to read checkpoint .* torch >= 2.6"):
        ckpt_io.read_checkpoint(path)


def test_this_torch_honours_weights_only_under_the_environment_variable(force_full_unpickling):
    assert ckpt_io._weights_only_is_honoured()


@pytest.mark.parametrize(
    "content, message", [(b"", "the file is empty"), (b"PK\x03\x04 not really a zip", "cannot read checkpoint")]
)
def test_empty_and_garbage_checkpoints_are_one_line(tmp_path, content, message):
    path = tmp_path / "last.ckpt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        ckpt_io.read_checkpoint(path)


def _checkpoint_claiming(tmp_path, channels: int) -> Path:
    """A real tiny U-Net's weights under a config that claims ``channels``."""
    from t7synth.models.unet import UNetModule

    config = resolve("unet", None, TINY)
    model = UNetModule(config.to_dict())
    claimed = config.to_dict()
    claimed["model"]["net"]["channels"] = channels
    path = tmp_path / "claims.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {"config": claimed}}, path)
    return path


def test_a_checkpoint_claiming_a_huge_network_is_refused_before_allocating(tmp_path, monkeypatch):
    path = _checkpoint_claiming(tmp_path, 2048)
    allocated = []
    real_to_empty = torch.nn.Module.to_empty
    monkeypatch.setattr(
        torch.nn.Module, "to_empty", lambda self, **kw: allocated.append(self) or real_to_empty(self, **kw)
    )
    with pytest.raises(
        UserError, match=r"does not fit model 'unet' built from its config: .*has shape .*the model's is"
    ):
        ckpt_io.load_model(path)
    assert not allocated  # refused on the meta device, before any memory was taken


def test_load_model_rebuilds_the_same_network_through_the_meta_device(tmp_path):
    path = _checkpoint_claiming(tmp_path, 8)  # claims what it holds
    model = ckpt_io.load_model(path)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert all(not t.is_meta for t in model.state_dict().values())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


# -- atomic writes --------------------------------------------------------------------
def test_atomic_path_flushes_the_file_before_renaming_it(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(files.os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    with files.atomic_path(tmp_path / "out.csv") as tmp:
        tmp.write_text("x")
    assert events[:2] == ["fsync", "replace"]  # the data reach the disk before the name does


def test_a_failed_write_is_one_user_error_naming_the_file(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(UserError, match=r"cannot write .*scores\.csv: Permission denied"):
        with files.atomic_path(tmp_path / "scores.csv"):
            pass
    with pytest.raises(UserError, match="Permission denied"):
        files.check_writable(tmp_path / "new" / "folder")
    assert not (tmp_path / "new").exists()  # the check creates nothing


def test_a_write_error_inside_the_block_names_the_final_file(tmp_path):
    with pytest.raises(UserError, match=r"cannot write .*out\.bin: No space left on device"):
        with files.atomic_path(tmp_path / "out.bin"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_a_folder_should_be_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(UserError, match="is not a folder"):
        files.check_writable(tmp_path / "taken" / "out")
    with pytest.raises(UserError, match="cannot write"):
        with files.atomic_path(tmp_path / "taken" / "out" / "x.csv"):
            pass


def test_several_outputs_are_renamed_all_or_none(tmp_path):
    finals = [tmp_path / "a.md", tmp_path / "b.csv"]
    finals[0].write_text("old a")
    with pytest.raises(RuntimeError):
        with files.atomic_paths(*finals) as (a, b):
            a.write_text("new a")
            raise RuntimeError("the chart failed")
    assert finals[0].read_text() == "old a" and not finals[1].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md"]
    with files.atomic_paths(*finals) as (a, b):
        a.write_text("new a")
        b.unlink()  # no such output this time: a stale one must go
    finals[1].write_text("stale")
    with files.atomic_paths(*finals) as (a, b):
        a.write_text("newer a")
        b.unlink()
    assert finals[0].read_text() == "newer a" and not finals[1].exists()


# -- leftovers ------------------------------------------------------------------------
def test_stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = tmp_path / f"{files.temporary_prefix('scan', dead_pid())}abc.nii.gz"
    dead_dir = tmp_path / f"{files.temporary_prefix('sub-001', dead_pid())}xyz"
    live = tmp_path / f"{files.temporary_prefix('scan')}def.nii.gz"  # this process: still writing
    other_host = tmp_path / f".scan.t7tmp-00000000-{dead_pid()}-ghi.nii.gz"
    user_file = tmp_path / ".scan.nii.gz.tmp"  # looks temporary, is not ours
    for path in (dead, live, other_host, user_file):
        path.write_text("x")
    dead_dir.mkdir()
    (dead_dir / "anat").mkdir()
    removed = files.remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([dead, dead_dir])
    assert live.exists() and other_host.exists() and user_file.exists()


def test_stale_temporaries_can_be_limited_to_one_name(tmp_path):
    mine = tmp_path / f"{files.temporary_prefix('demo-n3', dead_pid())}a"
    other = tmp_path / f"{files.temporary_prefix('other', dead_pid())}b"
    mine.mkdir(), other.mkdir()
    assert files.remove_stale_temporaries(tmp_path, "demo-n3") == [mine]
    assert other.exists()


def test_text_files_with_a_byte_order_mark_read_as_utf8(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_bytes("\ufeffparticipant_id\tage\nsub-001\t60\n".encode())
    assert textfiles.read_text(path).startswith("participant_id")
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(UserError, match="is not UTF-8"):
        textfiles.read_text(path)


# -- run folders ----------------------------------------------------------------------
def test_version_folders_are_claimed_race_free(tmp_path, monkeypatch):
    from t7synth.training import run_dir

    base = tmp_path / "runs" / "unet"
    claimed, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        claimed.append(run_dir.new_version(base))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(p.name for p in claimed) == sorted(f"version_{i}" for i in range(8))
    # A folder taken between listing and claiming (another process) is skipped, not shared.
    monkeypatch.setattr(run_dir, "versions", lambda base: [])
    assert run_dir.new_version(base).name == "version_8"


# -- metrics.csv across a resume ------------------------------------------------------
def _write(path: Path, rows: list[dict]) -> None:
    columns = sorted({k for row in rows for k in row})
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(handle)]


def test_a_resumed_history_keeps_finished_epochs_and_drops_the_repeated_one(tmp_path):
    from t7synth.training.history import ResumePoint, RunCSVLogger

    history = [
        {"lr-Adam": 1e-3, "step": 0},
        {"epoch": 0, "step": 1, "train/loss": 0.5},
        {"epoch": 0, "step": 2, "val/psnr_brain": 20.0},
        {"lr-Adam": 5e-4, "step": 2},  # epoch 1's start: repeated by the resumed run
        {"epoch": 1, "step": 3, "train/loss": 0.4},  # after last.ckpt: repeated
        {"epoch": 0, "step": 2, "test/psnr_brain": 19.0},  # a test of an earlier launch
    ]
    run = tmp_path / "version_0"
    run.mkdir()
    _write(run / "metrics.csv", history)
    with open(run / "metrics.csv", "a") as handle:
        handle.write("1,,4,0.3")  # a row cut short by the kill (no newline)
    logger = RunCSVLogger(run, ResumePoint(epoch=0, steps=2))
    logger.log_metrics({"lr-Adam": 5e-4}, step=2)
    logger.log_metrics({"epoch": 1, "train/loss": 0.41}, step=3)
    logger.save()
    logger.log_metrics({"epoch": 1, "train/l1": 0.2}, step=4)  # a new column: rewritten
    logger.save()
    assert _rows(run / "metrics.csv") == [
        {"lr-Adam": "0.001", "step": "0"},
        {"epoch": "0", "step": "1", "train/loss": "0.5"},
        {"epoch": "0", "step": "2", "val/psnr_brain": "20.0"},
        {"lr-Adam": "0.0005", "step": "2"},
        {"epoch": "1", "step": "3", "train/loss": "0.41"},
        {"epoch": "1", "step": "4", "train/l1": "0.2"},
    ]


def test_a_new_run_starts_its_history_afresh(tmp_path):
    from t7synth.training.history import RunCSVLogger

    _write(tmp_path / "metrics.csv", [{"epoch": 0, "step": 1, "train/loss": 9.0}])  # killed before any checkpoint
    logger = RunCSVLogger(tmp_path)
    logger.log_metrics({"epoch": 0, "train/loss": 0.5}, step=1)
    logger.save()
    assert _rows(tmp_path / "metrics.csv") == [{"epoch": "0", "step": "1", "train/loss": "0.5"}]
    assert logger.log_dir == str(tmp_path)  # montages go to the run folder
