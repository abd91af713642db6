"""The command line's settings of a sweep, light enough for ``sweep --help``.

:class:`SweepOptions` is what ``python -m t7synth.sweep`` hands to
:func:`t7synth.tuning.study.run_sweep`; its defaults are the command line's, which is
why they live here, apart from the modules that import Optuna.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Seconds between a running trial's heartbeats in a database storage (``--heartbeat``).
#: A trial whose heartbeat is older than twice this (Optuna's default grace period)
#: is marked failed by the next sweep worker that looks: its worker died
#: (:func:`t7synth.tuning.storage.fail_stale_trials`).
DEFAULT_HEARTBEAT = 60


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
