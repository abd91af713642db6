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

import contextlib
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from t7synth.errors import UserError
from t7synth.files import exclusive_lock
from t7synth.run_files import METRICS_FILE, STUDY_TABLE_FILE
from t7synth.textfiles import read_text

#: Consecutive failed trials after which the sweep stops: the cause is then the setup.
MAX_CONSECUTIVE_FAILURES = 3
#: Seconds between a running trial's heartbeats in a database storage (``--heartbeat``).
#: A trial whose heartbeat is older than twice this (Optuna's default grace period)
#: is marked failed by the next sweep worker that looks: its worker died.
DEFAULT_HEARTBEAT = 60
#: Tries to open a database storage: workers starting together race to create its tables.
SCHEMA_ATTEMPTS = 3


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
    heartbeat: int = DEFAULT_HEARTBEAT
    #: ``--workers N``: worker processes on the study (this one and N - 1 it starts).
    workers: int = 1
    #: This worker's index (``--worker-index``, set for the workers ``--workers`` starts).
    worker_index: int = 0
    #: The command line's arguments, for the workers ``--workers`` starts.
    argv: tuple[str, ...] = ()


def run_sweep(
    sweep_file: str | Path, options: SweepOptions = SweepOptions(), report: Callable[[str], None] = print
) -> None:
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
    from t7synth.training.loggers import check_wandb_mode, wandb_mode

    check_wandb_mode(wandb_mode(options.wandb or base.wandb.mode))  # once, not in every trial
    root = Path(base.runs_dir) / sweep.study
    if options.workers < 1:
        raise UserError(f"--workers {options.workers}: must be at least 1")
    # Each worker its own sampler seed: workers sharing a study must not draw alike
    # (t7synth.tuning.distinct).
    seed = (options.seed if options.seed is not None else base.seed) + options.worker_index
    study = open_study(sweep, options.storage, root, seed, options.heartbeat)
    from t7synth.tuning.distinct import duplicate_of, skip_duplicate
    from t7synth.tuning.summary_run import summary_run_id
    from t7synth.tuning.workers import start_workers, wait_workers, without_workers

    # The study exists now: the other workers load it rather than race to create it.
    extra_workers = start_workers(without_workers(options.argv), options.workers - 1, root)
    if extra_workers:
        report(f"started {len(extra_workers)} more worker(s): logs {root / 'worker-*.log'}")
    summary_id = summary_run_id(sweep.study, base.wandb.project)

    import optuna

    from t7synth.run_files import write_trial_record
    from t7synth.tuning.trial import owner_tag

    for line in fail_orphaned_trials(study) + fail_stale_trials(study):
        report(line)
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished_states))
    report(f"study {sweep.study}: {done} of {n_trials} trials finished; runs in {root}")
    from tqdm.auto import tqdm

    failures = duplicates = 0
    with tqdm(
        total=n_trials, initial=min(done, n_trials), desc=f"sweep {sweep.study}", unit="trial", dynamic_ncols=True
    ) as bar:
        while len(study.get_trials(deepcopy=False, states=finished_states)) < n_trials:
            # Trials of workers that died elsewhere would otherwise stay RUNNING forever.
            for line in fail_stale_trials(study):
                bar.write(line)
            with warnings.catch_warnings():
                # Optuna warns that heartbeats are meant for study.optimize: this loop
                # records them itself (heartbeat below).
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = study.ask(sweep.distributions())
            original = duplicate_of(study, trial)
            if original is not None:
                duplicates += 1
                bar.write(skip_duplicate(study, trial, original, duplicates))
                continue
            duplicates = 0
            with heartbeat(study, trial):
                values = dict(trial.params)
                run_dir = root / f"trial-{trial.number:04d}" / "version_0"
                trial.set_user_attr("run_dir", str(run_dir))
                trial.set_user_attr("summary_run", summary_id)
                trial.set_user_attr("owner", owner_tag())
                # The trial's W&B run reads this before its first row: its number (a
                # numeric key) and its study's summary run, which it links to.
                write_trial_record(
                    run_dir,
                    {"study": sweep.study, "number": trial.number, "state": "running", "summary_run": summary_id},
                )
                overrides = {
                    **values,
                    "runs_dir": str(root),
                    "name": f"trial-{trial.number:04d}",
                    "wandb.group": sweep.study,
                    "wandb.job_type": "trial",
                }
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
    wait_workers(extra_workers)
    write_summary(study, sweep, root, options.wandb or base.wandb.mode, base, report)


def check_storage_url(storage: str) -> None:
    """Refuse a SQLite URL whose file cannot be: in a missing folder, or a folder itself.

    SQLAlchemy would only say "unable to open database file", in a traceback.
    """
    prefix = "sqlite:///"
    if not storage.startswith(prefix):
        return
    path = Path(storage[len(prefix) :]).expanduser()
    if path.is_dir():
        raise UserError(f"--storage {storage}: {path} is a folder, not a database file")
    if not path.parent.is_dir():
        raise UserError(
            f"--storage {storage}: the folder {path.parent} does not exist (SQLite creates the file, not its folder)"
        )


