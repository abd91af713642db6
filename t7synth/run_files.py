"""The files of a run folder (``runs/<experiment>/version_N``): their names, readers and writers.

One module names every file a run folder holds, so that ``fit``, ``export``,
``predict --ckpt``, ``compare``, ``sweep`` and the W&B logger agree on them by
construction rather than by spelling. It sits low in the layers (beside the score
vocabulary), so every stage may use it; it imports nothing heavier than
:mod:`t7synth.config` and :mod:`t7synth.scores`.

A run folder::

    config.yaml          the resolved config (written before training starts)
    environment.yaml     seed, command, versions, git revision per launch
    metrics.csv          the history: one row per logging call, kept across resumes
    progress.png         the training curves drawn from metrics.csv
    test_scores.csv      per-subject test scores (model, identity, LUT rows)
    samples/             validation and test montages, samples/test_spectra.png
    checkpoints/         last.ckpt (every epoch) and best.ckpt (highest val/psnr_brain)
    wandb_id.txt         the W&B run id, so a resume continues the same W&B run
    wandb/               W&B's own files
    trial.json           a sweep trial's record (sweeps only)

An ``evaluate`` output folder holds ``config.yaml`` (the same name and format), its
summary :data:`EVALUATE_SCORES_FILE` and its per-subject :data:`EVALUATE_SUBJECTS_FILE`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from t7synth.config import load_yaml, save_yaml
from t7synth.errors import UserError
from t7synth.files import atomic_path
from t7synth.scores import REPORT_COLUMNS, format_report
from t7synth.textfiles import parse_int, read_json, read_table

CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.yaml"
METRICS_FILE = "metrics.csv"
#: Series of ``metrics.csv`` that are neither losses nor scores: each epoch's wall time
#: (training and validation) and the optimiser steps skipped for a non-finite loss.
EPOCH_TIME = "train/epoch_time"
SKIPPED_STEPS = "train/skipped_steps"
PROGRESS_FILE = "progress.png"
#: The test's per-subject scores (``training.callbacks.TestScores`` writes it at the end
#: of ``fit``'s test); a run folder that holds it is finished (``fit --fold all`` skips it).
TEST_SCORES_FILE = "test_scores.csv"
#: Who was in which split (``subject, site, split``), written by
#: :func:`t7synth.data.folds.write_split_table`.
SPLIT_FILE = "split.tsv"
SAMPLES_DIR = "samples"
#: The test subjects' power spectra, beside the test montages.
TEST_SPECTRA_FILE = f"{SAMPLES_DIR}/test_spectra.png"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_SUFFIX = ".ckpt"
#: Checkpoint stems (Lightning's ``ModelCheckpoint(filename=...)`` adds the suffix).
LAST, BEST = "last", "best"
LAST_CHECKPOINT = LAST + CHECKPOINT_SUFFIX
BEST_CHECKPOINT = BEST + CHECKPOINT_SUFFIX
WANDB_ID_FILE = "wandb_id.txt"
#: The highest W&B step a run wrote (t7synth.training.wandb_steps): a resumed run continues after it.
WANDB_STEP_FILE = "wandb_step.txt"
WANDB_DIR = "wandb"
#: A trial's record in its run folder, written by the sweep: the study, the trial's
#: number, its state (Optuna's, lower case: ``complete``, ``pruned``, ``fail``), its
#: objective, its sampled values and the last epoch it reported. The W&B logger of a trial the sweep prunes reads it
#: when Lightning stops on the sweep's SIGTERM, and tags its run ``pruned``
#: (:class:`t7synth.training.wandb_logger.RunWandbLogger`); ``compare`` and the study's
#: summary read the states from Optuna, this file keeps them with the run.
TRIAL_FILE = "trial.json"
#: The files of a run folder saved with its W&B run (those that exist), in the
#: ``run-files`` artifact: enough to ``compare`` the run from the artifact alone.
RUN_FILES = (CONFIG_FILE, ENVIRONMENT_FILE, METRICS_FILE, TEST_SCORES_FILE, PROGRESS_FILE)

#: ``evaluate``'s output folder: the summary (one row per row kind) and the per-subject
#: table of the predictions (not ``metrics.csv``: that name is a run's history).
EVALUATE_SCORES_FILE = "scores.csv"
EVALUATE_SUBJECTS_FILE = "subject_scores.csv"
#: A sweep study folder's table of trials (:func:`t7synth.tuning.report.trials_table`).
STUDY_TABLE_FILE = "trials.csv"


def checkpoint_dir(run_dir: str | Path) -> Path:
    """``run_dir/checkpoints``."""
    return Path(run_dir) / CHECKPOINTS_DIR


def last_checkpoint(run_dir: str | Path) -> Path:
    """``run_dir/checkpoints/last.ckpt`` (whether or not it exists)."""
    return checkpoint_dir(run_dir) / LAST_CHECKPOINT


def best_checkpoint(run_dir: str | Path) -> Path:
    """``run_dir/checkpoints/best.ckpt`` (whether or not it exists)."""
    return checkpoint_dir(run_dir) / BEST_CHECKPOINT


def run_of_checkpoint(checkpoint: str | Path) -> Path | None:
    """The run folder a checkpoint sits in (``.../version_N/checkpoints/x.ckpt``), else ``None``."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS_DIR else None


