"""Running ``t7synth.fit`` in subprocesses for the multi-process tests.

``strategy="ddp"`` re-executes the entry point once per rank, which cannot happen
inside pytest's own process, so the tests start a fresh interpreter on
``ddp_fit_script.py`` (``t7synth.fit`` plus a recorder) and read what each rank wrote.
Each run gets its own session (process group), so a test can kill every rank at once,
as a node failure would, and a hung run is killed rather than left behind.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from helpers import REPO, TINY_UNET

SCRIPT = Path(__file__).with_name("ddp_fit_script.py")
#: Generous: two ranks on a shared two-core machine; a hang fails instead of blocking.
TIMEOUT_S = 300


def fit_args(data: Path, runs: Path, *extra: str, model: str = "unet", tiny: list[str] | None = None) -> list[str]:
    """``t7synth.fit`` arguments for a tiny run on ``data`` writing to ``runs``."""
    sets = [x for item in (TINY_UNET if tiny is None else tiny) for x in ("--set", item)]
    return ["--model", model, "--data", str(data), "--set", f"runs_dir={runs}", *sets, "--wandb", "disabled", *extra]


def environment(record: Path, cache: Path, hold_at_step: int | None = None) -> dict[str, str]:
    """The subprocess environment: repo on the path, one thread, W&B off, own cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "T7SYNTH_", "TORCHELASTIC_"))}
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env.update(
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        WANDB_MODE="disabled",
        WANDB_SILENT="true",
        T7SYNTH_CACHE=str(cache),
        T7SYNTH_TEST_RECORD=str(record),
        PYTHONUNBUFFERED="1",
    )
    if hold_at_step is not None:
        env["T7SYNTH_TEST_HOLD_AT_STEP"] = str(hold_at_step)
    return env


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``ddp_fit_script.py args`` in its own session, output to ``log``."""
    handle = open(log, "w")
    try:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            env=env,
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        handle.close()


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL every process of the run (all ranks), then reap the first."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def run(args: list[str], env: dict[str, str], log: Path) -> None:
    """Run to completion; fail with the log's tail on a non-zero exit or a hang."""
    process = start(args, env, log)
    try:
        status = process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_group(process)
        raise AssertionError(f"run did not finish in {TIMEOUT_S} s:\n{tail(log)}") from None
    finally:
        # Rank 1 is rank 0's child: make sure nothing outlives the test.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert status == 0, f"exit status {status}:\n{tail(log)}"


def wait_for(path: Path, process: subprocess.Popen, log: Path) -> None:
    """Wait until ``path`` exists; fail if the run ends or hangs first."""
    deadline = time.monotonic() + TIMEOUT_S
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"run ended (status {process.returncode}) before {path.name}:\n{tail(log)}")
        if time.monotonic() > deadline:
            kill_group(process)
            raise AssertionError(f"{path.name} did not appear in {TIMEOUT_S} s:\n{tail(log)}")
        time.sleep(0.2)


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def record(folder: Path, rank: int) -> dict:
    """What rank ``rank`` recorded (see ``ddp_fit_script.Recorder``)."""
    return json.loads((folder / f"rank{rank}.json").read_text())


#: Wall-clock columns of metrics.csv: they differ between any two runs.
TIMING_COLUMNS = ("train/epoch_time",)


def history(run_dir: Path) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv`` as numbers (empty cells and timings left out)."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [
            {key: float(value) for key, value in row.items() if value and key not in TIMING_COLUMNS}
            for row in csv.DictReader(handle)
        ]


def weights(folder: Path, rank: int, kind: str = "weights") -> dict[str, torch.Tensor]:
    """Rank ``rank``'s parameters at the end (``weights``) or start (``initial``)."""
    return torch.load(folder / f"{kind}_rank{rank}.pt", weights_only=True)
