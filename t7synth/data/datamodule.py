"""The one data module every model shares: paired subjects → slabs or patches.

Training draws 2.5D slabs or 3D patches through a TorchIO ``Queue`` (a subject is
loaded and augmented once, then many samples are cut from it). Validation and test
yield whole preprocessed volumes, which the model tiles itself with TorchIO's
``GridSampler``/``GridAggregator`` so the scores are those a user gets from predict.

Under DDP, subjects (not patches) are sharded: the Queue gets a subject-level
``DistributedSampler`` whose epoch :meth:`PairedDataModule.set_epoch` advances
(Lightning only does so for samplers it injected itself, which is switched off with
``use_distributed_sampler=False``), and validation/test subjects are dealt out
round-robin.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from t7synth.config import Config
from t7synth.data import batches
from t7synth.data.intensity_lut import fit_lut
from t7synth.data.layout import SubjectRecord, discover
from t7synth.data.preprocess import Preprocessing, load_or_preprocess
from t7synth.errors import UserError


def resolve_root(config: Config) -> Path:
    """The dataset folder: ``data.root``, or the demo dataset (generated once, cached)."""
    if config.data.root:
        return Path(config.data.root).expanduser()
    from t7synth.demo import ensure_demo_dataset

    return ensure_demo_dataset(n_subjects=config.data.demo_subjects, seed=config.data.demo_seed)


def assign_splits(records: list[SubjectRecord], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[SubjectRecord]]:
    """Split by subject: ``participants.tsv``'s ``split`` column if every row has one,
    else a seeded shuffle into test, val and train (at least one training subject)."""
    if all(r.split for r in records):
        splits = {name: [r for r in records if r.split == name] for name in ("train", "val", "test")}
    else:
        shuffled = sorted(records, key=lambda r: r.subject)
        random.Random(seed).shuffle(shuffled)
        n = len(shuffled)
        n_test = max(1, round(test_fraction * n)) if n >= 3 and test_fraction > 0 else 0
        n_val = max(1, round(val_fraction * n)) if n - n_test >= 2 and val_fraction > 0 else 0
        splits = {
            "test": shuffled[:n_test],
            "val": shuffled[n_test : n_test + n_val],
            "train": shuffled[n_test + n_val :],
        }
    if not splits["train"]:
        raise UserError("the dataset has no training subjects (check the split column of participants.tsv)")
    return splits


class PairedDataModule(pl.LightningDataModule):
    """Paired 3T/7T subjects for training, validation and test.

    Args:
        config: the resolved experiment config; ``data`` and ``geometry`` are used.
        cache_dir: where preprocessed subjects are kept; default
            ``<cache_root>/preprocessed``.

    Attributes:
        lut: the intensity-mapping baseline fitted on the training subjects (after
            :meth:`setup`).
        voxel_size: the training subjects' voxel size in mm (after :meth:`setup`).
        subjects: ``{"train"|"val"|"test": [tio.Subject]}`` after :meth:`setup`.
    """

    def __init__(self, config: Config, cache_dir: str | Path | None = None):
        super().__init__()
        self.config = config
        self.settings = Preprocessing(
            percentiles=tuple(config.data.percentiles),
            shape=tuple(config.data.shape) if config.data.shape else None,
        )
        if cache_dir is None:
            from t7synth.io import cache_root

            cache_dir = cache_root() / "preprocessed"
        self.cache_dir = Path(cache_dir)
        self.subjects: dict[str, list] = {}
        self.lut: torch.Tensor | None = None
        self.voxel_size: tuple[float, float, float] | None = None
        self._queue_sampler = None

    def prepare_data(self) -> None:
        """Find, check and preprocess every subject once (rank 0 of each node)."""
        records = discover(resolve_root(self.config))
        from tqdm.auto import tqdm

        for record in tqdm(records, desc="preprocess", unit="subject", leave=False, disable=len(records) < 2):
            load_or_preprocess(record, self.settings, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.subjects:
            return
        records = discover(resolve_root(self.config))
        data = self.config.data
        splits = assign_splits(records, data.val_fraction, data.test_fraction, data.split_seed)
        self.subjects = {name: [self._subject(r) for r in recs] for name, recs in splits.items()}
        self.lut = fit_lut((s["source"].data, s["target"].data, s["mask"].data) for s in self.subjects["train"])
        self.voxel_size = tuple(float(v) for v in self.subjects["train"][0]["source"].spacing)

    def _subject(self, record: SubjectRecord):
        import torchio as tio

        data = load_or_preprocess(record, self.settings, self.cache_dir)
        affine = data["affine"].numpy()
        geometry = self.config.geometry
        axis = geometry.axis if geometry.mode == "slab" else 0
        return tio.Subject(
            source=tio.ScalarImage(tensor=data["source"], affine=affine),
            target=tio.ScalarImage(tensor=data["target"], affine=affine),
            mask=tio.LabelMap(tensor=data["mask"], affine=affine),
            subject=record.subject,
            age=record.age,
            sex=record.sex,
            brain_mid=batches.brain_middle(data["mask"], axis),
            n_slices=data["mask"].shape[axis + 1],
        )

    # -- training ---------------------------------------------------------------
    def patch_size(self, shape) -> tuple[int, int, int]:
        """The training sample's size for a volume of ``shape``."""
        geometry = self.config.geometry
        if geometry.mode == "slab":
            return batches.slab_patch_size(shape, geometry.slices, geometry.axis, geometry.inplane)
        return tuple(geometry.patch)

    def train_dataloader(self):
        import torchio as tio
        from torch.utils.data.distributed import DistributedSampler

        from t7synth.data.transforms import build_augmentation

        data = self.config.data
        subjects = self.subjects["train"]
        dataset = tio.SubjectsDataset(subjects, transform=build_augmentation(data.augment))
        world, rank = self._world()
        sampler = None
        if world > 1:
            if len(subjects) < world:
                raise UserError(f"{len(subjects)} training subjects cannot be shared by {world} processes")
            # drop_last keeps every rank's epoch the same length, so DDP cannot hang.
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.config.seed, drop_last=True)
        self._queue_sampler = sampler
        shape = subjects[0]["source"].shape[1:]
        patch = self.patch_size(shape)
        # Centres on brain voxels: slabs and patches that see only background teach nothing.
        patch_sampler = tio.LabelSampler(patch, label_name="mask", label_probabilities={0: 0, 1: 1})
        # Ranks (and workers) must not draw identical augmentations: the Queue's
        # loader seeds its workers from torch's global RNG, so offset it by rank.
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        torch.manual_seed(self.config.seed + 1000 * rank + epoch)
        queue = tio.Queue(
            dataset,
            max_length=max(data.queue_length, data.batch_size),
            samples_per_volume=data.samples_per_volume,
            sampler=patch_sampler,
            subject_sampler=sampler,
            num_workers=data.num_workers,
            shuffle_subjects=sampler is None,
            shuffle_patches=True,
        )
        return DataLoader(queue, batch_size=data.batch_size, num_workers=0, collate_fn=batches.collate, drop_last=True)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the subject-level DDP sampler for ``epoch``."""
        if self._queue_sampler is not None:
            self._queue_sampler.set_epoch(epoch)

    # -- whole volumes --------------------------------------------------------
    def _volumes(self, split: str, limit: int | None = None):
        world, rank = self._world()
        subjects = self.subjects[split][:limit] if limit else self.subjects[split]
        return DataLoader(subjects[rank::world], batch_size=1, shuffle=False, collate_fn=batches.collate)

    def val_dataloader(self):
        return self._volumes("val", self.config.trainer.limit_val_subjects)

    def test_dataloader(self):
        return self._volumes("test")

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer if hasattr(self, "trainer") else None
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank
