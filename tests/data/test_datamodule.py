"""The data module: splits, slab geometry and alignment, baselines, plain-tensor batches."""

from __future__ import annotations

import pytest
import torch
from helpers import make_dataset

from t7synth.data import batches
from t7synth.data.datamodule import PairedDataModule
from t7synth.data.layout import assign_splits, discover
from t7synth.registry import resolve


def _datamodule(root, *overrides):
    config = resolve("unet", None, [f"data.root={root}", "data.batch_size=4", "data.samples_per_volume=4", *overrides])
    datamodule = PairedDataModule(config)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_target_is_the_centre_slice_of_the_input_slab(dataset, axis):
    datamodule = _datamodule(dataset, f"geometry.axis={axis}", "geometry.slices=5")
    volumes = {s["subject"]: s for s in datamodule.subjects["train"]}
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["source"].dtype == torch.float32 and isinstance(batch["location"], torch.Tensor)
    for index, subject in enumerate(batch["subject"]):
        start = int(batch["location"][index, axis])
        source = volumes[subject]["source"].data
        target = volumes[subject]["target"].data
        assert batch["source"].shape[2 + axis] == 5
        # The slab is the 5 slices from `start`; the model's target is slice start + 2.
        expected_slab = source.narrow(axis + 1, start, 5)
        assert torch.equal(batch["source"][index], expected_slab)
        centre = batches.centre_slice(batch["target"][index : index + 1], axis)[0, 0]
        assert torch.equal(centre, target[0].select(axis, start + 2))
        channels = batches.slab_to_channels(batch["source"][index : index + 1], axis)
        assert channels.shape[1] == 5
        assert torch.equal(channels[0, 2], source[0].select(axis, start + 2))


def test_slabs_are_centred_in_the_brain(dataset):
    datamodule = _datamodule(dataset)
    batch = next(iter(datamodule.train_dataloader()))
    centre_masks = batches.centre_slice(batch["mask"], 1)
    assert all(bool(m.any()) for m in centre_masks)


def test_inplane_crop_and_3d_patches(dataset):
    slab = _datamodule(dataset, "geometry.inplane=[8,10]")
    assert tuple(next(iter(slab.train_dataloader()))["source"].shape[2:]) == (8, 3, 10)
    patch = _datamodule(dataset, "geometry.mode=patch", "geometry.patch=[8,8,8]")
    assert tuple(next(iter(patch.train_dataloader()))["source"].shape[2:]) == (8, 8, 8)


def test_whole_volumes_for_validation(dataset):
    datamodule = _datamodule(dataset)
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["subject"] == ["sub-003"]
    assert batch["source"].shape[0] == 1 and batch["source"].shape[2:] == (20, 24, 18)
    assert set(batches.SUBJECT_KEYS) <= set(batch)


def test_lut_undoes_a_monotone_remap(tmp_path):
    """On data where 3T is a pure intensity remap of 7T, the LUT baseline recovers 7T."""
    import numpy as np
    from helpers import write_nifti

    from t7synth.data import naming
    from t7synth.data.intensity_lut import apply_lut
    from t7synth.measures.metrics import psnr

    root = make_dataset(tmp_path / "data", n_subjects=4)
    for subject in ("sub-001", "sub-002", "sub-003", "sub-004"):
        target = np.asarray(__import__("nibabel").load(str(naming.target_path(root, subject))).dataobj)
        write_nifti(
            naming.source_path(root, subject),
            (np.clip(target, 0, None) ** 2.0).astype(np.float32),
            np.diag([1.5, 1.5, 1.5, 1]),
        )
    datamodule = _datamodule(root)
    test = datamodule.subjects["test"][0]
    source, target, mask = test["source"].data, test["target"].data, test["mask"].data
    assert psnr(apply_lut(datamodule.lut, source, mask), target, mask) > psnr(source, target, mask) + 5


def test_seeded_split_without_split_column(tmp_path):
    root = make_dataset(tmp_path / "data", n_subjects=10, splits=False)
    records = discover(root)
    first = assign_splits(records, 0.2, 0.2, seed=1)
    again = assign_splits(records, 0.2, 0.2, seed=1)
    other = assign_splits(records, 0.2, 0.2, seed=2)
    names = lambda split: sorted(r.subject for r in split)  # noqa: E731
    assert {k: names(v) for k, v in first.items()} == {k: names(v) for k, v in again.items()}
    assert names(first["test"]) != names(other["test"]) or names(first["val"]) != names(other["val"])
    assert [len(first[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    everyone = names(first["train"]) + names(first["val"]) + names(first["test"])
    assert sorted(everyone) == names(records)
