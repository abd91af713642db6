"""Loggers: a CSV file always, Weights & Biases when asked or possible.

``metrics.csv`` is written whatever happens to W&B, so a run can always be compared
offline. W&B defaults to online when credentials exist and offline otherwise, so a
run never stops to ask for a key or waits on a network it cannot reach. The run id is
kept in the run directory, so ``--resume`` continues the same W&B run, and every row's
step is t7synth's own, continued from where the run left off
(:mod:`t7synth.training.wandb_steps`), so a resumed offline run syncs whole.

What a W&B run holds (:class:`t7synth.training.wandb_logger.RunWandbLogger`,
:func:`log_run_files`, :func:`log_test_results`):

* the resolved config, once (given to ``wandb.init``; Lightning's own copy of the
  module's hyperparameters, the same config under a ``config`` key, is not sent);
* every ``val/*`` and ``test/*`` series against ``epoch`` (``define_metric``), not
  against Lightning's ``trainer/global_step``, which the GAN advances twice per batch;
  the summary keeps the best validation value of each score (``val/psnr_brain.max``,
  ``val/mae.min``, the direction from :data:`t7synth.scores.COLUMNS`)
  next to the last one (``.last``);
* the identity and intensity-LUT baselines once, in the summary
  (``val/identity/psnr_brain``, ...): they are constant, so as series they would
  only double the charts (``metrics.csv`` keeps them per validation);
* a validation montage per validation, the test montages and per-subject table
  once, ``progress.png`` at the end;
* the run folder's ``config.yaml``, ``environment.yaml``, ``metrics.csv``,
  ``test_scores.csv`` and ``progress.png`` as an artifact of type ``run-files``,
  and with ``wandb.log_checkpoint: true`` the tested checkpoint as a ``model``
  artifact;
* for a sweep trial the sweep pruned, the tag ``pruned`` and ``trial/state`` in the
  summary (read from the trial record the sweep writes before stopping it, see
  :mod:`t7synth.tuning.trial`).
"""

from __future__ import annotations

import math
import netrc
import os
import secrets
from pathlib import Path
from typing import Any

import wandb
from pytorch_lightning.utilities import rank_zero_only

from t7synth.config import Config
from t7synth.errors import UserError
from t7synth.run_files import PROGRESS_FILE, RUN_FILES, WANDB_ID_FILE, montage_path
from t7synth.scores import score_names, summary_values
from t7synth.textfiles import read_text
from t7synth.training.history import RunCSVLogger
from t7synth.training.wandb_links import run_link  # noqa: F401  (the sweep's summary links trials)
from t7synth.training.wandb_logger import RunWandbLogger


def has_wandb_credentials() -> bool:
    """True when an API key is in the environment or in ``~/.netrc`` for api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(requested: str | None) -> str:
    """``online``, ``offline`` or ``disabled``; ``None`` means online only with credentials.

    ``WANDB_MODE`` in the environment wins over the default, as W&B users expect.
    """
    if requested:
        return requested
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if has_wandb_credentials() else "offline"


def check_wandb_mode(mode: str) -> None:
    """Refuse ``online`` without W&B credentials: one line now, not a prompt for an
    API key or a traceback from ``wandb.init`` after the data were prepared.

    Raises:
        UserError: naming the two ways out (log in, or run offline and sync later).
    """
    if mode == "online" and not has_wandb_credentials():
        raise UserError(
            "W&B mode online needs credentials (WANDB_API_KEY, or `wandb login`); "
            "or use --wandb offline and `wandb sync` the run folder's wandb/ later"
        )


def wandb_run_id(run_dir: Path) -> str:
    """The run's W&B id, created once and kept in the run directory."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file():
        return read_text(path).strip()

    run_id = secrets.token_hex(4)
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def is_wandb_logger(logger: Any) -> bool:
    """Whether ``logger`` is a W&B logger (Lightning's, :class:`~t7synth.training.wandb_logger.RunWandbLogger`, or a
    stand-in named ``WandbLogger`` in tests)."""
    return any(cls.__name__ == "WandbLogger" for cls in type(logger).__mro__)


def wandb_loggers(loggers) -> list:
    """The W&B loggers among ``loggers`` (``trainer.loggers``): none when W&B is off."""
    return [logger for logger in loggers if is_wandb_logger(logger)]


