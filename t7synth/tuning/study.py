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
``postgresql://…``) works too (:mod:`t7synth.tuning.storage`). Re-running the command
continues the study until it holds ``n_trials`` finished trials. Pruning compares a
trial's validation metric, epoch by epoch, with earlier trials (``pruner`` in the sweep
file) and stops the losers. After the loop, :func:`t7synth.tuning.report.write_summary`
writes the study's table, plots and W&B summary.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from tqdm.auto import tqdm

from t7synth.errors import UserError
from t7synth.run_files import METRICS_FILE, write_trial_record
from t7synth.training.loggers import check_wandb_mode, wandb_mode
from t7synth.tuning.distinct import duplicate_of, skip_duplicate
from t7synth.tuning.options import SweepOptions
from t7synth.tuning.report import write_summary
from t7synth.tuning.storage import fail_orphaned_trials, fail_stale_trials, heartbeat, open_study
from t7synth.tuning.summary_run import summary_run_id
from t7synth.tuning.sweep_file import SweepConfig, format_value
from t7synth.tuning.trial import TrialProcess, owner_tag
from t7synth.tuning.workers import start_workers, wait_workers, without_workers

#: Consecutive failed trials after which the sweep stops: the cause is then the setup.
MAX_CONSECUTIVE_FAILURES = 3


def run_sweep(
    sweep_file: str | Path, options: SweepOptions = SweepOptions(), report: Callable[[str], None] = print
) -> None:
    """Run trials until the study holds ``n_trials`` finished ones, then summarise it.

    Args:
        sweep_file: the sweep file (``sweeps/*.yaml``).
        options: storage, trial count, hardware and overrides.
        report: receives each line for the user (trials, the best trial).
    """

    sweep = SweepConfig.load(sweep_file, list(options.sets))
    n_trials = sweep.n_trials if options.n_trials is None else options.n_trials
    if n_trials < 1:
        raise UserError(f"--n-trials {n_trials}: must be at least 1")
    extra = {"data": {"root": str(Path(options.data).expanduser().resolve())}} if options.data else None
    base = sweep.resolve({}, extra)

    check_wandb_mode(wandb_mode(options.wandb or base.wandb.mode))  # once, not in every trial
    root = Path(base.runs_dir) / sweep.study
    if options.workers < 1:
        raise UserError(f"--workers {options.workers}: must be at least 1")
    # Each worker its own sampler seed: workers sharing a study must not draw alike
    # (t7synth.tuning.distinct).
    seed = (options.seed if options.seed is not None else base.seed) + options.worker_index
    study = open_study(sweep, options.storage, root, seed, options.heartbeat)

    # The study exists now: the other workers load it rather than race to create it.
    extra_workers = start_workers(without_workers(options.argv), options.workers - 1, root)
    if extra_workers:
        report(f"started {len(extra_workers)} more worker(s): logs {root / 'worker-*.log'}")
    summary_id = summary_run_id(sweep.study, base.wandb.project)

    for line in fail_orphaned_trials(study) + fail_stale_trials(study):
        report(line)
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished_states))
    report(f"study {sweep.study}: {done} of {n_trials} trials finished; runs in {root}")

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


def fit_command(sweep, options: SweepOptions, overrides: dict[str, str]) -> list[str]:
    """The ``python -m t7synth.fit`` command line of one trial."""

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
