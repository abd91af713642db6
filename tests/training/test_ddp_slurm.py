"""``experiments/slurm/*.sbatch``: valid bash, and the Trainer its ``srun`` line produces.

There is no SLURM cluster and no GPU here, so the test is built from the two halves
that can be checked honestly:

1. the script is run by bash for real, with the variables sbatch would set and a fake
   ``srun`` on ``PATH`` that records its arguments: that is the exact command every
   task would run;
2. those arguments go through t7synth's own parser and :func:`t7synth.trainer_hardware`
   (CUDA reported available, so the GPU branch runs), and a Trainer is built from the
   result inside the environment srun gives task 5 of 8. The accelerator is then
   swapped to ``cpu``, since Lightning would otherwise look for four real GPUs; the
   cluster environment, ranks, world size and node count it checks do not depend on
   the accelerator.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers import REPO
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.strategies import DDPStrategy

from t7synth import fit
from t7synth.training.hardware import trainer_hardware
from t7synth.training.launch import RUN_DIR_ENV
from t7synth.training.run_dir import resolve_run_dir

pytestmark = pytest.mark.ddp

SCRIPTS = sorted((REPO / "experiments" / "slurm").glob("*.sbatch"))

#: What srun sets for task 5 of a 2-node x 4-task job (the second node's second GPU).
TASK_5_OF_8 = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "t7synth",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS": "8",
    "SLURM_NTASKS_PER_NODE": "4",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_NODELIST": "gpu[01-02]",
}


def test_there_is_an_sbatch_script_and_bash_parses_it():
    assert SCRIPTS
    for script in SCRIPTS:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


def _srun_command(tmp_path: Path, *extra: str, **variables: str) -> list[str]:
    """Run the sbatch script under bash with a recording ``srun``; return its arguments."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    recorded = tmp_path / "srun_args"
    (fake_bin / "srun").write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {recorded}\n')
    (fake_bin / "srun").chmod(0o755)
    env = {
        "PATH": f"{fake_bin}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS_PER_NODE": "4",
        **variables,
    }
    result = subprocess.run(
        ["bash", str(REPO / "experiments" / "slurm" / "train.sbatch"), *extra], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return recorded.read_text().splitlines()


def test_srun_line_passes_gpus_per_node_and_nodes_to_fit(tmp_path):
    command = _srun_command(
        tmp_path, "--max-epochs", "3", DATA="/data/paired", CONFIG="experiments/paper_gan_unet.yaml"
    )
    assert command[0] == "--kill-on-bad-exit=1"
    assert command[2:4] == ["-m", "t7synth.fit"]
    args = fit.build_parser().parse_args(command[4:])
    assert (args.gpus, args.nodes) == (4, 2)  # --ntasks-per-node=4, --nodes=2
    assert args.config == "experiments/paper_gan_unet.yaml" and args.data == "/data/paired"
    assert args.max_epochs == 3 and args.resume is None


def test_srun_line_resumes_when_asked(tmp_path):
    args = fit.build_parser().parse_args(_srun_command(tmp_path, RESUME="last", SLURM_NTASKS_PER_NODE="2(x2)")[4:])
    assert args.resume == "last" and args.gpus == 2


def test_slurm_task_builds_a_ddp_trainer_over_all_nodes(tmp_path, monkeypatch):
    args = fit.build_parser().parse_args(_srun_command(tmp_path)[4:])
    for name in ("LOCAL_RANK", "RANK", "NODE_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", RUN_DIR_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in TASK_5_OF_8.items():
        monkeypatch.setenv(name, value)

    with monkeypatch.context() as cuda:
        cuda.setattr(torch.cuda, "is_available", lambda: True)
        cuda.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
        hardware = trainer_hardware(args.gpus, args.nodes, args.cpus, None, find_unused=False)
    assert hardware["accelerator"] == "gpu" and hardware["precision"] == "bf16-mixed"
    assert (hardware["devices"], hardware["num_nodes"]) == (4, 2)
    assert isinstance(hardware["strategy"], DDPStrategy)
    assert hardware["strategy"].process_group_backend is None  # Lightning picks NCCL on GPUs

    # Building a DDP Trainer sets Lightning's process-wide rank (rank_zero_only.rank) to
    # this task's 5; put it back afterwards, or later tests in this process would log
    # nothing, believing they are not rank 0.
    from lightning_utilities.core.rank_zero import (
        rank_zero_only as utils_rank_zero_only,
    )
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    for holder in (rank_zero_only, utils_rank_zero_only):
        monkeypatch.setattr(holder, "rank", getattr(holder, "rank", 0))
    # SLURMEnvironment exports the address and port it derives; set-then-delete makes
    # monkeypatch remember them as absent and remove them again afterwards.
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    trainer = pl.Trainer(
        **{**hardware, "accelerator": "cpu"}, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    assert environment.creates_processes_externally  # srun started the ranks; Lightning starts none
    assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (2, 4, 8)
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank) == (5, 1, 1)
    assert environment.main_address == "gpu01"
    environment.validate_settings(num_devices=4, num_nodes=2)  # tasks per node == GPUs per node
    with pytest.raises(ValueError, match="ntasks-per-node"):
        environment.validate_settings(num_devices=2, num_nodes=2)  # a --gpus that disagrees is refused


def test_slurm_ranks_agree_on_the_run_folder(tmp_path, monkeypatch):
    from t7synth.registry import resolve

    for name in ("LOCAL_RANK", "RANK", "NODE_RANK", RUN_DIR_ENV, "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    config = resolve("unet", None, [f"runs_dir={tmp_path / 'runs'}"])
    folders = []
    for rank in ("0", "5"):
        monkeypatch.setenv("SLURM_PROCID", rank)
        for name, value in TASK_5_OF_8.items():
            if name != "SLURM_PROCID":
                monkeypatch.setenv(name, value)
        folders.append(resolve_run_dir(config, None))
    assert folders[0] == folders[1] == (tmp_path / "runs" / "unet" / "slurm_4242", None)

    # A requeued job (same id) finds its checkpoint and continues instead of restarting.
    last = tmp_path / "runs" / "unet" / "slurm_4242" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    assert resolve_run_dir(config, None) == (last.parent.parent, last)
