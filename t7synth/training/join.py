"""Stop a multi-node launch whose nodes cannot meet, with one line, instead of waiting.

``torch.distributed`` waits for every rank at rendezvous for the process group's
timeout, which Lightning sets to 30 minutes: a node started with a wrong
``MASTER_ADDR``, a firewalled port or a missing node looks like a hung job for half an
hour. The timeout cannot simply be shortened, because it also bounds every collective
of the run (a long validation on one rank would then kill the others). So a watchdog
thread watches only the rendezvous, on every rank of a run that spans several nodes:

* **Rank 0** reaches rendezvous last (it preprocesses the data first, while the others
  wait for it), so once it is there only missing peers can keep it waiting: after
  ``trainer.join_timeout`` seconds it stops with one line.
* **Other ranks** may legitimately wait for rank 0's preprocessing. They stop only when
  rank 0's host cannot be reached at all: its name does not resolve, or connecting to
  it times out, for ``trainer.join_timeout`` seconds in a row. A refused connection
  means the host is up and rank 0 has not opened its port yet, so they keep waiting.

The watchdog ends as soon as the process group exists. Its stop is ``os._exit(2)``
after the ``error:`` line: the main thread is blocked inside the C++ rendezvous, where
no Python exception can reach it. Nothing is lost: nothing has been trained yet, and
everything written before is written atomically.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import torch.distributed as dist

#: How often the watchdog looks, in seconds.
POLL_SECONDS = 0.5


def reachable(address: str, port: int, timeout: float = 3.0) -> bool:
    """Whether ``address`` answers at all: a connection accepted or refused counts as reachable.

    Returns ``False`` when the name does not resolve or the connection attempt times out
    or finds no route (a wrong ``MASTER_ADDR``, a host that is down, a firewall that
    drops packets).
    """
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except ConnectionRefusedError:
        return True
    except (socket.gaierror, TimeoutError, OSError):
        return False


class JoinWatchdog:
    """A context manager that watches one rendezvous (see the module docstring).

    Args:
        timeout: seconds (``trainer.join_timeout``); 0 turns the watchdog off.
        rank_zero: whether this process is global rank 0.
        address, port: where rank 0's store listens (``MASTER_ADDR``, ``MASTER_PORT``).
        nodes: the number of nodes, for the message.
    """

    def __init__(self, timeout: float, rank_zero: bool, address: str, port: int, nodes: int):
        self.timeout = float(timeout)
        self.rank_zero = rank_zero
        self.address = address
        self.port = int(port)
        self.nodes = nodes
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> JoinWatchdog:
        if self.timeout > 0:
            self._thread = threading.Thread(target=self._watch, name="t7synth-join-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()

    def _joined(self) -> bool:
        return self._done.is_set() or (dist.is_available() and dist.is_initialized())

    def _watch(self) -> None:
        start = unreachable_since = time.monotonic()
        while not self._joined():
            now = time.monotonic()
            if self.rank_zero:
                if now - start >= self.timeout:
                    self._stop(
                        f"the other {self.nodes - 1} node(s) did not join at {self.address}:{self.port} within "
                        f"{self.timeout:g} s (trainer.join_timeout): were they started, with the same MASTER_ADDR, "
                        "MASTER_PORT and --nodes, and can they reach this host on that port?"
                    )
            elif reachable(self.address, self.port, timeout=min(3.0, self.timeout)):
                unreachable_since = time.monotonic()
            elif time.monotonic() - unreachable_since >= self.timeout:
                self._stop(
                    f"cannot reach rank 0 at {self.address}:{self.port} (MASTER_ADDR/MASTER_PORT) for "
                    f"{self.timeout:g} s (trainer.join_timeout): the name does not resolve or the host does not answer"
                )
            self._done.wait(POLL_SECONDS)

    def _stop(self, message: str) -> None:
        if self._joined():
            return
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(2)
