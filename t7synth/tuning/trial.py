"""One sweep trial: ``python -m t7synth.fit`` in its own process, watched from outside.

A trial runs as a subprocess rather than inside the sweep's Python process because:

* ``fit --gpus N`` is DDP, and Lightning's DDP re-runs the entry point once per rank;
  inside the sweep process every rank would start its own study and trial
  (optuna-integration#59). A subprocess is an ordinary ``fit`` run.
* A finished trial gives back all its memory (GPU memory included), and a crashed
  one (out of memory, a NaN) fails alone.
* Optuna stays out of ``fit``: the trial is watched through the ``metrics.csv`` that
  every run writes anyway, and a pruned trial is stopped by a signal.

The run folder is fixed in advance through :data:`t7synth.training.launch.RUN_DIR_ENV`,
so the sweep knows where to look before the trial has written anything.

A sweep killed outright (SIGKILL, the out-of-memory killer, a closed terminal) cannot
tell the study: its trial stays ``RUNNING`` and its ``fit`` process, in a session of
its own, goes on. Each trial therefore records its sweep process (:func:`owner_tag`)
and its ``fit`` process id, so the next sweep on the same machine can recognise the
orphan (:func:`owner_is_gone`) and stop it (:func:`stop_orphaned_fit`).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from t7synth.errors import UserError
from t7synth.run_files import METRICS_FILE
from t7synth.textfiles import read_table
from t7synth.training.launch import RUN_DIR_ENV


class TrialProcess:
    """A ``fit`` subprocess and the validation values it has logged so far.

    Args:
        command: the ``fit`` command line (a list, starting with the interpreter).
        run_dir: the run folder the trial must use (``<runs>/<study>/trial-NNNN/version_0``).
        metric: the ``metrics.csv`` column to read, e.g. ``val/psnr_brain``.
        log_path: where the trial's stdout and stderr go (its progress bar included).
    """

    def __init__(self, command: list[str], run_dir: Path, metric: str, log_path: Path):
        self.command = command
        self.run_dir = Path(run_dir)
        self.metric = metric
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the trial in a new process group (so stopping it stops every rank)."""

        env = dict(os.environ, **{RUN_DIR_ENV: str(self.run_dir)})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, or ``None`` if still running after ``timeout`` seconds."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left after ``grace``."""
        if self.process is None or self.process.poll() is not None:
            return
        stop_group(self.process.pid, grace, lambda: self.process.poll() is None)

    def validations(self) -> dict[int, float]:
        """``{epoch: value}`` of every validation of ``metric`` in ``metrics.csv`` so far.

        Lightning's CSV logger rewrites the file when a new column appears, so a read
        can meet a half-written file; rows that do not parse are skipped and read again
        at the next call.
        """
        path = self.run_dir / METRICS_FILE
        found: dict[int, float] = {}
        if not path.is_file():
            return found
        try:
            rows = read_table(path, complete=False).rows
        except UserError:  # damaged: the trial's fit reads the same file and ends on it with its own error
            return found
        for row in rows:
            try:
                value, epoch = float(row.get(self.metric) or "nan"), int(row.get("epoch") or "")
            except (TypeError, ValueError):
                continue
            if math.isfinite(value) and epoch >= 0:
                found[epoch] = value
        return found

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the trial's log (progress-bar redraws collapsed), for errors."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        kept = [line.split("\r")[-1] for line in text.splitlines() if line.strip()]
        return "\n".join(kept[-lines:])


def owner_tag() -> str:
    """``host:pid`` of this sweep process, stored with every trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_gone(owner: str) -> bool:
    """True when ``owner`` (an :func:`owner_tag`) names a process of this machine that has ended.

    Trials of other machines are never judged: their processes cannot be seen from here.
    """
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def stop_orphaned_fit(pid: int, run_dir: Path, grace: float = 30.0) -> bool:
    """Stop the process group of an orphaned trial's ``fit``, if it still runs.

    Only a process whose environment names the trial's run folder is signalled
    (read from ``/proc``), so a recycled process id is never hit; where ``/proc`` does
    not exist nothing is stopped.

    Returns:
        True when a process was found and stopped.
    """

    try:
        environment = Path(f"/proc/{int(pid)}/environ").read_bytes().split(b"\0")
    except (OSError, ValueError, TypeError):
        return False
    if f"{RUN_DIR_ENV}={run_dir}".encode() not in environment:
        return False
    stop_group(int(pid), grace, lambda: _running(int(pid)))
    return True


def stop_group(pgid: int, grace: float, running) -> None:
    """SIGTERM the process group ``pgid``, then SIGKILL it if ``running()`` after ``grace`` s.

    Args:
        pgid: the group's id (its leader's pid: trials start in a session of their own).
        grace: seconds a trial gets to end cleanly (Lightning stops at the next batch).
        running: whether the leader still runs; for a child of this process,
            ``Popen.poll`` (which also reaps it), else :func:`_running`.
    """

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not running():
                return
            time.sleep(0.2)


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs; a zombie (ended, not yet reaped) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
