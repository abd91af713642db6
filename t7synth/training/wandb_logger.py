"""The W&B logger of a ``fit`` run: Lightning's ``WandbLogger`` with t7synth's run layout.

What it changes, and why, is listed in :mod:`t7synth.training.loggers` (which builds it);
it lives apart so that reading a run folder (``compare``, the sweep) never imports
Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from t7synth.run_files import read_trial_record
from t7synth.scores import COLUMNS, REFERENCES
from t7synth.training.wandb_links import run_link
from t7synth.training.wandb_steps import StepCounter

#: The W&B step metric of every ``val/*`` and ``test/*`` series (Lightning logs it with each).
EPOCH = "epoch"
#: The summary state and tag of a sweep trial its sweep pruned.
PRUNED = "pruned"


def is_reference_key(key: str) -> bool:
    """Whether a logged key is a baseline's score (``val/identity/psnr``, ``test/lut/mae``)."""
    parts = key.split("/")
    return len(parts) == 3 and parts[1] in REFERENCES


def summary_ops(key: str) -> str | None:
    """The W&B summary of a series: ``max,last`` or ``min,last`` for a validation score.

    ``best.ckpt`` and a sweep's objective are the *best* validation value, so the
    summary (what the runs table shows and sorts by) must hold it; ``last`` stays
    beside it. Other series keep W&B's default (the last value).
    """
    stage, _, name = key.partition("/")
    # A score best at an ideal value (a ratio to the 7T's) has no W&B summary for "best".
    if stage != "val" or name not in COLUMNS or getattr(COLUMNS[name], "ideal", None) is not None:
        return None
    return ("max" if COLUMNS[name].higher_is_better else "min") + ",last"


class RunWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` with t7synth's run layout on W&B (see :mod:`t7synth.training.loggers`).

    Args:
        run_dir: the run folder (for the trial record of a pruned sweep trial).
        **kwargs: Lightning's ``WandbLogger`` arguments (``wandb.init``'s).
    """

    def __init__(self, run_dir: str | Path, **kwargs: Any):
        super().__init__(**kwargs)
        # Lightning always passes wandb.init an ``anonymous`` key (None when unset);
        # recent wandb warns "The anonymous setting has no effect" for any value.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        self._run_dir = Path(run_dir)
        #: Every row's W&B step, continued across resumes (t7synth.training.wandb_steps).
        self.steps = StepCounter(self._run_dir)
        self._defined: set[str] = set()
        self._epoch: Any = None
        self._trial_linked = False

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Send nothing: ``wandb.init`` already holds the resolved config.

        Lightning calls this with the module's ``save_hyperparameters`` (the same
        config under one ``config`` key), which would show every key twice.
        """

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Baselines to the summary; other keys to the history, ``val/*`` and ``test/*`` by epoch."""
        metrics = dict(metrics)
        if not self._trial_linked:
            self._trial_linked = True
            self._link_trial()
        references = {key: metrics.pop(key) for key in list(metrics) if is_reference_key(key)}
        if references:
            self.experiment.summary.update({key: float(value) for key, value in references.items()})
        if set(metrics) <= {EPOCH}:
            return  # only baselines were logged (Lightning adds the epoch to every call)
        if EPOCH in metrics:
            self._epoch = metrics[EPOCH]
        elif self._epoch is not None and any(key.split("/")[0] in ("val", "test") for key in metrics):
            # log_image/log_table calls carry no epoch; they belong to the last one logged.
            metrics[EPOCH] = self._epoch
        for key in metrics:
            if key not in self._defined:
                self._define(key)
        # Lightning's WandbLogger.log_metrics, with the row's step given explicitly.
        if step is not None:
            metrics["trainer/global_step"] = step
        self.experiment.log(metrics, step=self.steps.take(self.experiment))

    def _link_trial(self) -> None:
        """A sweep trial's run: its number as a numeric key, and a link to its study's summary run.

        The sweep writes the trial record (``trial.json``) before it starts the trial's
        ``fit``; a run outside a sweep has none. ``trial/number`` goes to the config
        and the summary (a number, so the runs table sorts and plots by it), and
        ``trial/study_run`` is the summary run's URL online, its path offline
        (:func:`t7synth.training.loggers.run_link`).
        """

        record = read_trial_record(self._run_dir)
        if not isinstance(record.get("number"), int):
            return
        run = self.experiment
        trial = {"trial/number": record["number"], "trial/study": str(record.get("study", ""))}
        if record.get("summary_run"):
            trial["trial/study_run"] = run_link(
                run, str(record["summary_run"]), "offline" if self._offline else "online"
            )
        run.config.update(trial, allow_val_change=True)
        run.summary.update(trial)

    def _define(self, key: str) -> None:
        """``define_metric`` for a new ``val/*`` or ``test/*`` key: epoch as its x-axis.

        Each key is defined by its exact name when first logged, because an exact
        definition wins over Lightning's glob ``*`` (``trainer/global_step``), while the
        order in which two globs would match is not specified.
        """
        run = self.experiment
        if not self._defined:
            run.define_metric(EPOCH)
        if key.split("/")[0] in ("val", "test"):
            run.define_metric(key, step_metric=EPOCH, summary=summary_ops(key))
        self._defined.add(key)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """On an interrupted run, mark a sweep trial its sweep pruned (tag and summary)."""
        if status == "failed" and self._experiment is not None:
            record = read_trial_record(self._run_dir)
            if record.get("state") == PRUNED:
                run = self._experiment
                run.tags = tuple(run.tags or ()) + (PRUNED,)
                run.summary.update({"trial/state": PRUNED, "trial/pruned_after_epoch": record.get("epoch")})
                # Pruning is an outcome, not a crash: finish now (the sweep may SIGKILL
                # the process if it lingers) with a clean exit code.
                run.finish(exit_code=0)
                return
        super().finalize(status)
