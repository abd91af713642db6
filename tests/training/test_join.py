"""A multi-node launch whose nodes cannot meet stops with one line after
``trainer.join_timeout``, not after Lightning's 30 minutes."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import ddp_helpers
import pytest
from helpers import make_dataset

from t7synth.training import join
from t7synth.training.join import JoinWatchdog, reachable


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.ddp
def test_rank_zero_alone_stops_after_the_join_timeout(tmp_path):
    data = make_dataset(tmp_path / "data", n_subjects=4)
    args = ddp_helpers.fit_args(data, tmp_path / "runs", "--nodes", "2", "--set", "trainer.join_timeout=3")
    env = ddp_helpers.environment(tmp_path / "record", tmp_path / "cache")
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), NODE_RANK="0")
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "t7synth.fit", *args], env=env, capture_output=True, text=True, timeout=300
    )
    elapsed = time.monotonic() - start
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and "did not join" in errors[0] and "trainer.join_timeout" in errors[0]
    assert "Traceback" not in result.stderr
    assert elapsed < 240  # far from Lightning's 30 minutes (start-up and preprocessing included)


def test_a_refused_port_is_reachable_and_a_name_that_does_not_resolve_is_not(monkeypatch):
    assert reachable("127.0.0.1", _free_port(), timeout=1.0)  # nothing listens: refused, host up

    def no_such_name(*args, **kwargs):
        raise socket.gaierror("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_such_name)
    assert not reachable("node-that-does-not-exist", 29500)


def test_other_ranks_stop_only_when_rank_zero_is_unreachable(monkeypatch):
    stops: list[str] = []
    monkeypatch.setattr(join, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(JoinWatchdog, "_stop", lambda self, message: (stops.append(message), self._done.set()))

    monkeypatch.setattr(join, "reachable", lambda *a, **k: True)  # host up, rank 0 still preprocessing
    with JoinWatchdog(0.3, rank_zero=False, address="node01", port=29500, nodes=2):
        time.sleep(0.8)
    assert stops == []

    monkeypatch.setattr(join, "reachable", lambda *a, **k: False)
    with JoinWatchdog(0.3, rank_zero=False, address="node01", port=29500, nodes=2) as watchdog:
        watchdog._thread.join(timeout=5)
    assert len(stops) == 1 and "cannot reach rank 0 at node01:29500" in stops[0]
