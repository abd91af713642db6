"""Launch detection, run folders and the environment record (``t7synth.environment``).

Every rank runs ``t7synth.fit`` from the top, before any process group exists, so the
rank-0 test and the run folder must come out right from environment variables alone.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from t7synth.errors import UserError
from t7synth.registry import resolve
from t7synth.training.hardware import trainer_hardware
from t7synth.training.launch import RUN_DIR_ENV, Launch, detect_launch
from t7synth.training.record import git_revision, write_environment
from t7synth.training.run_dir import resolve_run_dir

pytestmark = pytest.mark.ddp

SLURM_TASK = {
    "SLURM_JOB_ID": "77",
    "SLURM_JOB_NAME": "train",
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_PROCID": "3",
}
TORCHRUN_TASK = {"TORCHELASTIC_RUN_ID": "exp1", "RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "4"}


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, Launch("lightning", True, 1, None)),
        (
            {"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"},
            Launch("lightning", False, 1, None),
        ),  # Lightning's child
        ({"NODE_RANK": "1"}, Launch("lightning", False, 1, None)),  # first process of a second node
        (SLURM_TASK, Launch("slurm", False, 4, "77")),
        ({**SLURM_TASK, "SLURM_PROCID": "0"}, Launch("slurm", True, 4, "77")),
        ({**SLURM_TASK, "SLURM_JOB_NAME": "bash"}, Launch("lightning", True, 1, None)),  # interactive: not srun
        (TORCHRUN_TASK, Launch("torchrun", False, 4, "exp1")),
        ({**TORCHRUN_TASK, "TORCHELASTIC_RUN_ID": "none"}, Launch("torchrun", False, 4, None)),
    ],
)
def test_detect_launch(environ, expected):
    assert detect_launch(environ) == expected


def test_run_name_only_for_multi_process_launches():
    assert Launch("slurm", True, 8, "77").run_name == "slurm_77"
    assert Launch("torchrun", False, 4, "exp1").run_name == "torchrun_exp1"
    assert Launch("slurm", True, 1, "77").run_name is None  # one task: ordinary version_N
    assert Launch("torchrun", True, 4, None).run_name is None
    assert Launch("lightning", True, 1, None).run_name is None


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    return resolve("unet", None, [f"runs_dir={tmp_path / 'runs'}"])


def test_rank_zero_numbers_versions_and_later_ranks_inherit(config, tmp_path, monkeypatch):
    base = tmp_path / "runs" / "unet"
    (base / "version_0").mkdir(parents=True)
    (base / "slurm_12").mkdir()  # launcher-named folders do not take part in numbering
    assert resolve_run_dir(config, None, Launch("lightning", True, 1, None)) == (base / "version_1", None)
    monkeypatch.setenv(RUN_DIR_ENV, str(base / "version_1"))
    assert resolve_run_dir(config, None, Launch("lightning", False, 1, None)) == (base / "version_1", None)


def test_a_rank_that_cannot_know_the_folder_refuses_to_guess(config):
    with pytest.raises(UserError, match=RUN_DIR_ENV):
        resolve_run_dir(config, None, Launch("torchrun", False, 4, None))


def test_torchrun_ranks_agree_on_the_run_folder(config, tmp_path):
    folders = {resolve_run_dir(config, None, Launch("torchrun", rank == 0, 4, "exp1"))[0] for rank in range(4)}
    assert folders == {tmp_path / "runs" / "unet" / "torchrun_exp1"}


def test_resume_last_takes_the_most_recently_written_checkpoint(config, tmp_path):
    import os

    base = tmp_path / "runs" / "unet"
    for index, name in enumerate(["version_3", "slurm_9", "version_10"]):
        last = base / name / "checkpoints" / "last.ckpt"
        last.parent.mkdir(parents=True)
        last.write_bytes(b"")
        os.utime(last, ns=(10**18 + index * 10**9, 10**18 + index * 10**9))
    os.utime(base / "slurm_9" / "checkpoints" / "last.ckpt", ns=(2 * 10**18, 2 * 10**18))
    run_dir, checkpoint = resolve_run_dir(config, "last", Launch("slurm", True, 8, "500"))
    assert run_dir == base / "slurm_9" and checkpoint == run_dir / "checkpoints" / "last.ckpt"


def test_git_revision_reads_branch_refs_packed_refs_and_worktrees(tmp_path):
    sha = "0123456789abcdef0123456789abcdef01234567"
    checkout = tmp_path / "checkout"
    (checkout / "t7synth").mkdir(parents=True)
    git = checkout / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(sha + "\n")
    assert git_revision(checkout / "t7synth") == sha

    (git / "refs" / "heads" / "main").unlink()
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{sha} refs/heads/main\n")
    assert git_revision(checkout / "t7synth") == sha

    worktree = tmp_path / "worktree"
    (worktree / "t7synth").mkdir(parents=True)
    admin = git / "worktrees" / "wt"
    admin.mkdir(parents=True)
    (admin / "HEAD").write_text("ref: refs/heads/main\n")
    (admin / "commondir").write_text("../..\n")
    (worktree / ".git").write_text(f"gitdir: {admin}\n")
    assert git_revision(worktree / "t7synth") == sha

    (git / "HEAD").write_text("fedcba9876543210fedcba9876543210fedcba98\n")  # detached
    assert git_revision(checkout / "t7synth") == "fedcba9876543210fedcba9876543210fedcba98"
    assert git_revision(tmp_path / "elsewhere" / "t7synth") is None  # not a checkout


def test_environment_yaml_keeps_every_launch(tmp_path):
    write_environment(tmp_path, {"seed": 1, "resumed_from": None})
    write_environment(tmp_path, {"seed": 1, "resumed_from": "last.ckpt"})
    launches = yaml.safe_load((tmp_path / "environment.yaml").read_text())["launches"]
    assert [launch["resumed_from"] for launch in launches] == [None, "last.ckpt"]


def test_gpus_default_to_bf16_and_fall_back_to_fp16_without_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert trainer_hardware(1, 1, 1, None, False)["precision"] == "bf16-mixed"
    assert "strategy" not in trainer_hardware(1, 1, 1, None, False)  # one GPU: no DDP
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert trainer_hardware(2, 1, 1, None, False)["precision"] == "16-mixed"
    assert trainer_hardware(2, 1, 1, "32-true", False)["precision"] == "32-true"  # --precision wins


def test_cpu_follows_its_bf16_support_and_several_processes_use_gloo(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    hardware = trainer_hardware(0, 1, 2, None, True)
    assert hardware["precision"] == "32-true" and hardware["devices"] == 2
    assert hardware["strategy"].process_group_backend == "gloo"
    assert trainer_hardware(0, 1, 1, "bf16-mixed", False)["precision"] == "bf16-mixed"  # obeyed (with a warning)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert trainer_hardware(0, 1, 1, "auto", False)["precision"] == "bf16-mixed"


def test_resuming_with_another_seed_or_world_size_warns():
    from t7synth.training.callbacks import DataStreamCheck

    check = DataStreamCheck(seed=2)
    check._world_size = 4  # what setup() reads from the Trainer before the checkpoint loads
    with pytest.warns(UserWarning, match=r"seed 1 -> 2, processes 2 -> 4"):
        check.load_state_dict({"seed": 1, "world_size": 2})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check.load_state_dict({"seed": 2, "world_size": 4})  # same stream: silent
    assert check.state_dict() == {"seed": 2, "world_size": 4}
