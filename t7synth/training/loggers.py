"""Loggers: a CSV file always, Weights & Biases when asked or possible.

``metrics.csv`` is written whatever happens to W&B, so a run can always be compared
offline. W&B defaults to online when credentials exist and offline otherwise, so a
run never stops to ask for a key or waits on a network it cannot reach. The run id is
kept in the run directory, so ``--resume`` continues the same W&B run.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from t7synth.config import Config

WANDB_ID_FILE = "wandb_id.txt"


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


def wandb_run_id(run_dir: Path) -> str:
    """The run's W&B id, created once and kept in the run directory."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    import secrets

    run_id = secrets.token_hex(4)
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def build_loggers(config: Config, run_dir: Path, mode: str) -> list:
    """CSV logger writing ``run_dir/metrics.csv``, plus a W&B logger unless disabled.

    The W&B run is grouped by experiment (or ``wandb.group``, a sweep's study) and
    tagged with the model so runs line up on a dashboard; it carries the resolved config.
    """
    from pytorch_lightning.loggers import CSVLogger

    loggers: list = [CSVLogger(
            save_dir=str(run_dir.parent.parent),
            name=run_dir.parent.name,
            version=run_dir.name,
            # Every logging step reaches the disk, so a killed run keeps its curve.
            flush_logs_every_n_steps=config.trainer.log_every_n_steps,
        )]
    if mode != "disabled":
        from pytorch_lightning.loggers import WandbLogger

        loggers.append(
            WandbLogger(
                project=config.wandb.project,
                entity=config.wandb.entity,
                name=f"{config.name}/{run_dir.name}",
                group=config.wandb.group or config.name,
                tags=[config.model.name],
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
    from pytorch_lightning.utilities import rank_zero_only

    wandb_loggers = [logger for logger in loggers if type(logger).__name__ == "WandbLogger"]
    if rank_zero_only.rank != 0 or not wandb_loggers or not rows:
        return
    from t7synth.evaluation.scores import score_names, summary_values

    summary = summary_values(rows, "test")
    names = score_names(rows)
    data = [[row["model"], row["subject"], *(float(row[name]) for name in names)] for row in rows]
    subjects = sorted({row["subject"] for row in rows})
    montages = [(s, Path(run_dir) / "samples" / f"test_{s}.png") for s in subjects]
    montages = [(s, path) for s, path in montages if path.is_file()]
    for logger in wandb_loggers:
        logger.experiment.summary.update(summary)
        logger.log_table(key="test/scores", columns=["model", "subject", *names], data=data)
        if montages:
            logger.log_image(key="test/montages", images=[str(p) for _, p in montages], caption=[s for s, _ in montages])
