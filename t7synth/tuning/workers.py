"""``sweep --workers N``: N worker processes on one study, started by the sweep itself.

The first worker is the command itself; it creates the study, then starts the other
``N - 1`` as ``python -m t7synth.sweep`` processes with the same arguments and
``--worker-index i`` (a distinct sampler seed, see :mod:`t7synth.tuning.distinct`),
each writing its output to ``<runs_dir>/<study>/worker-<i>.log``. They share the study's
storage (the journal file by default, which several processes may use at once), and the
command waits for all of them before it writes the study's one summary.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from t7synth.errors import UserError

#: What the extra workers run, after the interpreter (tests put a stand-in here).
PROGRAM: list[str] = ["-m", "t7synth.sweep"]


def start_workers(argv: Sequence[str], count: int, root: Path) -> list[tuple[subprocess.Popen, Path]]:
    """Start ``count`` more workers: ``argv`` (the sweep's own arguments, without ``--workers``) plus an index."""
    started = []
    for index in range(1, count + 1):
        log = root / f"worker-{index}.log"
        with open(log, "w") as handle:
            command = [sys.executable, *PROGRAM, *argv, "--worker-index", str(index)]
            started.append((subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT), log))
    return started


def wait_workers(started: Sequence[tuple[subprocess.Popen, Path]]) -> None:
    """Wait for every started worker.

    Raises:
        UserError: naming the log of the first worker that failed.
    """
    failed = [(process.wait(), log) for process, log in started]
    failed = [(status, log) for status, log in failed if status != 0]
    if failed:
        status, log = failed[0]
        raise UserError(f"{len(failed)} of {len(started)} extra sweep workers failed (exit {status}; log: {log})")


def without_workers(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--workers N`` / ``--workers=N`` (the extra workers are single ones)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--workers":
            skip = True
            continue
        if item.startswith("--workers="):
            continue
        kept.append(item)
    return kept
