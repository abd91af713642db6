"""The one W&B summary run of a study, whatever the number of workers and reruns.

Each sweep worker writes the study's summary when it ends; with a fresh W&B run each
time, two workers (or a rerun) left two summary runs that disagreed on the best
trial. The summary run's id is instead derived from the project and the study name,
and opened with ``resume="allow"``: every worker and rerun updates the same run (W&B:
"allow" resumes the run if the id exists, else creates it). Its history rows get an
explicit step, the number of trials the study holds, which only grows, so a later
summary never lands below an earlier one (W&B drops a row whose step is not above the
last; offline, each process's steps would otherwise start at 0 again).
"""

from __future__ import annotations

import hashlib


def summary_run_id(study: str, project: str | None) -> str:
    """``sweep-<12 hex>``: the study's summary run id (W&B ids: letters, digits, dashes)."""
    digest = hashlib.sha1(f"{project or ''}/{study}".encode()).hexdigest()[:12]
    return f"sweep-{digest}"
