"""Training batches made ahead in a background process, across epoch boundaries.

Why: a TorchIO ``Queue`` fills itself (loads subjects, cuts ``queue_length`` samples)
in the process that pops from it, whenever it runs empty, and with the outer loader in
the main process (TorchIO's Queue cannot run inside a ``DataLoader`` worker) the
training loop waits for every fill: at the paper geometry about 9 s at each epoch's
start and again at every refill (``docs/performance.md``). Here one forked process per
rank runs the epoch's loader, exactly as the main process would have, and hands the
batches over through shared memory, ``depth`` batches ahead; when an epoch's loader is
exhausted it goes straight on to the next epoch's, so the next epoch's Queue fills
while the current one ends (and during validation).

Exactness: the producer builds epoch ``e``'s loader from scratch and seeds it from
(seed, rank, e) before its first draw (``PairedDataModule.set_epoch``), whether it
continues from epoch ``e - 1`` or was started at ``e`` by a resumed run, so both draw
the same samples. The model's own randomness in the main process is seeded from the
same (seed, rank, e) at the epoch's first batch.

The process is forked (like a ``DataLoader`` worker: it shares the loaded subjects
copy-on-write) but not daemonic, so that the Queue inside it may start its own
subject-loading workers. It stops when :meth:`EpochPrefetcher.close` is called (the data
module's ``teardown``), at interpreter exit, or when it notices that its parent died.
"""

from __future__ import annotations

import os
import pickle
import queue as queue_module
import signal
import time
import weakref
from collections.abc import Callable, Iterable, Iterator

import torch

#: How long a blocked producer or consumer waits before checking the other side is alive.
_POLL_SECONDS = 1.0


class EpochPrefetcher:
    """Runs ``make_loader(epoch)`` for epoch after epoch in a background process.

    Args:
        make_loader: builds epoch ``epoch``'s training loader (seeding included); it is
            called in the forked process.
        depth: batches made ahead of the training loop.
    """

    def __init__(self, make_loader: Callable[[int], Iterable], depth: int = 2):
        self.make_loader = make_loader
        self.depth = max(1, depth)
        self._process = None
        self._queue = None
        self._next_epoch: int | None = None
        self._finalizer = None

    def batches(self, epoch: int) -> Iterator:
        """Epoch ``epoch``'s batches, in order; starts (or restarts) the producer if it is
        not about to deliver that epoch."""
        if self._process is None or self._next_epoch != epoch:
            self.close()
            self._start(epoch)
        while True:
            kind, item_epoch, payload = self._get()
            if kind == "error":
                self.close()
                raise payload
            if item_epoch != epoch:  # cannot happen: epochs are delivered in order
                self.close()
                raise RuntimeError(
                    f"the training data process delivered epoch {item_epoch} while epoch {epoch} was expected"
                )
            if kind == "end":
                self._next_epoch = epoch + 1
                return
            yield payload

    def ready(self, timeout: float) -> bool:
        """Whether a batch is waiting within ``timeout`` seconds (without taking it)."""

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue is not None and not self._queue.empty():
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        """Stop the producer (if any) and release its queue."""
        process, self._process = self._process, None
        self._next_epoch = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        _stop(process)
        if self._queue is not None:
            self._queue.close()
            self._queue.cancel_join_thread()
            self._queue = None

    def _start(self, epoch: int) -> None:
        context = torch.multiprocessing.get_context("fork")
        self._queue = context.Queue(maxsize=self.depth)
        self._process = context.Process(
            target=_produce,
            args=(self.make_loader, epoch, self._queue, os.getpid()),
            daemon=False,
            name="t7synth-train-data",
        )
        self._process.start()
        # The producer is not daemonic: stop it when this object is collected or, at the
        # latest, when the interpreter exits (finalizers run then too).
        self._finalizer = weakref.finalize(self, _stop, self._process)
        self._next_epoch = epoch

    def _get(self):
        while True:
            try:
                return self._queue.get(timeout=_POLL_SECONDS)
            except queue_module.Empty:
                if not self._process.is_alive():
                    code = self._process.exitcode
                    self.close()
                    raise RuntimeError(f"the training data process stopped unexpectedly (exit code {code})") from None


def _stop(process) -> None:
    """Terminate the producer and the Queue workers it started (its process group).

    Not ``process.terminate()`` alone: its workers would hold the process's exit pipe
    open until they notice their parent is gone (up to 5 s).
    """
    if process is None or not process.is_alive():
        return

    try:
        os.killpg(process.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        process.terminate()
    process.join(timeout=10)
    if process.is_alive():
        process.kill()
        process.join()


def _produce(make_loader, epoch: int, out, parent: int) -> None:
    """The producer's loop: every batch of ``epoch``, then an end marker, then the next epoch."""
    # Its own process group: _stop ends it with its workers, and a Ctrl-C in the
    # terminal reaches the training process alone, which then stops this one.
    os.setpgrp()
    # One intra-op thread, as DataLoader workers do (torch/utils/data/_utils/worker.py):
    # the parent's OpenMP thread pool does not survive the fork, and the first parallel
    # op here (slab sampling over a paper-sized mask) would wait for it forever.
    torch.set_num_threads(1)

    def put(item) -> bool:
        while True:
            try:
                out.put(item, timeout=_POLL_SECONDS)
                return True
            except queue_module.Full:
                if os.getppid() != parent:  # the training process is gone
                    return False

    try:
        while True:
            for batch in make_loader(epoch):
                if not put(("batch", epoch, batch)):
                    return
            if not put(("end", epoch, None)):
                return
            epoch += 1
    except BaseException as error:  # noqa: BLE001 - any failure is handed to the training process, which raises it
        try:
            pickle.dumps(error)
        except Exception:  # noqa: BLE001 - an unpicklable exception travels as its text
            error = RuntimeError(f"the training data process failed: {type(error).__name__}: {error}")
        put(("error", epoch, error))
    # Tensors reach the training process through shared memory whose file descriptors
    # this process hands over when they are unpickled there: it must outlive every
    # batch it sent, so it waits to be stopped (or orphaned) instead of exiting.

    while os.getppid() == parent:
        time.sleep(_POLL_SECONDS)


class PrefetchedEpoch:
    """One epoch's training batches from an :class:`EpochPrefetcher`, as Lightning's loader.

    Args:
        prefetcher: the running producer.
        epoch: which epoch this is.
        loader: the same epoch's loader built (not iterated) in this process: its
            length is the epoch's, and its ``dataset`` is what a user inspects.
        on_start: called before the first batch (seeds the model's randomness).
    """

    def __init__(self, prefetcher: EpochPrefetcher, epoch: int, loader, on_start: Callable[[], None]):
        self.prefetcher = prefetcher
        self.epoch = epoch
        self.loader = loader
        self.dataset = loader.dataset
        self.batch_size = loader.batch_size
        self.on_start = on_start

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        self.on_start()
        return self.prefetcher.batches(self.epoch)
