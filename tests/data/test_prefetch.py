"""Training batches made ahead in a background process (data.num_workers > 0)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import TINY_UNET, make_dataset

from t7synth.data.datamodule import PairedDataModule
from t7synth.data.prefetch import EpochPrefetcher, PrefetchedEpoch
from t7synth.errors import UserError
from t7synth.registry import resolve


@pytest.fixture
def module(tmp_path):
    root = make_dataset(tmp_path / "data", n_subjects=5)  # 3 train
    config = resolve(
        "unet", None, [*TINY_UNET, "data.num_workers=1", "data.augment.noise=0.05"], {"data": {"root": str(root)}}
    )
    module = PairedDataModule(config, cache_dir=tmp_path / "cache")
    module.prepare_data()
    module.setup("fit")
    module.trainer = SimpleNamespace(world_size=1, global_rank=0, current_epoch=0)
    yield module
    module.teardown("fit")


def _epoch(module, epoch):
    module.trainer.current_epoch = epoch
    loader = module.train_dataloader()
    assert isinstance(loader, PrefetchedEpoch)
    return [batch for batch in loader], len(loader)


def _same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x["source"], y["source"]) and torch.equal(x["location"], y["location"]) for x, y in zip(a, b)
    )


def test_prefetched_epochs_are_the_in_process_epochs_and_resume_exactly(module):
    first, length = _epoch(module, 0)
    second, _ = _epoch(module, 1)
    assert len(first) == length > 0
    assert not _same(first, second)  # epochs draw different samples
    # Each epoch equals the loader run here, seeded for that epoch ...
    for epoch, prefetched in ((0, first), (1, second)):
        module.trainer.current_epoch = epoch
        assert _same(prefetched, list(module.epoch_loader(epoch, lambda e=epoch: module.set_epoch(e))))
    # ... and a producer started at epoch 1 (a resumed run) draws epoch 1 again.
    module.teardown("fit")
    resumed, _ = _epoch(module, 1)
    assert _same(resumed, second)


def test_next_epoch_is_made_before_it_is_asked_for(module):
    _epoch(module, 0)
    # Nobody has asked for epoch 1 yet: its first batch is already waiting.
    assert module._prefetcher.ready(timeout=60)


def test_producer_errors_reach_the_training_process():
    def broken(epoch):
        yield {"x": torch.zeros(1)}
        raise UserError("subject sub-002: broken file")

    prefetcher = EpochPrefetcher(broken)
    try:
        batches = prefetcher.batches(0)
        assert torch.equal(next(batches)["x"], torch.zeros(1))
        with pytest.raises(UserError, match="sub-002: broken file"):
            next(batches)
        assert prefetcher._process is None
    finally:
        prefetcher.close()


def test_close_stops_the_process():
    prefetcher = EpochPrefetcher(lambda epoch: iter([{"x": torch.full((2,), float(epoch))}] * 3))
    batches = prefetcher.batches(0)
    next(batches)
    process = prefetcher._process
    assert process.is_alive()
    prefetcher.close()
    assert not process.is_alive()


_AFTER_PARALLEL_OPS = """
import torch
from t7synth.data.prefetch import EpochPrefetcher

torch.set_num_threads(2)
mask = torch.rand(1, 160, 192, 160) > 0.5  # large enough for OpenMP to run it in parallel
for _ in range(3):
    mask.any(dim=0).flatten(1).any(dim=1)  # the parent's thread pool is now in use

def make_loader(epoch):
    for i in range(2):  # what slab sampling does to a paper-sized mask, in the producer
        yield torch.nonzero(mask.any(dim=0).movedim(1, 0).flatten(1).any(dim=1)).numel() + i

prefetcher = EpochPrefetcher(make_loader)
print(list(prefetcher.batches(0)))
prefetcher.close()
"""


def test_the_producer_runs_parallel_ops_after_the_parent_did():
    """The producer is forked from a process whose OpenMP threads have run; a parallel op
    in it waited forever for the parent's pool (the paper-geometry benchmark hung so)
    until it kept to one thread, as DataLoader workers do."""
    import subprocess
    import sys

    expected = [192, 193]
    done = subprocess.run([sys.executable, "-c", _AFTER_PARALLEL_OPS], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(expected)
