"""Training batches made ahead in a background process (data.num_workers > 0)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_UNET, make_dataset

from t7synth.data.datamodule import PairedDataModule
from t7synth.data.prefetch import EpochPrefetcher, PrefetchedEpoch
from t7synth.errors import UserError
from t7synth.registry import resolve


@pytest.fixture
def module(tmp_path):
    root = make_dataset(tmp_path / "data", n_subjects=5)  # 3 train
    config = resolve("unet", None, [*TINY_UNET, "data.num_workers=1", "data.augment.noise=0.05"], {"data": {"root": str(root)}})
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
    return len(a) == len(b) and all(torch.equal(x["source"], y["source"]) and torch.equal(x["location"], y["location"]) for x, y in zip(a, b))


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
