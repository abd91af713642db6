"""An Optuna study over ``fit`` runs: what ``python -m t7synth.sweep`` runs.

Examples::

    python -m t7synth.sweep sweeps/demo_unet.yaml                  # demo data, CPU
    python -m t7synth.sweep sweeps/unet.yaml --n-trials 50 --gpus 4 --data /data/paired
    # more workers on the same study: the same command, elsewhere, with one storage
    python -m t7synth.sweep sweeps/unet.yaml --storage postgresql://db/optuna --gpus 1

Each trial is one ordinary ``fit`` run (a subprocess, see
:mod:`t7synth.tuning.trial`) in ``<runs_dir>/<study>/trial-NNNN/version_0``, with the
sampled values as ``--set`` overrides. Trials are therefore compared like any runs:
``python -m t7synth.compare runs/<study>/trial-*/version_0``, and on W&B, where every
trial is a run of the group ``<study>`` (job type ``trial``) whose config holds the
sampled values, ready for a parallel-coordinates panel.

The study lives in ``--storage``: by default an Optuna journal file,
``<runs_dir>/<study>/optuna.journal``, which several workers on one machine or on a
shared file system can use at once; a database URL (``sqlite:///…``,
``postgresql://…``) works too. Re-running the command continues the study until it
holds ``n_trials`` finished trials. Pruning compares a trial's validation metric, epoch
by epoch, with earlier trials (``pruner`` in the sweep file) and stops the losers.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from t7synth.errors import UserError

#: Consecutive failed trials after which the sweep stops: the cause is then the setup.
MAX_CONSECUTIVE_FAILURES = 3


@dataclass(frozen=True)
class SweepOptions:
    """The command line's settings of a sweep (see ``python -m t7synth.sweep --help``)."""

    n_trials: int | None = None
    storage: str | None = None
    sets: tuple[str, ...] = ()
    data: str | None = None
    gpus: int = 0
    nodes: int = 1
    precision: str | None = None
    wandb: str | None = None
    seed: int | None = None
    poll: float = 5.0


def run_sweep(sweep_file: str | Path, options: SweepOptions = SweepOptions(), report: Callable[[str], None] = print) -> None:
    """Run trials until the study holds ``n_trials`` finished ones, then summarise it.

    Args:
        sweep_file: the sweep file (``sweeps/*.yaml``).
        options: storage, trial count, hardware and overrides.
        report: receives each line for the user (trials, the best trial).
    """
    from t7synth.tuning.sweep_file import SweepConfig, format_value

    sweep = SweepConfig.load(sweep_file, list(options.sets))
    n_trials = sweep.n_trials if options.n_trials is None else options.n_trials
    if n_trials < 1:
        raise UserError(f"--n-trials {n_trials}: must be at least 1")
    extra = {"data": {"root": str(Path(options.data).expanduser().resolve())}} if options.data else None
    base = sweep.resolve({}, extra)
    root = Path(base.runs_dir) / sweep.study
    study = open_study(sweep, options.storage, root, options.seed if options.seed is not None else base.seed)

    import optuna

    from t7synth.tuning.trial import owner_tag

    for line in fail_orphaned_trials(study):
        report(line)
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished_states))
    report(f"study {sweep.study}: {done} of {n_trials} trials finished; runs in {root}")
    from tqdm.auto import tqdm

    failures = 0
    with tqdm(total=n_trials, initial=min(done, n_trials), desc=f"sweep {sweep.study}", unit="trial", dynamic_ncols=True) as bar:
        while len(study.get_trials(deepcopy=False, states=finished_states)) < n_trials:
            trial = study.ask(sweep.distributions())
            values = dict(trial.params)
            run_dir = root / f"trial-{trial.number:04d}" / "version_0"
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr("owner", owner_tag())
            overrides = {**values, "runs_dir": str(root), "name": f"trial-{trial.number:04d}",
                         "wandb.group": sweep.study, "wandb.job_type": "trial"}
            command = fit_command(sweep, options, {key: format_value(value) for key, value in overrides.items()})
            started = time.monotonic()
            state, value, detail = run_trial(study, trial, command, run_dir, sweep.metric, options.poll)
            minutes = (time.monotonic() - started) / 60
            chosen = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            bar.write(f"trial {trial.number}: {chosen} -> {state}{detail} ({minutes:.1f} min)")
            if state == "failed":
                failures += 1
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise UserError(
                        f"{failures} trials in a row failed; the last one's log: {run_dir.parent / 'fit.log'}"
                    )
            else:
                failures = 0
                bar.update(1)
    write_summary(study, sweep, root, options.wandb or base.wandb.mode, base, report)