def build_loggers(config: Config, run_dir: Path, mode: str, resume=None) -> list:
    """CSV logger writing ``run_dir/metrics.csv``, plus a W&B logger unless disabled.

    ``resume`` (a :class:`~t7synth.training.history.ResumePoint`) says where a resumed
    run's checkpoint left off, so that ``metrics.csv`` keeps the history up to it.

    The W&B run is grouped by experiment (or ``wandb.group``, a sweep's study) and
    tagged with the model so runs line up on a dashboard; it carries the resolved config.
    """

    loggers: list = [RunCSVLogger(run_dir, resume)]
    if mode != "disabled":
        loggers.append(
            RunWandbLogger(
                run_dir,
                project=config.wandb.project,
                entity=config.wandb.entity,
                name=f"{config.name}/{run_dir.name}",
                group=config.wandb.group or config.name,
                tags=list(dict.fromkeys([config.model.name, *config.wandb.tags])),
                notes=config.wandb.notes,
                job_type=config.wandb.job_type,
                save_dir=str(run_dir),
                id=wandb_run_id(run_dir),
                resume="allow",
                offline=mode == "offline",
                config=config.to_dict(),
            )
        )
    return loggers


def log_test_results(loggers: list, rows: list[dict], run_dir: Path) -> None:
    """Log a finished test to W&B so runs compare on a dashboard.

    For every W&B logger this logs three things:

    * the run summary: mean and SD of each test score (``test/psnr_brain``,
      ``test/psnr_brain_sd``, ``test/identity/psnr_brain``, …), so a project's runs
      table sorts and filters by them;
    * a ``wandb.Table`` ``test/scores`` with one row per subject and model (the
      model and both references);
    * the montages ``samples/test_<subject>.png`` as one gallery, ``test/montages``.

    The montages are logged as images, not as a column of the table, because offline
    runs store images inside tables as the bare word "Image" (wandb/wandb#4611).
    Only rank 0 logs. Other ranks and runs without W&B return at once.

    Args:
        loggers: ``trainer.loggers``.
        rows: ``model.test_rows`` (``model``, ``subject`` and the scores).
        run_dir: the run directory that holds ``samples/``.
    """

    targets = wandb_loggers(loggers)
    if rank_zero_only.rank != 0 or not targets or not rows:
        return

    summary = summary_values(rows, "test")
    names = score_names(rows)
    data = [[row["model"], row["subject"], *(float(row[name]) for name in names)] for row in rows]
    subjects = sorted({row["subject"] for row in rows})
    montages = [(s, montage_path(run_dir, "test", s)) for s in subjects]
    montages = [(s, path) for s, path in montages if path.is_file()]
    for logger in targets:
        logger.experiment.summary.update(summary)
        logger.log_table(key="test/scores", columns=["model", "subject", *names], data=data)
        if montages:
            logger.log_image(
                key="test/montages", images=[str(p) for _, p in montages], caption=[s for s, _ in montages]
            )


def log_run_files(
    loggers: list, run_dir: Path, checkpoint: str | Path | None = None, checkpoint_epoch: int | None = None
) -> None:
    """Save the run folder's files (:data:`RUN_FILES`) and, optionally, a checkpoint with the W&B run.

    Called once at the end of ``fit``. ``progress.png`` is also logged as an image
    (``progress``). The files go in one artifact of type ``run-files``, named
    ``run-<id>-files``; a checkpoint in one of type ``model``, ``model-<id>``, with
    the alias ``best`` (or ``last``) and its epoch in the metadata. The checkpoint is
    added by reference to the file (W&B's ``immutable`` policy), not copied into W&B's
    staging folder: it can be gigabytes, so an offline run's checkpoint must stay in
    the run folder until ``wandb sync``. Only rank 0 logs.

    Args:
        loggers: ``trainer.loggers``.
        run_dir: the run folder.
        checkpoint: the checkpoint to save (``wandb.log_checkpoint``), or ``None``.
        checkpoint_epoch: its epoch (0-based), for the metadata.
    """

    targets = wandb_loggers(loggers)
    if rank_zero_only.rank != 0 or not targets:
        return

    run_dir = Path(run_dir)
    files = [run_dir / name for name in RUN_FILES if (run_dir / name).is_file()]
    for logger in targets:
        run = logger.experiment
        if (run_dir / PROGRESS_FILE).is_file():
            logger.log_image(key="progress", images=[str(run_dir / PROGRESS_FILE)])
        artifact = wandb.Artifact(f"run-{run.id}-files", type="run-files", description=f"run folder {run_dir}")
        for path in files:
            artifact.add_file(str(path), name=path.name)
        run.log_artifact(artifact)
        if checkpoint is not None:
            checkpoint = Path(checkpoint)
            model = wandb.Artifact(
                f"model-{run.id}", type="model", metadata={"epoch": checkpoint_epoch, "file": checkpoint.name}
            )
            model.add_file(str(checkpoint), name=checkpoint.name, policy="immutable")
            run.log_artifact(model, aliases=["latest", checkpoint.stem])


def wandb_rows(frame) -> list[list]:
    """A DataFrame's rows for ``wandb.Table(data=...)``: numbers stay numbers, missing
    values (NaN, ``pd.NA``) become ``None``, numpy scalars Python ones."""

    rows = []
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            if hasattr(value, "item"):
                value = value.item()
            if value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ == "NAType":
                value = None
            cells.append(value)
        rows.append(cells)
    return rows