def open_study(sweep, storage: str | None, root: Path, seed: int, heartbeat_interval: int = DEFAULT_HEARTBEAT):
    """Create the study, or load it to continue; a journal file by default.

    A database URL (``sqlite:///…``, ``postgresql://…``) opens an Optuna ``RDBStorage``
    with heartbeats every ``heartbeat_interval`` seconds (``0``: none): a worker
    killed mid-trial (SIGKILL, a lost node) leaves its trial RUNNING, and the
    heartbeat is how other workers, on any machine, tell it is dead
    (:func:`fail_stale_trials`). Journal files have no heartbeat; on one machine
    :func:`fail_orphaned_trials` does that job.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage is None or "://" not in storage:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        from t7synth.files import check_writable, make_dirs

        path = Path(storage).expanduser() if storage else root / "optuna.journal"
        if path.is_dir():
            raise UserError(f"--storage {path} is a folder; give the journal file, e.g. {path / 'optuna.journal'}")
        check_writable(path.parent)
        make_dirs(path.parent)
        backend = JournalStorage(JournalFileBackend(str(path)))
    else:
        check_storage_url(storage)
        backend = database_storage(storage, heartbeat_interval)
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
        raise UserError(
            f"study {sweep.study} in the storage maximises/minimises differently than {sweep.path} (direction: "
            f"{sweep.direction})"
        )
    stale = sorted(root.glob("trial-*/version_0"))
    if not study.trials and stale:
        raise UserError(
            f"{root} holds runs of an earlier study ({stale[0].parent.name}, ...): delete them or choose another "
            "study name"
        )
    return study


def database_storage(url: str, heartbeat_interval: int = DEFAULT_HEARTBEAT):
    """An Optuna ``RDBStorage`` on ``url`` with heartbeats (see :func:`open_study`).

    Raises:
        UserError: a bad heartbeat, a missing database driver (``psycopg`` for
            PostgreSQL), an unknown URL scheme, or a database that cannot be reached.
    """
    import optuna
    import sqlalchemy.exc

    if heartbeat_interval < 0:
        raise UserError(f"--heartbeat {heartbeat_interval}: must be 0 (no heartbeat) or a number of seconds")
    try:
        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    # grace_period None: Optuna's default, twice the interval.
                    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval or None)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
                # Workers started together on a new database race to create Optuna's
                # tables ("duplicate key ... pg_type", "database is locked"): the loser
                # finds them made when it tries again.
                if attempt == SCHEMA_ATTEMPTS - 1:
                    raise
                time.sleep(1.0 + attempt)
    except ImportError:
        # SQLAlchemy >= 2.1 reads postgresql:// URLs with psycopg (3); 2.0 with psycopg2.
        driver = "; for PostgreSQL: pip install 'psycopg[binary]'" if url.startswith("postgres") else ""
        raise UserError(f"--storage {url}: the database driver is not installed{driver}") from None
    except (ValueError, sqlalchemy.exc.ArgumentError) as error:
        raise UserError(f"--storage {url}: {error}") from None
    except sqlalchemy.exc.SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise UserError(f"--storage {url}: cannot open the database: {reason}") from None


@contextlib.contextmanager
def heartbeat(study, trial) -> Iterator[None]:
    """Record ``trial``'s heartbeat in the study's storage while the block runs.

    Optuna records heartbeats only inside ``study.optimize``; a sweep asks and tells
    itself, so it beats itself, from a thread, as ``optimize`` does: the first beat at
    once, then every ``heartbeat_interval`` seconds. Storages without heartbeats
    (journal files, ``--heartbeat 0``) get nothing.
    """
    from optuna.storages._heartbeat import BaseHeartbeat

    storage = study._storage  # the storage object Optuna's own heartbeat code uses
    interval = storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None
    if not interval:
        yield
        return
    trial_id = trial._trial_id
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a database hiccup: the next beat tries again
                pass
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale_trials(study) -> list[str]:
    """Mark failed the running trials whose heartbeat stopped (their worker died).

    Only database storages with heartbeats have stale trials (see :func:`open_study`);
    this is Optuna's ``fail_stale_trials``, with a line per trial for the user.
    """
    import optuna
    from optuna.storages._heartbeat import BaseHeartbeat

    storage = study._storage
    interval = storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None
    if not interval:
        return []
    running = optuna.trial.TrialState.RUNNING
    before = {t.number for t in study.get_trials(deepcopy=False, states=(running,))}
    if not before:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(running,))}
    failed = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
        if t.number in before - after
    ]
    return [
        f"trial {t.number}: no heartbeat for over {2 * interval} s (its sweep worker "
        f"{t.user_attrs.get('owner', '?')} died); marked failed"
        for t in failed
    ]


def fail_orphaned_trials(study) -> list[str]:
    """Mark failed the running trials whose sweep process on this machine has died.

    Their ``fit`` is stopped too if it still runs (see :mod:`t7synth.tuning.trial`),
    also when another worker has already failed the trial for its stopped heartbeat
    (:func:`fail_stale_trials`): only this machine can stop the ``fit``.
    Trials run by live sweeps, and by other machines, are left alone.

    Returns:
        One line per trial dealt with, for the user.
    """
    import optuna

    from t7synth.tuning.trial import owner_is_gone, stop_orphaned_fit

    lines = []
    states = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL)
    for trial in study.get_trials(deepcopy=False, states=states):
        owner = trial.user_attrs.get("owner")
        if not owner or not owner_is_gone(owner):
            continue
        stopped = "pid" in trial.user_attrs and stop_orphaned_fit(
            trial.user_attrs["pid"], Path(trial.user_attrs["run_dir"])
        )
        if trial.state == optuna.trial.TrialState.FAIL:
            if stopped:
                lines.append(
                    f"trial {trial.number}: failed, but its fit outlived its sweep ({owner}); the fit was stopped"
                )
            continue
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


def run_trial(
    study, trial, command: list[str], run_dir: Path, metric: str, poll: float
) -> tuple[str, float | None, str]:
    """Run one trial to its end, reporting each validation and pruning on Optuna's word.

    Returns:
        ``(state, value, detail)``: ``complete``/``pruned``/``failed``, the objective
        (the best validation value) or ``None``, and a few words for the trial's line.
    """
    import optuna

    from t7synth.run_files import write_trial_record
    from t7synth.tuning.trial import TrialProcess

    process = TrialProcess(command, run_dir, metric, run_dir.parent / "fit.log")
    reported: set[int] = set()

    def record(state: str, value: float | None) -> None:
        """The trial's state in its run folder (:data:`t7synth.run_files.TRIAL_FILE`)."""
        write_trial_record(
            run_dir,
            {
                "study": study.study_name,
                "number": trial.number,
                "state": state,
                "value": value,
                "epoch": max(reported) if reported else None,
                "params": dict(trial.params),
                "summary_run": trial.user_attrs.get("summary_run"),
            },
        )

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
                # Recorded before the SIGTERM, so the trial's W&B run can tag itself.
                record("pruned", None)
                process.stop()
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return "pruned", None, f" at epoch {max(reported)}"
            status = process.wait(timeout=poll)
    except KeyboardInterrupt:
        process.stop(grace=5.0)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        record("fail", None)
        raise
    # A trial that ended before its last validations were read ran in full: it counts
    # as complete whatever the pruner would have said (pruning only saves time).
    history = process.validations()
    for epoch, value in sorted(history.items()):
        if epoch not in reported:
            trial.report(value, step=epoch)
    if status != 0 or not history:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        record("fail", None)
        why = f"exit {status}" if status != 0 else f"no {metric} in {METRICS_FILE}"
        tail = process.log_tail(1)
        return "failed", None, f" ({why}{': ' + tail if tail else ''}; log: {process.log_path})"
    best = (max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min)(history.values())
    study.tell(trial, best)
    record("complete", best)
    return "complete", best, f" {metric} {best:.3f}"


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
    import optuna

    from t7synth.files import atomic_path
    from t7synth.tuning.baselines import label, study_baselines

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
    import optuna
    import pandas as pd

    from t7synth.run_files import WANDB_ID_FILE
    from t7synth.tuning.baselines import trial_baselines
    from t7synth.tuning.distinct import DUPLICATE_ATTR

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
    from t7synth.scores import COLUMNS

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization import matplotlib as plots

    from t7synth.files import atomic_path
    from t7synth.tuning.baselines import draw_baselines

    label = metric_label(metric)
    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # History: complete trials' objectives (each trial's best validation); curves:
        # every trial's validations, pruned ones included (where they stopped is the
        # pruner's decision, visible).
        for name, draw in (
            ("history", lambda: plots.plot_optimization_history(study, target_name=f"best {label}")),
            ("curves", lambda: plots.plot_intermediate_values(study)),
            ("importances", lambda: plots.plot_param_importances(study, target_name=f"best {label}")),
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
                axes.set_ylabel(label)
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
            with atomic_path(path) as tmp:
                figure.savefig(tmp, format="png", dpi=120)
            plt.close(figure)
            written.append(path)
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
    from t7synth.training.loggers import run_link, wandb_mode, wandb_rows

    mode = wandb_mode(mode_setting)
    if mode == "disabled":
        return
    import wandb

    from t7synth.tuning.summary_run import summary_run_id

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
