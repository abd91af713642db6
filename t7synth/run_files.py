"""The files of a run folder (``runs/<experiment>/version_N``): their names, readers and writers.

One module names every file a run folder holds, so that ``fit``, ``predict --ckpt``,
``compare``, ``sweep`` and the W&B logger agree on them by construction rather than by
spelling. It sits low in the layers (beside the score vocabulary), so every stage may
use it; it imports nothing heavier than :mod:`t7synth.config` and :mod:`t7synth.scores`.
"""

from __future__ import annotations

import json
from pathlib import Path

from t7synth.files import atomic_path

#: A trial's record in its run folder, written by the sweep: the study, the trial's
#: number, its state (Optuna's, lower case: ``complete``, ``pruned``, ``fail``), its
#: objective, its sampled values and the last epoch it reported. The W&B logger of a trial the sweep prunes reads it
#: when Lightning stops on the sweep's SIGTERM, and tags its run ``pruned``
#: (:class:`t7synth.training.wandb_logger.RunWandbLogger`); ``compare`` and the study's
#: summary read the states from Optuna, this file keeps them with the run.
TRIAL_FILE = "trial.json"


def write_trial_record(run_dir: Path, record: dict) -> Path:
    """Write ``run_dir/trial.json`` atomically (the folder is created if needed)."""
    path = Path(run_dir) / TRIAL_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return path


def read_trial_record(run_dir: Path) -> dict:
    """``run_dir/trial.json`` as a dict; empty when the run is no sweep trial (or it is unreadable)."""
    try:
        record = json.loads((Path(run_dir) / TRIAL_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
