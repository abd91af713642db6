"""Links between W&B runs (a sweep's summary and its trials), online and offline.

Apart from :mod:`t7synth.training.loggers` so that the trial's W&B logger
(:mod:`t7synth.training.wandb_logger`, which ``loggers`` builds) can use it without an
import cycle.
"""

from __future__ import annotations


def run_link(run, run_id: str, mode: str) -> str:
    """A link to the W&B run ``run_id`` of ``run``'s project, for tables of other runs.

    Online, the run's URL. Offline there is none; the run's path
    (``entity/project/id``, the entity left out when unknown) names it, and stays
    valid once ``wandb sync`` uploads the run under the same id.
    """
    if mode == "online" and getattr(run, "project_url", None):
        return f"{run.project_url}/runs/{run_id}"
    return "/".join(part for part in (getattr(run, "entity", "") or "", run.project, run_id) if part)
