"""``data.slab_sampling``: which brain slices an epoch trains on.

The tests count drawn slices: ``every`` must draw each brain slice of each training
subject in an epoch (as the authors' loop did), on a mask where TorchIO's
``LabelSampler`` cannot reach some of them, on the demo data, and under (simulated)
DDP sharding, where the ranks must also stay in step.
"""

from __future__ import annotations

from collections import Counter

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import make_dataset, write_nifti

from t7synth.data import naming
from t7synth.data.datamodule import PairedDataModule
from t7synth.data.sampling import BrainSliceSampler, brain_slices
from t7synth.errors import UserError
from t7synth.registry import resolve

AXIS = 1


def _datamodule(root, *overrides, world: tuple[int, int] | None = None):
    config = resolve(
        "unet",
        None,
        [f"data.root={root}", "data.batch_size=4", "data.samples_per_volume=40", "data.queue_length=64", *overrides],
    )
    datamodule = PairedDataModule(config)
    if world is not None:
        datamodule._world = lambda: world  # a rank of a simulated DDP run
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def _drawn(datamodule, axis: int = AXIS, slices: int = 3) -> Counter:
    """(subject, centre slice) of every sample one training epoch draws."""
    drawn: Counter = Counter()
    for batch in datamodule.train_dataloader():
        for subject, location in zip(batch["subject"], batch["location"]):
            drawn[(subject, int(location[axis]) + slices // 2)] += 1
    return drawn


def _brain(datamodule, subjects=None, axis: int = AXIS, slices: int = 3) -> set:
    return {
        (s["subject"], int(i))
        for s in datamodule.subjects["train"]
        if subjects is None or s["subject"] in subjects
        for i in brain_slices(s["mask"].data, axis, slices)
    }


def _gapped_dataset(root):
    """Masks with a hole through the in-plane centre on some slices: LabelSampler with a
    full in-plane slab can only centre on that line, so it never draws those slices."""
    make_dataset(root, n_subjects=4, shape=(20, 24, 18))
    for subject in ("sub-001", "sub-002"):
        path = naming.mask_path(root, subject)
        image = nib.load(str(path))
        mask = np.asarray(image.dataobj).copy()
        mask[8:12, 9:14, 7:11] = 0  # around the in-plane centre (10, 9) of slices 9-13
        write_nifti(path, mask, image.affine)
    return root


@pytest.mark.parametrize("queue_length", [24, 64])  # 24: the second subject spans two fills
def test_every_draws_each_brain_slice_once_where_label_cannot(tmp_path, queue_length):
    root = _gapped_dataset(tmp_path / "data")
    brain = _brain(_datamodule(root, "data.slab_sampling=every"))
    label = _drawn(_datamodule(root))  # 2 subjects x 40 draws
    assert brain - set(label), "LabelSampler should miss the slices with a hole on its line"
    every = _drawn(
        _datamodule(root, "data.slab_sampling=every", "data.samples_per_volume=8", f"data.queue_length={queue_length}")
    )
    assert set(every) == brain
    # One sample per brain slice, rounded up to whole batches with a few repeats.
    assert sum(every.values()) == -(-len(brain) // 4) * 4
    assert sum(every.values()) - len(brain) < 4


def test_uniform_reaches_every_brain_slice(tmp_path):
    root = _gapped_dataset(tmp_path / "data")
    datamodule = _datamodule(root, "data.slab_sampling=uniform", "data.samples_per_volume=100", "data.queue_length=200")
    drawn = _drawn(datamodule)
    assert sum(drawn.values()) == 200  # samples_per_volume per subject, as label
    assert set(drawn) == _brain(datamodule)


def test_every_with_an_inplane_crop_and_another_axis(tmp_path):
    root = _gapped_dataset(tmp_path / "data")
    datamodule = _datamodule(
        root, "data.slab_sampling=every", "geometry.axis=2", "geometry.inplane=[8,10]", "geometry.slices=5"
    )
    drawn: Counter = Counter()
    for batch in datamodule.train_dataloader():
        assert tuple(batch["source"].shape[2:]) == (8, 10, 5)
        for subject, location, mask in zip(batch["subject"], batch["location"], batch["mask"]):
            drawn[(subject, int(location[2]) + 2)] += 1
            assert bool(mask[0, :, :, 2].any())  # the crop holds brain on its centre slice
    assert set(drawn) == _brain(datamodule, axis=2, slices=5)


def test_ddp_ranks_draw_every_slice_in_step(tmp_path):
    """Shards whose subjects have different numbers of brain slices: every rank draws
    as many samples as the largest shard, so no rank waits for another at the end of
    the epoch, and together they draw each brain slice of the epoch's subjects."""
    root = make_dataset(tmp_path / "data", n_subjects=6, shape=(20, 24, 18))
    for subject, keep in (("sub-001", slice(6, 14)), ("sub-003", slice(3, 21))):
        path = naming.mask_path(root, subject)
        image = nib.load(str(path))
        mask = np.zeros(image.shape, dtype=np.uint8)
        mask[:, keep] = np.asarray(image.dataobj)[:, keep]
        write_nifti(path, mask, image.affine)
    ranks = [_datamodule(root, "data.slab_sampling=every", world=(2, rank)) for rank in range(2)]
    lengths = [len(dm.train_dataloader()) for dm in ranks]
    assert lengths[0] == lengths[1]
    draws = [_drawn(dm) for dm in ranks]
    seen = [{s for s, _ in d} for d in draws]
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == 2  # 4 subjects, 2 per rank
    counts = [len(_brain(dm, seen[r])) for r, dm in enumerate(ranks)]
    assert counts[0] != counts[1]  # the shards really differ
    for rank in range(2):
        assert sum(draws[rank].values()) == lengths[rank] * 4 >= max(counts)
        assert set(draws[rank]) == _brain(ranks[rank], seen[rank])


def test_a_subject_split_across_queue_fills_keeps_its_order(tmp_path):
    """The Queue asks again for the rest of a subject that did not fit; the draws go
    on where they stopped instead of restarting, so no slice is drawn twice."""
    import torchio as tio

    mask = torch.zeros(1, 6, 12, 6, dtype=torch.uint8)
    mask[:, 2:4, 1:11, 2:4] = 1
    subject = tio.Subject(mask=tio.LabelMap(tensor=mask), source=tio.ScalarImage(tensor=mask.float()))
    sampler = BrainSliceSampler((6, 3, 6), axis=1, mode="every")
    first = [int(p["location"][1]) + 1 for p in sampler(subject, num_patches=4)]
    rest = [int(p["location"][1]) + 1 for p in sampler(subject, num_patches=6)]
    assert sorted(first + rest) == list(range(1, 11))


def test_patch_geometry_refuses_slab_sampling():
    with pytest.raises(UserError, match="data.slab_sampling is 'every'.*use label"):
        resolve("vnet", None, ["data.slab_sampling=every"])


@pytest.mark.slow
def test_every_draws_each_brain_slice_of_the_demo_subjects(tmp_path):
    """The demo's masks (3 mm here, to stay fast): the LabelSampler leaves brain slices
    out; ``every`` draws each brain slice of every training subject in one epoch."""
    from t7synth.data.demo import simulate

    root = simulate.simulate_dataset(tmp_path / "demo", n_subjects=5, seed=0, voxel_size=3.0, progress=False)
    every = _datamodule(root, "data.slab_sampling=every", "data.batch_size=8", "data.queue_length=128")
    brain = _brain(every)
    assert len({s for s, _ in brain}) == len(every.subjects["train"]) >= 2
    assert set(_drawn(every)) == brain
    label = _datamodule(root, "data.batch_size=8", "data.samples_per_volume=120", "data.queue_length=128")
    assert brain - set(_drawn(label))


def test_brain_slices_leave_out_slabs_that_would_cross_the_border():
    mask = torch.zeros(1, 4, 10, 4, dtype=torch.uint8)
    mask[:, 1:3, 0:7, 1:3] = 1  # brain from the first slice on
    mask[:, 2, 9, 2] = 1  # and on the last
    assert brain_slices(mask, 1, 1).tolist() == [0, 1, 2, 3, 4, 5, 6, 9]
    assert brain_slices(mask, 1, 3).tolist() == [1, 2, 3, 4, 5, 6]
    assert brain_slices(mask, 0, 3).tolist() == [1, 2]