def open_study(sweep, storage: str | None, root: Path, seed: int):
    """Create the study, or load it to continue; a journal file by default."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage is None or "://" not in storage:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(storage) if storage else root / "optuna.journal"
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalStorage(JournalFileBackend(str(path)))
    else:
        backend = storage
    try:
        study = optuna.create_study(
            study_name=sweep.study,
            storage=backend,
            sampler=sweep.make_sampler(seed),
            pruner=sweep.make_pruner(),
            direction=sweep.direction,
            load_if_exists=True,
        )
    except (ValueError, ImportError, optuna.exceptions.StorageInternalError) as error:
        raise UserError(f"--storage {storage}: {error}") from None
    if study.direction.name.lower() != sweep.direction:
        raise UserError(f"study {sweep.study} in the storage maximises/minimises differently than {sweep.path} (direction: {sweep.direction})")
    stale = sorted(root.glob("trial-*/version_0"))
    if not study.trials and stale:
        raise UserError(f"{root} holds runs of an earlier study ({stale[0].parent.name}, ...): delete them or choose another study name")
    return study


def fail_orphaned_trials(study) -> list[str]:
    """Mark failed the running trials whose sweep process on this machine has died.

    Their ``fit`` is stopped too if it still runs (see :mod:`t7synth.tuning.trial`).
    Trials run by live sweeps, and by other machines, are left alone.

    Returns:
        One line per trial dealt with, for the user.
    """
    import optuna

    from t7synth.tuning.trial import owner_is_gone, stop_orphaned_fit

    lines = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = trial.user_attrs.get("owner")
        if not owner or not owner_is_gone(owner):
            continue
        stopped = "pid" in trial.user_attrs and stop_orphaned_fit(trial.user_attrs["pid"], Path(trial.user_attrs["run_dir"]))
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        lines.append(
            f"trial {trial.number}: its sweep ({owner}) ended without finishing it; marked failed"
            + ("; its fit process was stopped" if stopped else "")
        )
    return lines


def fit_command(sweep, options: SweepOptions, overrides: dict[str, str]) -> list[str]:
    """The ``python -m t7synth.fit`` command line of one trial."""
    from t7synth.tuning.sweep_file import format_value

    command = [sys.executable, "-m", "t7synth.fit", "--gpus", str(options.gpus), "--nodes", str(options.nodes)]
    if sweep.config is not None:
        command += ["--config", str(sweep.config)]
    if sweep.model:
        command += ["--model", sweep.model]
    for key, value in sweep.set.items():
        command += ["--set", f"{key}={format_value(value)}"]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    if options.data:
        command += ["--data", str(Path(options.data).expanduser().resolve())]
    if options.precision:
        command += ["--precision", options.precision]
    if options.wandb:
        command += ["--wandb", options.wandb]
    return command


def run_trial(study, trial, command: list[str], run_dir: Path, metric: str, poll: float) -> tuple[str, float | None, str]:
    """Run one trial to its end, reporting each validation and pruning on Optuna's word.

    Returns:
        ``(state, value, detail)``: ``complete``/``pruned``/``failed``, the objective
        (the best validation value) or ``None``, and a few words for the trial's line.
    """
    import optuna

    from t7synth.tuning.trial import TrialProcess

    process = TrialProcess(command, run_dir, metric, run_dir.parent / "fit.log")
    reported: set[int] = set()

    def report_new() -> bool:
        """Report unseen validations in epoch order; True once Optuna says prune."""
        for epoch, value in sorted(process.validations().items()):
            if epoch not in reported:
                reported.add(epoch)
                trial.report(value, step=epoch)
                if trial.should_prune():
                    return True
        return False

    process.start()
    trial.set_user_attr("pid", process.process.pid)
    try:
        status = process.wait(timeout=poll)
        while status is None:
            if report_new():
                process.stop()
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return "pruned", None, f" at epoch {max(reported)}"
            status = process.wait(timeout=poll)
    except KeyboardInterrupt:
        process.stop(grace=5.0)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    # A trial that ended before its last validations were read ran in full: it counts
    # as complete whatever the pruner would have said (pruning only saves time).
    history = process.validations()
    for epoch, value in sorted(history.items()):
        if epoch not in reported:
            trial.report(value, step=epoch)
    if status != 0 or not history:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        why = f"exit {status}" if status != 0 else f"no {metric} in metrics.csv"
        tail = process.log_tail(1)
        return "failed", None, f" ({why}{': ' + tail if tail else ''}; log: {process.log_path})"
    best = (max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min)(history.values())
    study.tell(trial, best)
    return "complete", best, f" {metric} {best:.3f}"


def write_summary(study, sweep, root: Path, wandb_mode_setting: str | None, base, report: Callable[[str], None] = print) -> None:
    """``trials.csv``, the optimisation-history plot, the best trial, and W&B.

    Written after every sweep (also when it only continued a finished study), so the
    files always describe the whole study, all workers' trials included.
    """
    import optuna

    from t7synth.files import atomic_path

    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    with atomic_path(root / "trials.csv") as tmp:
        frame.to_csv(tmp, index=False)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    images = plot_study(study, root, len(complete))
    if not complete:
        report(f"no trial completed; see {root / 'trials.csv'}")
        return
    best = study.best_trial
    report(f"best: trial {best.number}, {sweep.metric} {best.value:.3f}")
    for key, value in best.params.items():
        report(f"  {key}: {value}")
    report(f"  run: {best.user_attrs.get('run_dir')}")
    # Only complete trials reached their test; compare refuses runs without one.
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(complete, key=lambda trial: trial.value, reverse=reverse)[:5]
    report(f"compare the best {len(ranked)}: python -m t7synth.compare " + " ".join(t.user_attrs["run_dir"] for t in ranked))
    log_summary_to_wandb(frame, images, sweep, root, wandb_mode_setting, base)


def plot_study(study, root: Path, complete: int) -> list[Path]:
    """Optuna's optimisation history, validation curves and parameter importances as PNGs.

    ``complete`` is the number of complete trials (importances need two).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as plots

    from t7synth.files import atomic_path

    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # History: complete trials' objectives; curves: every trial's validations,
        # pruned ones included (where they stopped is the pruner's decision, visible);
        # importances: Optuna's default estimate, which needs two complete trials
        # (with fewer it draws equal bars, which would mislead).
        for name, plot in (
            ("history", plots.plot_optimization_history),
            ("curves", plots.plot_intermediate_values),
            ("importances", plots.plot_param_importances),
        ):
            if name == "importances" and complete < 2:
                continue
            try:
                axes = plot(study)
            except (ValueError, RuntimeError):
                continue  # importances need two complete trials with different values
            figure = axes.figure
            figure.set_size_inches(7, 4)
            figure.tight_layout()
            path = root / f"{name}.png"
            with atomic_path(path) as tmp:
                figure.savefig(tmp, format="png", dpi=120)
            plt.close(figure)
            written.append(path)
    return written


def log_summary_to_wandb(frame, images: list[Path], sweep, root: Path, mode_setting: str | None, base) -> None:
    """A W&B run of job type ``sweep`` in the study's group: trials table and plots."""
    from t7synth.training.loggers import wandb_mode

    mode = wandb_mode(mode_setting)
    if mode == "disabled":
        return
    import wandb

    run = wandb.init(
        project=base.wandb.project, entity=base.wandb.entity, group=sweep.study, job_type="sweep",
        name=f"{sweep.study}/summary", dir=str(root), mode=mode, config={"sweep": str(sweep.path)},
    )
    run.log({
        "sweep/trials": wandb.Table(dataframe=frame.astype(str)),
        **{f"sweep/{path.stem}": wandb.Image(str(path)) for path in images},
    })
    run.finish()
