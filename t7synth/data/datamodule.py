"""The one data module every model shares: paired subjects → slabs or patches.

Training draws 2.5D slabs or 3D patches through a TorchIO ``Queue`` (a subject is
loaded and augmented once, then many samples are cut from it). Validation and test
yield whole preprocessed volumes, which the model tiles itself with TorchIO's
``GridSampler``/``GridAggregator`` so the scores are those a user gets from predict.

Under DDP, subjects (not patches) are sharded:

* training: the Queue gets a subject-level ``DistributedSampler`` (``drop_last``, so
  every rank gets as many subjects, hence as many patches and steps, and no rank waits
  forever at the end of an epoch). On the first sample of every epoch,
  :meth:`PairedDataModule.set_epoch` reshuffles it and reseeds the rank's random stream
  from (seed, rank, epoch): Lightning calls ``set_epoch`` only on samplers it injected
  itself, which ``use_distributed_sampler=False`` switches off, and it seeds only the
  loaders it builds, not the Queue's inner one. ``t7synth.fit`` rebuilds the Queue
  every epoch, so no state crosses epochs and a resumed run draws exactly what an
  uninterrupted one would.
* validation and test: subjects are dealt out round-robin; the shorter shards are
  padded with a repeat so every rank runs the same number of steps and reaches the
  collective that gathers the scores (the model drops repeated rows).
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from t7synth.config import Config
from t7synth.data import batches
from t7synth.data.intensity_lut import fit_lut
from t7synth.data.layout import SubjectRecord, assign_splits, discover
from t7synth.data.preprocess import Preprocessing, load_or_preprocess
from t7synth.data.seeds import seed_all, training_seed
from t7synth.errors import UserError


class EpochStart(torch.utils.data.Dataset):
    """A training Queue as the loader sees it, with a hook on each pass's first sample.

    The loader that pops patches from a TorchIO Queue reads indices 0, 1, … in order
    (``num_workers=0``; the Queue ignores the index), so index 0 is the start of an
    epoch, after anything Lightning does between epochs and before the Queue draws.

    Args:
        queue: the ``tio.Queue``.
        on_start: called before the first sample of every pass.
    """

    def __init__(self, queue, on_start):
        self.queue = queue
        self.on_start = on_start

    def __len__(self) -> int:
        return len(self.queue)

    def __getitem__(self, index: int):
        if index == 0:
            self.on_start()
        return self.queue[index]


def resolve_root(config: Config) -> Path:
    """The dataset folder: ``data.root``, or the demo dataset (generated once, cached)."""
    if config.data.root:
        return Path(config.data.root).expanduser()
    from t7synth.data.demo.cache import ensure_demo_dataset

    data = config.data
    return ensure_demo_dataset(n_subjects=data.demo_subjects, seed=data.demo_seed, voxel_size=data.demo_voxel_size)


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
            from t7synth.files import cache_root

            cache_dir = cache_root() / "preprocessed"
        self.cache_dir = Path(cache_dir)
        self.subjects: dict[str, list] = {}
        self.lut: torch.Tensor | None = None
        self.voxel_size: tuple[float, float, float] | None = None
        self._queue_sampler = None
        self._passes = 0

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
        """A fresh Queue over this rank's training subjects (built again every epoch).

        The Queue starts no loader here (``start_background=False``), and the loader
        hands it over wrapped in :class:`EpochStart`: on the first sample of each pass,
        :meth:`set_epoch` fixes the epoch's subject shuffle and random stream, and only
        then does the Queue create its subject loader (and with it the worker seeds).
        Seeding at the first sample rather than in a hook makes the epoch independent
        of whatever Lightning draws from the global generator before it (a resumed
        run creates one iterator fewer than an uninterrupted one, for example).
        """
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
                raise UserError(
                    f"{len(subjects)} training subjects cannot be shared by {world} processes: "
                    "each rank needs at least one subject (use fewer GPUs or more training subjects)"
                )
            # drop_last keeps every rank's epoch the same length, so DDP cannot hang.
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.config.seed, drop_last=True)
        self._queue_sampler = sampler
        shape = subjects[0]["source"].shape[1:]
        patch = self.patch_size(shape)
        # Centres on brain voxels: slabs and patches that see only background teach nothing.
        patch_sampler = tio.LabelSampler(patch, label_name="mask", label_probabilities={0: 0, 1: 1})
        queue = tio.Queue(
            dataset,
            max_length=max(data.queue_length, data.batch_size),
            samples_per_volume=data.samples_per_volume,
            sampler=patch_sampler,
            subject_sampler=sampler,
            num_workers=data.num_workers,
            shuffle_subjects=sampler is None,
            shuffle_patches=True,
            start_background=False,
        )
        # The loader's own generator: its per-iterator seed draw must not consume the
        # global stream (it is unused anyway: the Queue needs num_workers=0 here).
        generator = torch.Generator().manual_seed(self.config.seed)
        return DataLoader(
            EpochStart(queue, self._begin_epoch),
            batch_size=data.batch_size,
            num_workers=0,
            collate_fn=batches.collate,
            drop_last=True,
            generator=generator,
        )

    def _begin_epoch(self) -> None:
        if self.trainer is not None:
            epoch = self.trainer.current_epoch
        else:  # used without a Trainer: count passes
            epoch = self._passes
            self._passes += 1
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Fix ``epoch``'s training data: the subject shuffle and this rank's random stream.

        Reshuffles the subject-level DDP sampler (Lightning calls ``set_epoch`` only on
        samplers it injected itself) and seeds Python, NumPy and torch with
        :func:`t7synth.environment.training_seed` (seed, rank, epoch). Everything random
        in the epoch follows: augmentation, patch positions and order, the Queue's
        worker seeds, the subject order of a single process, and randomness inside the
        model's training step (the GAN's gradient-penalty mixes). So ranks never draw
        the same augmentation, and epoch k is the same whether or not the run was
        resumed before it. Called on each epoch's first sample (see
        :meth:`train_dataloader`).
        """
        if self._queue_sampler is not None:
            self._queue_sampler.set_epoch(epoch)
        _, rank = self._world()
        seed_all(training_seed(self.config.seed, rank, epoch))

    # -- whole volumes --------------------------------------------------------
    def _volumes(self, split: str, limit: int | None = None):
        return DataLoader(self.shard(split, limit), batch_size=1, shuffle=False, collate_fn=batches.collate)

    def shard(self, split: str, limit: int | None = None) -> list:
        """This rank's whole-volume subjects of ``split``: round-robin, padded to equal length.

        Rank r gets subjects r, r + world, …; shards one short are padded with the
        split's first subjects, so every rank runs the same number of steps and all of
        them reach the end-of-epoch gather (a rank with no batch would skip it and the
        others would wait forever). The model drops the repeated rows after gathering.
        """
        world, rank = self._world()
        subjects = self.subjects[split][:limit] if limit else self.subjects[split]
        if not subjects:
            return []
        own = subjects[rank::world]
        per_rank = -(-len(subjects) // world)
        return own + subjects[: per_rank - len(own)]

    def val_dataloader(self):
        return self._volumes("val", self.config.trainer.limit_val_subjects)

    def test_dataloader(self):
        return self._volumes("test")

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer if hasattr(self, "trainer") else None
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank
