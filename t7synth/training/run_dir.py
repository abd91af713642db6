"""The run folder: ``runs/<experiment>/version_N`` (or a launcher job's), and what to resume.

Under DDP every rank runs ``fit`` from the top, so the folder must come out the same on
every rank before the ranks can talk; see :mod:`t7synth.training.launch`.
"""

from __future__ import annotations

import os
from pathlib import Path

from t7synth.errors import UserError
from t7synth.run_files import CHECKPOINTS_DIR, CONFIG_FILE, LAST_CHECKPOINT, last_checkpoint, run_of_checkpoint
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
    found = [p for p in base.glob("*") if p.is_dir() and last_checkpoint(p).is_file()]
    return sorted(found, key=lambda p: (last_checkpoint(p).stat().st_mtime_ns, p.name))


def resolve_run_dir(config, resume: str | None, launch: Launch | None = None) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from (or ``None``).

    ``--resume last`` continues in the experiment's run folder whose
    ``checkpoints/last.ckpt`` was written most recently; ``--resume PATH`` continues in
    the folder the checkpoint belongs to (a new one if it is elsewhere).

    A new folder must be the same on every rank, and ranks cannot talk yet:

    * ranks that Lightning starts inherit rank 0's choice through :data:`RUN_DIR_ENV`;
    * ranks that srun or torchrun start together all derive it from the job id
      (``slurm_<SLURM_JOB_ID>``, ``torchrun_<rdzv id>``, see
      :attr:`t7synth.training.launch.Launch.run_name`); if that folder already holds
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
            raise UserError(f"--resume last: no {CHECKPOINTS_DIR}/{LAST_CHECKPOINT} under {base}")
        run_dir = candidates[-1]
        checkpoint = last_checkpoint(run_dir)
    elif resume:
        checkpoint = Path(resume).expanduser()
        if not checkpoint.is_file():
            raise UserError(f"--resume: checkpoint not found: {checkpoint}")
        run_dir = run_of_checkpoint(checkpoint)
    if inherited:
        run_dir = Path(inherited)
    if run_dir is None and launch.run_name:
        run_dir = base / launch.run_name
        last = last_checkpoint(run_dir)
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
        run_dir = new_version(base)
    return run_dir, checkpoint


def new_version(base: Path) -> Path:
    """Create and return the next free ``base/version_N``.

    Race-free: the folder is claimed by ``mkdir`` without ``exist_ok``, which exactly
    one of several processes starting together wins; the others move on to N + 1. So
    two fits of one experiment never share a folder. The folder is created empty;
    :func:`discard_if_empty` removes it again when the fit stops before writing.

    Raises:
        UserError: ``base`` cannot be created or written (read-only, a file).
    """
    from t7synth.files import make_dirs, write_error

    make_dirs(base)
    existing = versions(base)
    number = int(existing[-1].name.split("_")[-1]) + 1 if existing else 0
    while True:
        candidate = base / f"version_{number}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1
        except OSError as error:
            raise write_error(candidate, error) from None


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest parent that exists (what a refused fit must leave as is)."""
    path = Path(path)
    return next(p for p in [path, *path.parents] if p.exists())


def discard_if_empty(run_dir: Path, existed: Path) -> None:
    """Remove ``run_dir``, and the parents created for it, while they are empty.

    A fit refused before it wrote anything leaves no empty run folder behind.

    Args:
        run_dir: the run folder.
        existed: the deepest of its parents that existed before the fit (kept).
    """
    for folder in [run_dir, *run_dir.parents]:
        if folder == existed or existed not in folder.parents:
            return
        try:
            folder.rmdir()
        except OSError:  # not empty (another run's, or written), or already gone
            return


def check_resume(checkpoint: Path, config):
    """Check that ``checkpoint`` can continue ``config`` before anything is written.

    The checkpoint is read with the restricted unpickler
    (:func:`t7synth.training.checkpoint.read_checkpoint`), so Lightning never sees a
    file that would run code or that is truncated or empty; its stored config is
    compared with the requested one (only :data:`t7synth.config.RESUMABLE_KEYS` may
    differ; the new values are used); and the network is built on the meta device and
    compared with the stored tensors, so a checkpoint claiming a huge network costs no
    memory.

    Returns:
        The :class:`~t7synth.training.history.ResumePoint` where the checkpoint left off.

    Raises:
        UserError: one line: an unreadable or unsafe file, the differing keys with
            both values, or tensors that do not fit.
    """
    from t7synth.config import RESUMABLE_KEYS, resume_differences
    from t7synth.training.checkpoint import check_fits, checkpoint_config, read_checkpoint
    from t7synth.training.history import ResumePoint

    stored_checkpoint = read_checkpoint(checkpoint)
    stored = checkpoint_config(checkpoint, stored_checkpoint)
    differences = resume_differences(stored, config)
    if differences:
        shown = ", ".join(f"{key} ({old!r} in the checkpoint, {new!r} now)" for key, old, new in differences[:4])
        more = f" and {len(differences) - 4} more" if len(differences) > 4 else ""
        raise UserError(
            f"--resume {checkpoint}: the run was trained with other settings: {shown}{more}; resume with the "
            f"run's {CONFIG_FILE} (only {', '.join(RESUMABLE_KEYS)} may change) or start a new run"
        )
    check_fits(checkpoint, config, stored_checkpoint["state_dict"])
    return ResumePoint.of(stored_checkpoint)