def montage_path(run_dir: str | Path, stage: str, subject: str, epoch: int = 0) -> Path:
    """A montage: ``samples/val_epoch007_sub-001.png`` or ``samples/test_sub-001.png``."""
    name = f"val_epoch{epoch:03d}_{subject}.png" if stage == "val" else f"test_{subject}.png"
    return Path(run_dir) / SAMPLES_DIR / name


def write_trial_record(run_dir: Path, record: dict) -> Path:
    """Write ``run_dir/trial.json`` atomically (the folder is created if needed)."""
    path = Path(run_dir) / TRIAL_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return path


def read_trial_record(run_dir: Path) -> dict:
    """``run_dir/trial.json`` as a dict; empty when the run is no sweep trial (or it is
    unreadable: damaged, binary, or nested too deep, all refused by :func:`~t7synth.textfiles.read_json`)."""
    path = Path(run_dir) / TRIAL_FILE
    try:
        record = read_json(path) if path.is_file() else {}
    except UserError:
        return {}
    return record if isinstance(record, dict) else {}


# -- metrics.csv ---------------------------------------------------------------------------
def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The rows of a Lightning ``metrics.csv``, values as floats (``nan`` where empty).

    Lightning's CSV logger rewrites the file when a new column appears, so a read can
    meet a half-written file (a sweep reads it while the trial runs); cells that do not
    parse are read as ``nan`` and read again at the next call. An epoch is never cut
    to a fraction or infinity, so such an epoch is a damaged file.

    Raises:
        UserError: a binary or non-UTF-8 file, or an epoch that is not a whole number
            of at least zero, naming the file and line.
    """
    if not Path(path).is_file():
        return []
    table = read_table(path, complete=False)
    rows = []
    for line, row in zip(table.lines, table.rows):
        parsed = {}
        for key, value in row.items():
            if key is None:
                continue
            if key == "epoch" and value not in ("", None):
                parsed[key] = float(parse_int(value, f"{path}, line {line}: epoch"))
                continue
            try:
                parsed[key] = float(value) if value not in ("", None) else math.nan
            except ValueError:
                parsed[key] = math.nan
        rows.append(parsed)
    # Lightning's LearningRateMonitor logs at an epoch's start without the epoch
    # column; such a row belongs to the epoch of the next row that has one.
    following = math.nan
    for row in reversed(rows):
        if math.isnan(row.get("epoch", math.nan)):
            row["epoch"] = following
        else:
            following = row["epoch"]
    return [row for row in rows if not math.isnan(row["epoch"])]


def per_epoch(rows: Sequence[dict[str, float]], key: str, how: str = "last") -> tuple[list[int], list[float]]:
    """``(epochs, values)`` of ``key``: the epoch's ``last`` or ``mean`` logged value.

    ``last`` keeps the most recent value of an epoch, so a run resumed from ``last.ckpt``
    (which repeats nothing, but may log an epoch's LR again) shows one point per epoch.
    """
    by_epoch: dict[int, list[float]] = {}
    for row in rows:
        value = row.get(key, math.nan)
        if not math.isnan(value):
            by_epoch.setdefault(int(row["epoch"]), []).append(value)
    epochs = sorted(by_epoch)
    if how == "mean":
        return epochs, [float(np.mean(by_epoch[e])) for e in epochs]
    return epochs, [by_epoch[e][-1] for e in epochs]


def last_value(rows: Sequence[dict[str, float]], key: str) -> float | None:
    """The last logged value of ``key``, or ``None``."""
    values = [row[key] for row in rows if not math.isnan(row.get(key, math.nan))]
    return values[-1] if values else None


# -- config.yaml ---------------------------------------------------------------------------
def write_config(folder: str | Path, config: Mapping[str, Any]) -> Path:
    """Write ``folder/config.yaml`` (a resolved config as plain types), atomically."""
    path = Path(folder) / CONFIG_FILE
    save_yaml(dict(config), path)
    return path


def read_config(folder: str | Path) -> dict[str, Any] | None:
    """``folder/config.yaml`` as a dict, or ``None`` when the folder has none.

    Raises:
        UserError: the file exists but is no YAML mapping (from :func:`t7synth.config.load_yaml`).
    """
    path = Path(folder) / CONFIG_FILE
    return load_yaml(path) if path.is_file() else None


# -- the test report -----------------------------------------------------------------------
def format_test_report(
    rows: Sequence[Mapping[str, Any]], model_name: str, checkpoint: str | None, run_dir: Path
) -> str:
    """The table ``fit`` prints: the model's test scores next to both references, and
    where the run folder keeps the per-subject scores, montages and spectra."""
    subjects = sorted({r["subject"] for r in rows})
    heading = f"Test split: {len(subjects)} held-out subjects, checkpoint {checkpoint or 'final weights'}"
    report = format_report(rows, f"{model_name} (synthetic 7T)", REPORT_COLUMNS, heading)
    montages = montage_path(run_dir, "test", "<subject>")
    report += f"\nPer-subject scores: {Path(run_dir) / TEST_SCORES_FILE}\nMontages: {montages}"
    if (Path(run_dir) / TEST_SPECTRA_FILE).is_file():
        report += f"\nPower spectra: {Path(run_dir) / TEST_SPECTRA_FILE}"
    return report
