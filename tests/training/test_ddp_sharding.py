"""The data module's distributed data path, with a faked world size and rank.

``PairedDataModule`` learns its rank and world size from ``self.trainer`` only, so a
stand-in trainer is enough to see what each of several ranks would load, without
starting processes: which subjects, how many batches, and which random augmentations.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from helpers import TINY_UNET, make_dataset

from t7synth.data.datamodule import PairedDataModule
from t7synth.data.seeds import training_seed
from t7synth.errors import UserError
from t7synth.registry import resolve

pytestmark = pytest.mark.ddp

SUBJECTS = {f"sub-{i:03d}" for i in range(1, 6)}  # the training split of a 7-subject dataset


@pytest.fixture
def datamodule_for(tmp_path):
    """``datamodule_for(world, rank, *overrides)``: a set-up module that sees that rank."""
    root = make_dataset(tmp_path / "data", n_subjects=7)  # 5 train, 1 val, 1 test
    cache = {}

    def build(world: int, rank: int, *overrides: str) -> PairedDataModule:
        key = overrides
        if key not in cache:
            config = resolve("unet", None, [*TINY_UNET, *overrides], {"data": {"root": str(root)}})
            module = PairedDataModule(config, cache_dir=tmp_path / "cache")
            module.prepare_data()
            module.setup("fit")
            cache[key] = module
        module = cache[key]
        module.trainer = SimpleNamespace(world_size=world, global_rank=rank, current_epoch=0)
        return module

    return build


def _epoch(module: PairedDataModule, epoch: int) -> list[dict]:
    """The batches one rank trains on in ``epoch``, as the Trainer would draw them."""
    module.trainer.current_epoch = epoch
    return list(module.train_dataloader())


def _subjects(batches: list[dict]) -> set[str]:
    return {name for batch in batches for name in batch["subject"]}


def test_training_subjects_are_disjoint_per_epoch_and_reshuffled(datamodule_for):
    seen: set[str] = set()
    deals = []
    for epoch in range(4):
        shards = [_subjects(_epoch(datamodule_for(2, rank), epoch)) for rank in (0, 1)]
        assert len(shards[0]) == len(shards[1]) == 2  # 5 subjects, 2 ranks: 2 each, 1 sits out
        assert not shards[0] & shards[1]
        assert shards[0] | shards[1] <= SUBJECTS
        seen |= shards[0] | shards[1]
        deals.append(tuple(frozenset(s) for s in shards))
    assert seen == SUBJECTS  # the one left out changes, so every subject is used
    assert len(set(deals)) > 1


def test_every_rank_runs_the_same_number_of_steps(datamodule_for):
    for world in (2, 3):
        lengths = []
        for rank in range(world):
            module = datamodule_for(world, rank)
            loader = module.train_dataloader()
            drawn = _epoch(module, 0)
            assert len(drawn) == len(loader)  # Lightning's epoch length is what is drawn
            lengths.append(len(drawn))
        assert len(set(lengths)) == 1 and lengths[0] > 0, (world, lengths)


def test_ranks_and_epochs_draw_different_augmentations(datamodule_for):
    """Noise seeds (recorded by TorchIO) differ across ranks and epochs, repeat exactly,
    and come from the Queue's worker process as well as from the main process."""

    def noise_draws(world, rank, epoch, *overrides) -> list[str]:
        module = datamodule_for(world, rank, "data.augment.noise=0.05", "data.augment.flip=0.5", *overrides)
        module.trainer.current_epoch = epoch
        wrapped = module.train_dataloader().dataset
        patches = [wrapped[i] for i in range(len(wrapped))]
        return [repr(t) for patch in patches for t in patch.history if type(t).__name__ == "Noise"]

    for workers in ("data.num_workers=0", "data.num_workers=1"):
        rank0, rank1 = noise_draws(2, 0, 0, workers), noise_draws(2, 1, 0, workers)
        assert rank0 and rank1 and not set(rank0) & set(rank1), workers
        assert noise_draws(2, 0, 0, workers) == rank0, workers  # reproducible: resume relies on it
        assert not set(noise_draws(2, 0, 1, workers)) & set(rank0), workers


def test_training_seeds_are_distinct_per_rank_and_epoch():
    seeds = {training_seed(0, rank, epoch) for rank in range(8) for epoch in range(50)}
    assert len(seeds) == 400
    assert training_seed(0, 1, 0) != training_seed(0, 0, 1) and training_seed(1, 0, 0) != training_seed(0, 0, 0)


def test_evaluation_shards_are_padded_to_equal_length_and_cover_the_split(datamodule_for):
    module = datamodule_for(1, 0)
    module.subjects["val"] = module.subjects["train"][:3]  # three volumes to deal out
    expected = {s["subject"] for s in module.subjects["val"]}
    for world in (2, 4):
        shards = [[s["subject"] for s in datamodule_for(world, rank).shard("val")] for rank in range(world)]
        assert len({len(shard) for shard in shards}) == 1, shards  # same step count everywhere
        assert set().union(*shards) == expected
        assert sum(map(len, shards)) - len(expected) < world  # at most one repeat per rank


def test_more_ranks_than_training_subjects_is_a_clear_error(datamodule_for):
    with pytest.raises(UserError, match="5 training subjects cannot be shared by 6 processes"):
        datamodule_for(6, 0).train_dataloader()


def test_gathered_rows_drop_the_padding_repeats():
    import torch

    from t7synth.models.unet import UNetModule

    with torch.device("meta"):
        model = UNetModule(resolve("unet", None, TINY_UNET).to_dict())
    model._trainer = SimpleNamespace(world_size=1)
    row = {"subject": "sub-001", "model": "model", "psnr_brain": 20.0}
    model._rows = [row, {"subject": "sub-002", "model": "model", "psnr_brain": 22.0}, dict(row)]
    rows = model._gather_rows()
    assert [r["subject"] for r in rows] == ["sub-001", "sub-002"]
