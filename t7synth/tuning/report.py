"""What a study leaves behind after every sweep: ``trials.csv``, plots, the best trial, W&B.

Written by every worker when it ends (also when it only continued a finished study),
so the files always describe the whole study, all workers' trials included.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
import wandb
from matplotlib.ticker import MaxNLocator
from optuna.visualization import matplotlib as plots

from t7synth.files import atomic_path, exclusive_lock
from t7synth.plotting import pyplot, save_figure
from t7synth.run_files import STUDY_TABLE_FILE, WANDB_ID_FILE
from t7synth.scores import COLUMNS
from t7synth.textfiles import read_text
from t7synth.training.loggers import run_link, wandb_mode, wandb_rows
from t7synth.tuning.baselines import draw_baselines, label, study_baselines, trial_baselines
from t7synth.tuning.distinct import DUPLICATE_ATTR
from t7synth.tuning.summary_run import summary_run_id

#: Complete trials needed before ``importances.png`` is drawn. Optuna's default
#: evaluator (PED-ANOVA, ``target_quantile=0.1``) is stable with "at least 5 trials
#: above target_quantile" (``optuna.importance.PedAnovaImportanceEvaluator``'s note):
#: 5 / 0.1 = 50 complete trials. With fewer, its bars rank parameters by noise.
MIN_TRIALS_FOR_IMPORTANCES = 50


def write_summary(
    study, sweep, root: Path, wandb_mode_setting: str | None, base, report: Callable[[str], None] = print
) -> None:
    """``trials.csv``, the study's plots, the best trial, and W&B.

    Written after every sweep (also when it only continued a finished study), so the
    files always describe the whole study, all workers' trials included.
    """

    table = trials_table(study, sweep.metric)
    with atomic_path(root / STUDY_TABLE_FILE) as tmp:
        table.to_csv(tmp, index=False)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    baselines = study_baselines(
        {kind: (None if value != value else value) for kind, value in row.items()}
        for row in table[["identity", "lut"]].to_dict("records")
    )
    images = plot_study(study, root, sweep.metric, report, baselines)
    if not complete:
        report(f"no trial completed; see {root / STUDY_TABLE_FILE}")
        return
    best = study.best_trial
    report(
        f"best: trial {best.number}, {sweep.metric} {best.value:.3f}"
        + "".join(f"; {label(kind)} {value:.3f}" for kind, value in baselines.items())
    )
    for key, value in best.params.items():
        report(f"  {key}: {value}")
    report(f"  run: {best.user_attrs.get('run_dir')}")
    # Only complete trials reached their test; compare refuses runs without one.
    ranked = table[table["rank"].notna()].sort_values("rank").head(5)
    report(f"compare the best {len(ranked)}: python -m t7synth.compare " + " ".join(ranked["run_dir"]))
    # One summary run per study, updated by every worker: one worker at a time on this
    # machine (W&B refuses a second process on a run id that is in use). The trials and
    # the files above are complete whatever W&B answers, so its failure is a warning.
    with exclusive_lock(root / STUDY_TABLE_FILE):
        try:
            log_summary_to_wandb(table, images, sweep, root, wandb_mode_setting, base, baselines, len(study.trials))
        except Exception as error:  # noqa: BLE001 - any W&B failure: the sweep's results stand
            report(f"warning: the study's W&B summary run was not updated: {str(error).splitlines()[0]}")


def trials_table(study, metric: str | None = None):
    """Every trial of the study as a table with numeric columns (``trials.csv``, W&B).

    Columns: ``number``; ``state`` (Optuna's, lower case: ``complete``, ``pruned``,
    ``fail``, ``running``); ``value`` (the objective, the best validation value; empty
    unless complete); ``rank`` (1 = best complete trial, in the study's direction;
    ``compare`` reads it to pick a study's best trials); ``epochs`` (validations
    reported); one ``params_<key>`` column per sampled config key; ``duration_s``;
    ``run_dir``; ``wandb_run`` (the trial's W&B run id, from its run folder); with
    ``metric``, ``identity`` and ``lut``: the trial's baselines of that metric
    (:mod:`t7synth.tuning.baselines`), so a trial below the 3T input shows. Repeats
    of an earlier trial's parameters (:mod:`t7synth.tuning.distinct`) have the state
    ``duplicate``.
    """

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    maximise = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranks = {t.number: index + 1 for index, t in enumerate(sorted(complete, key=lambda t: t.value, reverse=maximise))}
    params = sorted({key for trial in trials for key in trial.params})
    rows = []
    for trial in trials:
        run_dir = trial.user_attrs.get("run_dir", "")
        id_file = Path(run_dir) / WANDB_ID_FILE if run_dir else None
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        references = trial_baselines(run_dir, metric) if metric else {}
        rows.append(
            {
                "number": trial.number,
                "state": "duplicate" if DUPLICATE_ATTR in trial.user_attrs else trial.state.name.lower(),
                "value": trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None,
                "rank": ranks.get(trial.number),
                "epochs": len(trial.intermediate_values),
                **{f"params_{key}": trial.params.get(key) for key in params},
                **references,
                "duration_s": round(duration, 1) if duration is not None else None,
                "run_dir": run_dir,
                "wandb_run": read_text(id_file).strip() if id_file is not None and id_file.is_file() else "",
            }
        )
    columns = [
        "number",
        "state",
        "value",
        "rank",
        "epochs",
        *(f"params_{key}" for key in params),
        *(("identity", "lut") if metric else ()),
        "duration_s",
        "run_dir",
        "wandb_run",
    ]
    frame = pd.DataFrame(rows, columns=columns)
    frame["rank"] = frame["rank"].astype("Int64")  # integers, empty for trials without a rank
    for column in ("value", "duration_s", *(("identity", "lut") if metric else ())):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def metric_label(metric: str) -> str:
    """An axis label for a logged metric: ``validation PSNR brain (dB)`` for ``val/psnr_brain``."""

    stage, _, name = metric.partition("/")
    stages = {"val": "validation", "test": "test", "train": "training"}
    if name in COLUMNS:
        return f"{stages.get(stage, stage)} {COLUMNS[name].heading}"
    return metric


def plot_study(
    study, root: Path, metric: str, report: Callable[[str], None] = print, baselines: dict | None = None
) -> list[Path]:
    """Optuna's optimisation history, validation curves and parameter importances as PNGs.

    Axes name the metric and its unit (:func:`metric_label`) and the curves' steps are
    epochs (0-based, as in ``metrics.csv``). Importances are drawn only from
    :data:`MIN_TRIALS_FOR_IMPORTANCES` complete trials; with fewer, ``report`` says so
    and a stale ``importances.png`` is removed, so the files always describe the study.
    The history and the curves draw the identity and LUT ``baselines`` of the metric
    (:func:`t7synth.tuning.baselines.draw_baselines`).
    """
    pyplot()  # Optuna draws through pyplot: a non-interactive backend first
    axis_label = metric_label(metric)
    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # History: complete trials' objectives (each trial's best validation); curves:
        # every trial's validations, pruned ones included (where they stopped is the
        # pruner's decision, visible).
        for name, draw in (
            ("history", lambda: plots.plot_optimization_history(study, target_name=f"best {axis_label}")),
            ("curves", lambda: plots.plot_intermediate_values(study)),
            ("importances", lambda: plots.plot_param_importances(study, target_name=f"best {axis_label}")),
        ):
            path = root / f"{name}.png"
            if name == "importances" and complete < MIN_TRIALS_FOR_IMPORTANCES:
                path.unlink(missing_ok=True)
                report(
                    f"importances.png not drawn: {complete} complete trials, {MIN_TRIALS_FOR_IMPORTANCES} needed "
                    "for a stable estimate"
                )
                continue
            try:
                axes = draw()
            except (ValueError, RuntimeError):
                continue  # e.g. no trial has a value yet
            if name == "curves":
                axes.set_title("validation curves (pruned trials end where they were stopped)", fontsize=10)
                axes.set_xlabel("epoch")
                axes.set_ylabel(axis_label)
                axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            elif name == "history":
                axes.set_title(f"optimisation history: each complete trial's best {metric}", fontsize=10)
                axes.set_xlabel("trial")
                axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            else:
                axes.set_title(axes.get_title(), fontsize=10)
            if name in ("curves", "history") and baselines:
                draw_baselines(axes, baselines)
                axes.legend()
            if axes.get_legend() is not None:  # Optuna's sits outside on the right, in a large font
                axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
            figure = axes.figure
            figure.set_size_inches(8, 4.5)
            figure.tight_layout()
            written.append(save_figure(figure, path, dpi=120))
    return written


def log_summary_to_wandb(
    table,
    images: list[Path],
    sweep,
    root: Path,
    mode_setting: str | None,
    base,
    baselines: dict | None = None,
    step: int | None = None,
) -> None:
    """A W&B run of job type ``sweep`` in the study's group: the trials table, plots, links.

    The table is :func:`trials_table` with its numbers as numbers (it sorts and plots
    on W&B), each trial's state (``pruned`` included: a pruned trial's own run is
    tagged too, see :class:`t7synth.training.wandb_logger.RunWandbLogger`) and a
    ``wandb_link`` to the trial's run: its URL online, its ``entity/project/id`` path
    offline (``wandb sync`` keeps ids, so the path stays valid after syncing). The
    summary holds the best trial, the count of trials per state and the identity and
    LUT baselines (``baseline/identity``, ``baseline/lut``). There is one summary run per
    study (:mod:`t7synth.tuning.summary_run`): every worker and rerun updates it.
    """

    mode = wandb_mode(mode_setting)
    if mode == "disabled":
        return

    run = wandb.init(
        project=base.wandb.project,
        entity=base.wandb.entity,
        id=summary_run_id(sweep.study, base.wandb.project),
        resume="allow",
        group=sweep.study,
        job_type="sweep",
        name=f"{sweep.study}/summary",
        dir=str(root),
        mode=mode,
        config={"sweep": str(sweep.path), "study": sweep.study, "metric": sweep.metric, "direction": sweep.direction},
    )
    try:
        frame = table.copy()
        frame["wandb_link"] = [run_link(run, run_id, mode) if run_id else "" for run_id in frame["wandb_run"]]
        run.log(
            {
                "sweep/trials": wandb.Table(columns=list(frame.columns), data=wandb_rows(frame)),
                **{f"sweep/{path.stem}": wandb.Image(str(path)) for path in images},
            },
            step=step,
        )
        summary = {f"trials/{state}": int(count) for state, count in frame["state"].value_counts().items()}
        summary.update({f"baseline/{kind}": float(value) for kind, value in (baselines or {}).items()})
        ranked = frame[frame["rank"] == 1]
        if len(ranked):
            best = ranked.iloc[0]
            summary.update(
                {
                    "best/number": int(best["number"]),
                    "best/value": float(best["value"]),
                    "best/run_dir": best["run_dir"],
                    "best/wandb_link": best["wandb_link"],
                }
            )
        run.summary.update(summary)
    finally:
        run.finish()
