"""The one data module every model shares: paired subjects → slabs or patches.

Training draws 2.5D slabs or 3D patches through a TorchIO ``Queue`` (a subject is
loaded and augmented once, then many samples are cut from it). Validation and test
yield whole preprocessed volumes, which the model tiles itself with predict's tiling
(``t7synth.models.tiling``) so the scores are those a user gets from predict.

Under DDP, subjects (not patches) are sharded:

* training: the Queue gets a subject-level ``DistributedSampler`` (``drop_last``, so
  every rank gets as many subjects, hence as many patches and steps, and no rank waits
  forever at the end of an epoch; with ``data.slab_sampling: every`` subjects differ in
  their number of samples, so every rank draws as many as the rank with the most,
  see :meth:`PairedDataModule.epoch_length`). On the first sample of every epoch,
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

import random
import statistics
from functools import partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torchio as tio
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from t7synth.config import Config, check_sample_fits, slab_patch_size
from t7synth.data import batches
from t7synth.data.demo.cache import ensure_demo_dataset
from t7synth.data.folds import fold_splits
from t7synth.data.intensity_lut import fit_lut
from t7synth.data.layout import SubjectRecord, assign_splits, discover
from t7synth.data.prefetch import EpochPrefetcher, PrefetchedEpoch
from t7synth.data.preprocess import Preprocessing, load_or_preprocess
from t7synth.data.profile import training_profile
from t7synth.data.sampling import EpochQueue, brain_slices, slab_sampler
from t7synth.data.seeds import seed_all, training_seed
from t7synth.data.transforms import build_augmentation
from t7synth.errors import UserError
from t7synth.files import cache_root

#: Training batches made ahead when ``data.num_workers > 0``: they must cover a Queue
#: fill (about 9 s at the paper geometry) at the GPU's pace (about 2 s per batch of 56),
#: in shared memory (95 MB per batch of 56 paper slabs).
PREFETCH_BATCHES = 8


class EpochStart(torch.utils.data.Dataset):
    """A training Queue as the loader sees it, with a hook on each pass's first sample.

    The loader that pops patches from a TorchIO Queue reads indices 0, 1, … in order
    (``num_workers=0``; the Queue ignores the index), so index 0 is the start of an
    epoch, after anything Lightning does between epochs and before the Queue draws.

    Args:
        queue: the ``tio.Queue``.
        on_start: called before the first sample of every pass.
        length: samples per pass (default the Queue's own count); past the Queue's
            count it reloads its subjects and keeps drawing.
    """

    def __init__(self, queue, on_start, length: int | None = None):
        self.queue = queue
        self.on_start = on_start
        self.length = length

    def __len__(self) -> int:
        return len(self.queue) if self.length is None else self.length

    def __getitem__(self, index: int):
        if index == 0:
            self.on_start()
        return self.queue[index]


def resolve_root(config: Config) -> Path:
    """The dataset folder: ``data.root``, or the demo dataset (generated once, cached)."""
    if config.data.root:
        return Path(config.data.root).expanduser()

    data = config.data
    return ensure_demo_dataset(n_subjects=data.demo_subjects, seed=data.demo_seed, voxel_size=data.demo_voxel_size)


class PairedDataModule(pl.LightningDataModule):
    """Paired 3T/7T subjects for training, validation and test.

    Args:
        config: the resolved experiment config; ``data`` and ``geometry`` are used.
        cache_dir: where preprocessed subjects are kept; default
            ``<cache_root>/preprocessed``.
        batch_plan: the run's :class:`~t7synth.data.batches.BatchPlan`, if planned.

    Attributes:
        lut: the intensity-mapping baseline fitted on the training subjects (after
            :meth:`setup`).
        voxel_size: the training subjects' voxel size in mm (after :meth:`setup`).
        median_age: the training subjects' median age in years, 0 when none is known
            (after :meth:`setup`; stored in checkpoints for ``predict --unconditioned``).
        input_profile, intensity_histogram: what the training inputs looked like
            (:func:`~t7synth.data.profile.training_profile`, after :meth:`setup`).
        subjects: ``{"train"|"val"|"test": [tio.Subject]}`` after :meth:`setup`.
    """

    def __init__(self, config: Config, cache_dir: str | Path | None = None, batch_plan=None):
        super().__init__()
        self.config = config
        #: The run's :class:`~t7synth.data.batches.BatchPlan` (``fit`` passes it); without
        #: one the micro-batch is derived from the trainer's ``accumulate_grad_batches``.
        self.batch_plan = batch_plan
        self.settings = Preprocessing.from_config(config.data)
        if cache_dir is None:
            cache_dir = cache_root() / "preprocessed"
        self.cache_dir = Path(cache_dir)
        self.subjects: dict[str, list] = {}
        self.split_records: dict[str, list[SubjectRecord]] = {}
        self.lut: torch.Tensor | None = None
        self.voxel_size: tuple[float, float, float] | None = None
        self.median_age = 0.0
        #: What the training inputs looked like (data/profile.py), after :meth:`setup`.
        self.input_profile: torch.Tensor | None = None
        self.intensity_histogram: torch.Tensor | None = None
        self._queue_sampler = None
        self._passes = 0
        self._prefetcher = None

    def prepare_data(self) -> None:
        """Find, check and preprocess every subject once (rank 0 of each node).

        Nothing to do after :meth:`setup` (``fit`` sets the data up on rank 0 before
        the Trainer starts, to check it first).
        """
        if self.subjects:
            return
        records = discover(resolve_root(self.config))

        for record in tqdm(records, desc="preprocess", unit="subject", leave=False, disable=len(records) < 2):
            load_or_preprocess(record, self.settings, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.subjects:
            return
        records = discover(resolve_root(self.config))
        data = self.config.data
        if data.folds is None:
            splits = assign_splits(records, data.val_fraction, data.test_fraction, data.split_seed)
        else:  # one fold of a cross-validation (t7synth.data.folds)
            splits = fold_splits(records, data.folds, data.fold, data.fold_by, data.val_fraction, data.split_seed)
        #: The records of each split: split.tsv in the run folder (t7synth.data.folds).
        self.split_records = splits
        self.subjects = {name: [self._subject(r) for r in recs] for name, recs in splits.items()}
        self.check_training_subjects()
        self.lut = fit_lut((s["source"].data, s["target"].data, s["mask"].data) for s in self.subjects["train"])
        self.voxel_size = tuple(float(v) for v in self.subjects["train"][0]["source"].spacing)
        # Ages of 0 are unknown (participants.tsv left them out): not part of the median.
        ages = [float(s["age"]) for s in self.subjects["train"] if float(s["age"]) > 0]
        self.median_age = float(statistics.median(ages)) if ages else 0.0
        self.input_profile, self.intensity_histogram = training_profile(
            {
                "normalised": s["source"].data[0].numpy(),
                "mask": s["mask"].data[0].numpy(),
                "outside_fraction": s["outside_fraction"],
                "voxel_volume_ml": float(np.prod(s["source"].spacing)) / 1000.0,
            }
            for s in self.subjects["train"]
        )

    def check_shardable(self, world: int) -> None:
        """Refuse more processes than training subjects: each rank needs one.

        Raises:
            UserError: with the numbers and what to change.
        """
        subjects = self.subjects["train"]
        if len(subjects) < world:
            raise UserError(
                f"{len(subjects)} training subjects cannot be shared by {world} processes: "
                "each rank needs at least one subject (use fewer GPUs or more training subjects)"
            )

    def check_training_subjects(self) -> None:
        """Refuse training subjects the sampler cannot draw from, with one line each.

        TorchIO's samplers would fail inside the data loader, after the Trainer has
        started, with a traceback: a slab or patch larger than a volume, full in-plane
        slabs from volumes of different shapes (``data.shape: null`` keeps each
        subject's own), or a brain mask with no voxel where a sample can be centred
        (too small, or too close to the border). One sample is drawn from every
        training subject to find out; the random state is restored afterwards, so the
        check draws nothing from the training stream.

        Raises:
            UserError: naming the subject, the shapes and the setting to change.
        """

        geometry = self.config.geometry
        subjects = self.subjects["train"]
        shapes = {s["subject"]: tuple(s["source"].shape[1:]) for s in subjects}
        sizes = {name: self.patch_size(shape) for name, shape in shapes.items()}
        if len(set(sizes.values())) > 1:
            common = [max(shape[d] for shape in shapes.values()) for d in range(3)]
            first_of_shape: dict[tuple, str] = {}
            for name, shape in shapes.items():
                first_of_shape.setdefault(shape, name)
            (shape_a, a), (shape_b, b) = list(first_of_shape.items())[:2]
            raise UserError(
                f"training subjects have different shapes ({a} {'x'.join(map(str, shape_a))}, {b} "
                f"{'x'.join(map(str, shape_b))}) and full in-plane slabs need one: set data.shape (e.g. "
                f"--set data.shape=[{','.join(map(str, common))}]) to crop or pad every subject to it, or "
                "geometry.inplane"
            )
        mode = self.config.data.slab_sampling if geometry.mode == "slab" else "label"
        state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                for subject in subjects:
                    name, shape = subject["subject"], shapes[subject["subject"]]
                    check_sample_fits(self.config, shape, f"training subject {name}")
                    try:
                        next(iter(slab_sampler(mode, sizes[name], geometry.axis)(subject, 1)))
                    except (RuntimeError, ValueError, StopIteration):
                        raise UserError(
                            f"training subject {name}: its brain mask leaves no place for a "
                            f"{'x'.join(map(str, sizes[name]))} sample (a sample is centred in the mask and must "
                            f"fit in the {'x'.join(map(str, shape))} volume); check the mask or use smaller samples"
                        ) from None
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])

    def _subject(self, record: SubjectRecord):
        data = load_or_preprocess(record, self.settings, self.cache_dir)
        affine = data["affine"].numpy()
        geometry = self.config.geometry
        axis = geometry.axis if geometry.mode == "slab" else 0
        extra = {}
        if geometry.mode == "slab" and self.config.data.slab_sampling == "every":
            # TorchIO's Queue takes a subject's ``num_samples`` over samples_per_volume.
            extra["num_samples"] = len(brain_slices(data["mask"], axis, geometry.slices))
        return tio.Subject(
            source=tio.ScalarImage(tensor=data["source"], affine=affine),
            target=tio.ScalarImage(tensor=data["target"], affine=affine),
            mask=tio.LabelMap(tensor=data["mask"], affine=affine),
            subject=record.subject,
            age=record.age,
            sex=record.sex,
            brain_mid=batches.brain_middle(data["mask"], axis),
            n_slices=data["mask"].shape[axis + 1],
            outside_fraction=float(data["outside_fraction"]),
            **extra,
        )

    # -- training ---------------------------------------------------------------
    def patch_size(self, shape) -> tuple[int, int, int]:
        """The training sample's size for a volume of ``shape``."""
        geometry = self.config.geometry
        if geometry.mode == "slab":
            return slab_patch_size(shape, geometry.slices, geometry.axis, geometry.inplane)
        return tuple(geometry.patch)

    def train_dataloader(self):
        """This epoch's training batches (``t7synth.fit`` asks again every epoch).

        With ``data.num_workers: 0`` the loader of :meth:`epoch_loader`, run in this
        process. With workers, the same loaders run in a background process that works
        ahead across epoch boundaries (:mod:`t7synth.data.prefetch`): the Queue's
        fills, the next epoch's first one included, overlap the training steps instead
        of stalling them. Both draw each epoch's samples from (seed, rank, epoch) alone.
        """
        epoch = self._upcoming_epoch()
        if self.config.data.num_workers == 0:
            return self.epoch_loader(epoch, self._begin_epoch)

        if self._prefetcher is None:
            self._prefetcher = EpochPrefetcher(
                lambda e: self.epoch_loader(e, partial(self.set_epoch, e)), depth=PREFETCH_BATCHES
            )
        return PrefetchedEpoch(self._prefetcher, epoch, self.epoch_loader(epoch, self._begin_epoch), self._begin_epoch)

    def teardown(self, stage: str) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def epoch_loader(self, epoch: int, on_start):
        """A fresh Queue over this rank's training subjects, for ``epoch``.

        The Queue starts no loader here (``start_background=False``), and the loader
        hands it over wrapped in :class:`EpochStart`: on the first sample of each pass,
        :meth:`set_epoch` fixes the epoch's subject shuffle and random stream, and only
        then does the Queue create its subject loader (and with it the worker seeds).
        Seeding at the first sample rather than in a hook makes the epoch independent
        of whatever Lightning draws from the global generator before it (a resumed
        run creates one iterator fewer than an uninterrupted one, for example).
        """

        data = self.config.data
        subjects = self.subjects["train"]
        dataset = tio.SubjectsDataset(subjects, transform=build_augmentation(data.augment))
        world, rank = self._world()
        sampler = None
        if world > 1:
            self.check_shardable(world)
            # drop_last keeps every rank's epoch the same length, so DDP cannot hang.
            sampler = DistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.config.seed, drop_last=True
            )
        self._queue_sampler = sampler
        shape = subjects[0]["source"].shape[1:]
        patch = self.patch_size(shape)
        geometry = self.config.geometry
        mode = data.slab_sampling if geometry.mode == "slab" else "label"
        patch_sampler = slab_sampler(mode, patch, geometry.axis)
        # ``every`` must pop each planned sample; the other modes keep TorchIO's Queue
        # (and with it the sample streams of earlier runs).
        queue = (EpochQueue if mode == "every" else tio.Queue)(
            dataset,
            # TorchIO's Queue needs room for one whole subject's samples; with
            # ``every`` that is the subject's number of brain slices.
            max_length=max(data.queue_length, self.micro_batch_size(), *(s.get("num_samples", 0) for s in subjects)),
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
            EpochStart(queue, on_start, self.epoch_length(dataset, epoch) if mode == "every" else None),
            batch_size=self.micro_batch_size(),
            num_workers=0,
            collate_fn=batches.collate,
            drop_last=True,
            generator=generator,
        )

    def epoch_length(self, dataset, epoch: int | None = None) -> int:
        """Samples per rank in an epoch of ``data.slab_sampling: every``.

        Each training subject gives one sample per brain slice (its ``num_samples``),
        so the ranks' shards differ in size. Every rank computes every rank's count for
        the coming epoch (the subject shuffle depends only on seed and epoch) and draws
        the largest, rounded up to whole batches: ranks stay in step, and no rank's
        last slices are left in a dropped incomplete batch. A rank with fewer slices
        draws its first subjects' slices again to fill up.
        """

        world, _ = self._world()
        counts = [subject["num_samples"] for subject in dataset.dry_iter()]
        if world == 1:
            largest = sum(counts)
        else:
            epoch = self._upcoming_epoch() if epoch is None else epoch
            shards = []
            for rank in range(world):
                shard = DistributedSampler(
                    dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.config.seed, drop_last=True
                )
                shard.set_epoch(epoch)
                shards.append(sum(counts[i] for i in shard))
            largest = max(shards)
        batch = self.micro_batch_size()
        return -(-largest // batch) * batch

    def micro_batch_size(self) -> int:
        """Samples per training batch of this process: its share of ``data.batch_size``
        (``data.batch_scope``) over the plan's (else the trainer's) micro-batches per step."""
        if self.batch_plan is not None:
            return self.batch_plan.micro_batch
        world, _ = self._world()
        accumulate = getattr(self.trainer, "accumulate_grad_batches", 1) if self.trainer is not None else 1
        return batches.micro_batch(self.config.data, world, accumulate)

    def _upcoming_epoch(self) -> int:
        """The epoch the next training pass belongs to."""
        return self.trainer.current_epoch if self.trainer is not None else self._passes

    def _begin_epoch(self) -> None:
        epoch = self._upcoming_epoch()
        if self.trainer is None:  # used without a Trainer: count passes
            self._passes += 1
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Fix ``epoch``'s training data: the subject shuffle and this rank's random stream.

        Reshuffles the subject-level DDP sampler (Lightning calls ``set_epoch`` only on
        samplers it injected itself) and seeds Python, NumPy and torch with
        :func:`t7synth.data.seeds.training_seed` (seed, rank, epoch). Everything random
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
