"""``fit --fold I|all``: the folds of a cross-validation, each a run of its own.

Fold ``I`` of experiment ``<name>`` runs into ``runs/<name>/fold_<I>/version_N``: its
config is the experiment's with ``data.fold = I`` and the name ``<name>/fold_<I>``,
and its W&B runs are grouped under ``<name>`` (unless ``wandb.group`` says otherwise),
so the folds sit together on the dashboard and ``compare runs/<name>`` finds them.
Which subjects each fold holds out is :mod:`t7synth.data.folds`'s business.

``--fold all`` runs the folds one after another in this process and skips every fold
that already has a finished run (one whose test scores were written) and resumes a
fold killed mid-training from its ``last.ckpt``, so a killed cross-validation is
continued by running the same command again. On a cluster, one
fold per array task (``experiments/slurm/cross_validation.sbatch``) does the same in
parallel.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from t7synth.data.datamodule import resolve_root
from t7synth.data.folds import fold_count, fold_name
from t7synth.data.layout import discover
from t7synth.errors import UserError
from t7synth.run_files import TEST_SCORES_FILE
from t7synth.training.run_dir import resumable_runs, versions
from t7synth.training.trainer import FitOptions, FitResult, fit


def folds_of(config) -> int:
    """K of ``config``'s cross-validation (``folds: 0`` by site: the number of sites).

    Raises:
        UserError: ``data.folds`` not set, or what :func:`t7synth.data.folds.fold_count` refuses.
    """
    if config.data.folds is None:
        raise UserError("--fold needs a cross-validation: set data.folds (and data.fold_by) in the config")
    return fold_count(discover(resolve_root(config)), config.data.folds, config.data.fold_by)


def fold_config(config, fold: int):
    """``config`` for fold ``fold``: ``data.fold``, the name ``<name>/fold_<I>``, the W&B group ``<name>``."""
    folded = copy.deepcopy(config)
    folded.data.fold = fold
    folded.wandb.group = config.wandb.group or config.name
    folded.name = f"{config.name}/{fold_name(fold)}"
    return folded


def finished_runs(folder: Path) -> list[Path]:
    """The run folders under a fold's ``folder`` that finished, oldest first: ``version_N``
    in order of N, then launcher-named ones (``slurm_<job>``, a multi-task job's) by name."""
    folder = Path(folder)
    named = sorted(p for p in folder.glob("*") if p.is_dir() and p not in versions(folder))
    # Finished: its test scores are written (run_files.TEST_SCORES_FILE).
    return [run for run in [*versions(folder), *named] if (run / TEST_SCORES_FILE).is_file()]


def finished_run(config) -> Path | None:
    """The first run folder of ``config`` (a fold's) that finished, or ``None``."""
    found = finished_runs(Path(config.runs_dir) / config.name)
    return found[0] if found else None


def fit_runs(
    config,
    options: FitOptions,
    callbacks: Sequence = (),
    fold: str | None = None,
    init_weights: dict | None = None,
    say=print,
) -> list[FitResult]:
    """``fit``'s one library call: one run, or the folds ``--fold`` names (:func:`fit_folds`).

    Raises:
        UserError: ``--init`` with ``--resume`` (a new run from given weights, or the
            continuation of one: not both); see :func:`fit_folds`.
    """
    if init_weights is not None and options.resume:
        raise UserError("--init starts a new run from given weights; --resume continues one: give one of them")
    if fold is None:
        return [fit(config, options, callbacks, init_weights)]
    return fit_folds(config, fold, options, callbacks, init_weights, say)


def fit_folds(
    config,
    fold: str,
    options: FitOptions | None = None,
    callbacks: Sequence = (),
    init_weights: dict | None = None,
    say=print,
) -> list[FitResult]:
    """Run fold ``fold`` (an index) or ``all`` of them; see the module docstring.

    Args:
        config: the resolved experiment config (``data.folds`` set).
        fold: ``"all"`` or a fold index as text.
        options, callbacks, init_weights: as :func:`t7synth.training.trainer.fit`.
        say: where a skipped fold's line goes.

    Returns:
        The results of the folds that ran now.

    Raises:
        UserError: no cross-validation in the config, a fold index out of range.
    """
    options = options or FitOptions()
    count = folds_of(config)
    if fold == "all":
        chosen = list(range(count))
    else:
        try:
            chosen = [int(fold)]
        except ValueError:
            raise UserError(f"--fold {fold!r}: a fold number (0..{count - 1}) or all") from None
        if not 0 <= chosen[0] < count:
            raise UserError(f"--fold {fold}: the cross-validation has {count} folds (0..{count - 1})")
    if options.resume and len(chosen) > 1:
        raise UserError("--resume applies to one fold: give --fold I")
    results = []
    for index in chosen:
        folded = fold_config(config, index)
        done = finished_run(folded) if fold == "all" else None
        if done is not None:
            say(f"fold {index}: finished in {done}, skipped")
            continue
        resume = options.resume
        if fold == "all" and resume is None and resumable_runs(Path(folded.runs_dir) / folded.name):
            resume = "last"  # killed mid-training: continue it
        results.append(fit(folded, dataclasses.replace(options, resume=resume), callbacks, init_weights))
    return results
