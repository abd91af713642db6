"""Workers sharing a study never evaluate the same parameters.

Two sweep workers on one study with the same sampler seed see the same history and
so draw the same parameters: half the compute would be wasted on repeats. Each worker
therefore seeds its sampler differently (``sweep --workers N`` gives worker ``i`` the
seed ``seed + i``), and a trial whose parameters equal those of an earlier trial
(complete, pruned, running or waiting; a lower number, so exactly one of two twins
goes on) is not run: it is told FAIL with the user attribute ``duplicate_of``, which
counts towards nothing, and the worker's sampler is reseeded
(``BaseSampler.reseed_rng``, what Optuna's own parallel ``optimize`` does per thread)
before it asks again. A search space with no new parameter set left (a small grid of
categorical values) stops the sweep in one line instead of asking forever.

(Optuna writes a trial's parameters just after creating it, so two workers asking in
the same few milliseconds can still both miss each other; distinct seeds make that a
coincidence of both timing and values.)
"""

from __future__ import annotations

import optuna

from t7synth.errors import UserError

#: Duplicates in a row after which the search space counts as exhausted.
MAX_CONSECUTIVE_DUPLICATES = 25
#: The trial's user attribute naming the earlier trial it repeated.
DUPLICATE_ATTR = "duplicate_of"


def duplicate_of(study, trial) -> int | None:
    """The number of an earlier live or finished trial with exactly ``trial``'s parameters, else ``None``."""

    states = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.RUNNING,
        optuna.trial.TrialState.WAITING,
    )
    params = dict(trial.params)
    for other in study.get_trials(deepcopy=False, states=states):
        if other.number < trial.number and other.params == params:
            return other.number
    return None


def skip_duplicate(study, trial, original: int, streak: int) -> str:
    """Tell ``trial`` FAIL as a repeat of ``original``, reseed the sampler; the line for the user.

    Raises:
        UserError: after :data:`MAX_CONSECUTIVE_DUPLICATES` repeats in a row.
    """

    trial.set_user_attr(DUPLICATE_ATTR, original)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    study.sampler.reseed_rng()
    if streak >= MAX_CONSECUTIVE_DUPLICATES:
        raise UserError(
            f"{streak} parameter sets in a row repeated earlier trials: the search space has no new one left "
            "(widen params, or lower n_trials)"
        )
    return f"trial {trial.number}: the parameters of trial {original}; not run again"
