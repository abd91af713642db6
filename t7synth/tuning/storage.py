"""Where a study lives and how its workers tell that one of them died.

The study is kept in ``--storage``: by default an Optuna journal file,
``<runs_dir>/<study>/optuna.journal``, which several workers on one machine or on a
shared file system can use at once; a database URL (``sqlite:///…``,
``postgresql://…``) opens an Optuna ``RDBStorage`` with heartbeats. A worker killed
mid-trial leaves its trial RUNNING: other workers fail it for its stopped heartbeat
(:func:`fail_stale_trials`, databases) or, on one machine, for its dead process
(:func:`fail_orphaned_trials`, any storage).
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend

from t7synth.errors import UserError
from t7synth.files import check_writable, make_dirs
from t7synth.tuning.options import DEFAULT_HEARTBEAT
from t7synth.tuning.trial import owner_is_gone, stop_orphaned_fit

#: Tries to open a database storage: workers starting together race to create its tables.
SCHEMA_ATTEMPTS = 3


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

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage is None or "://" not in storage:
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
