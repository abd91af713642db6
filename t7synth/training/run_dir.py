"""The run folder: ``runs/<experiment>/version_N`` (or a launcher job's), and what to resume.

Under DDP every rank runs ``fit`` from the top, so the folder must come out the same on
every rank before the ranks can talk; see :mod:`t7synth.training.launch`.
"""

from __future__ import annotations

import os
from pathlib import Path

from t7synth.errors import UserError
from t7synth.training.launch import RUN_DIR_ENV, Launch, detect_launch


def versions(base: Path) -> list[Path]:
    """Existing ``version_N`` folders of an experiment, in order of N."""
    found = [p for p in base.glob("version_*") if p.is_dir() and p.name.split("_")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("_")[-1]))


def resumable_runs(base: Path) -> list[Path]:
    """Run folders of an experiment that hold ``checkpoints/last.ckpt``, oldest write first.

    Folders are ``version_N`` or, for runs that srun/torchrun started on several
    processes, ``slurm_<job>``/``torchrun_<id>``; their numbers do not order them, so
    the time ``last.ckpt`` was written does (ties broken by name, so every rank that
    reads the same folder agrees).
    """
    found = [p for p in base.glob("*") if p.is_dir() and (p / "checkpoints" / "last.ckpt").is_file()]
    return sorted(found, key=lambda p: ((p / "checkpoints" / "last.ckpt").stat().st_mtime_ns, p.name))


def resolve_run_dir(config, resume: str | None, launch: Launch | None = None) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from (or ``None``).

    ``--resume last`` continues in the experiment's run folder whose
    ``checkpoints/last.ckpt`` was written most recently; ``--resume PATH`` continues in
    the folder the checkpoint belongs to (a new one if it is elsewhere).

    A new folder must be the same on every rank, and ranks cannot talk yet:

    * ranks that Lightning starts inherit rank 0's choice through :data:`RUN_DIR_ENV`;
    * ranks that srun or torchrun start together all derive it from the job id
      (``slurm_<SLURM_JOB_ID>``, ``torchrun_<rdzv id>``, see
      :attr:`t7synth.environment.Launch.run_name`); if that folder already holds
      ``checkpoints/last.ckpt`` the job was requeued and continues from it;
    * a user may set :data:`RUN_DIR_ENV` on every node;
    * otherwise rank 0 (a single process, or the first of a Lightning launch) takes
      the next free ``version_N``. Any other rank refuses to guess.

    Args:
        config: the resolved config (``runs_dir``, ``name``).
        resume: ``None``, ``"last"`` or a checkpoint path.
        launch: how this process was started; default :func:`detect_launch`.
    """
    launch = launch or detect_launch()
    base = Path(config.runs_dir) / config.name
    inherited = os.environ.get(RUN_DIR_ENV)
    checkpoint: Path | None = None
    run_dir: Path | None = None
    if resume == "last":
        candidates = resumable_runs(base)
        if not candidates:
            raise UserError(f"--resume last: no checkpoints/last.ckpt under {base}")
        run_dir = candidates[-1]
        checkpoint = run_dir / "checkpoints" / "last.ckpt"
    elif resume:
        checkpoint = Path(resume).expanduser()
        if not checkpoint.is_file():
            raise UserError(f"--resume: checkpoint not found: {checkpoint}")
        run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    if inherited:
        run_dir = Path(inherited)
    if run_dir is None and launch.run_name:
        run_dir = base / launch.run_name
        last = run_dir / "checkpoints" / "last.ckpt"
        if checkpoint is None and last.is_file():
            # The job's own folder already has a checkpoint: SLURM requeued this job
            # (preemption, node failure, ``--requeue``). Continue it, never restart it.
            checkpoint = last
    if run_dir is None:
        if not launch.rank_zero:
            raise UserError(
                f"this rank was started by {launch.launcher} without a run folder it can share with rank 0: "
                f"set {RUN_DIR_ENV} to the same folder on every node, or launch with srun or torchrun --rdzv-id"
            )
        existing = versions(base)
        number = int(existing[-1].name.split("_")[-1]) + 1 if existing else 0
        run_dir = base / f"version_{number}"
    return run_dir, checkpoint
