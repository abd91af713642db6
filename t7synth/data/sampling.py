"""Which 2.5D slabs a training epoch draws (``data.slab_sampling``).

TorchIO's ``LabelSampler`` (``label``) centres a sample on a random brain voxel among
those where the whole sample fits in the volume. For a slab with the full in-plane
size only one in-plane position fits, so a slice is drawn only where the line through
the slab's in-plane centre crosses the brain: slices at the brain's edges, or where the
mask has a gap on that line, are never drawn (2 to 10 brain slices per subject on the
demo masks). :class:`BrainSliceSampler` draws centre slices from every slice that holds
brain instead:

* ``uniform``: each draw picks one of them uniformly (``samples_per_volume`` draws per
  subject, as ``label``);
* ``every``: each one exactly once per epoch, in random order (``num_samples`` per
  subject is its number of brain slices), as the authors' training loop did
  (``func/training/LoadingModel.py``: the slices ``bot`` to ``top - 1`` of every
  training subject, shuffled by the ``DataLoader``).

A brain slice qualifies when its whole slab fits in the volume (``k // 2`` slices on
either side); with the paper's crop every brain slice does. The in-plane position of
a smaller ``geometry.inplane`` crop is centred on a random brain voxel of the chosen
slice and shifted to fit. With spatial augmentation the slices are those of the
augmented volume, so ``every`` is then exact only up to the augmentation's change of
the brain's extent.

Everything random goes through torch's global generator, which the data module seeds
per (seed, rank, epoch) before the Queue draws (``datamodule.set_epoch``), exactly as
for ``LabelSampler``: resumed runs and DDP ranks draw what they drew before.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

import torch
import torchio as tio
from torchio.data.sampler import PatchSampler


def brain_slices(mask: torch.Tensor, axis: int, slices: int) -> torch.Tensor:
    """Indices along ``axis`` of the slices of a (1, I, J, K) mask that hold brain and
    around which a ``slices``-thick slab fits in the volume."""
    present = (mask > 0).any(dim=0).movedim(axis, 0).flatten(1).any(dim=1)
    half = slices // 2
    indices = torch.nonzero(present).flatten()
    return indices[(indices >= half) & (indices < present.numel() - half)]


class BrainSliceSampler(PatchSampler):
    """A TorchIO patch sampler of slabs centred on the brain's slices (module docstring).

    Args:
        patch_size: the slab's size (``slices`` along ``axis``).
        axis: the slicing axis (0, 1 or 2 of the RAS+ array).
        mode: ``uniform`` or ``every``.
        label_name: the subject's brain mask image.
    """

    def __init__(self, patch_size, axis: int, mode: str, label_name: str = "mask"):
        if mode not in ("uniform", "every"):
            raise ValueError(f"mode must be uniform or every, got {mode!r}")
        super().__init__(patch_size)
        self.axis = axis
        self.mode = mode
        self.label_name = label_name
        # The Queue asks again for the rest of a subject whose samples did not fit in it
        # (``Queue._fill``: ``_incomplete_subject``); its draws continue the same order,
        # so ``every`` still yields each slice once.
        self._current: tuple[object, Iterator] | None = None

    def _generate_patches(self, subject, num_patches: int | None = None):
        if self._current is not None and self._current[0] is subject:
            draws = self._current[1]
        else:
            draws = self._draws(subject)
            self._current = (subject, draws)
        count = 0
        while num_patches is None or count < num_patches:
            yield next(draws)
            count += 1

    def _draws(self, subject) -> Iterator:
        mask = subject[self.label_name].data
        slabs = int(self.patch_size[self.axis])
        centres = brain_slices(mask, self.axis, slabs)
        if len(centres) == 0:
            raise RuntimeError(f"subject {subject.get('subject', '?')}: no brain slice fits a {slabs}-slice slab")
        while True:
            if self.mode == "every":
                order = centres[torch.randperm(len(centres))]
            else:
                order = centres[torch.randint(len(centres), (1,))]
            for centre in order.tolist():
                yield self.extract_patch(subject, self._start(mask, centre))

    def _start(self, mask: torch.Tensor, centre: int) -> tuple[int, int, int]:
        """The slab's first voxel: centred on slice ``centre`` and, in-plane, on a random
        brain voxel of that slice, shifted to fit the volume."""
        shape = mask.shape[1:]
        start = [0, 0, 0]
        start[self.axis] = centre - int(self.patch_size[self.axis]) // 2
        inplane = [d for d in range(3) if d != self.axis]
        if any(int(self.patch_size[d]) < shape[d] for d in inplane):
            plane = mask[0].select(self.axis, centre) > 0
            voxels = torch.nonzero(plane)
            pick = voxels[torch.randint(len(voxels), (1,))][0]
            for position, d in zip(pick.tolist(), inplane):
                size = int(self.patch_size[d])
                start[d] = min(max(position - size // 2, 0), shape[d] - size)
        return tuple(start)


class EpochQueue(tio.Queue):
    """A TorchIO ``Queue`` whose last fill of a pass holds only that pass's samples.

    ``tio.Queue._fill`` (TorchIO 1.2) first finishes the subject whose samples did not
    fit in the previous fill, then keeps drawing subjects; past the last one it
    silently restarts its subject loader and shuffles those extra samples in with the
    pass's last ones, so the pass ends before some of its own samples are popped. For
    ``every`` that loses slices. Here the fill that finishes the pass's last subject
    stops there; only a pass asked for more samples than its subjects hold (whole
    batches, or the largest DDP shard: ``PairedDataModule.epoch_length``) reloads
    the subjects, once every planned sample has been drawn.
    """

    def _fill(self) -> None:
        finishing = self._incomplete_subject is not None and self._num_sampled_subjects >= self.num_subjects
        if not finishing:
            super()._fill()
            return
        subject, remaining = self._incomplete_subject, self._num_patches_incomplete
        self._incomplete_subject = None
        self.patches_list.extend(islice(self.sampler(subject), remaining))
        if self.shuffle_patches:
            self._shuffle_patches_list()


def slab_sampler(mode: str, patch_size, axis: int):
    """The TorchIO sampler of ``data.slab_sampling`` (``label``: TorchIO's LabelSampler)."""

    if mode == "label":
        # Centres on brain voxels: samples that see only background teach nothing.
        return tio.LabelSampler(patch_size, label_name="mask", label_probabilities={0: 0, 1: 1})
    return BrainSliceSampler(patch_size, axis, mode)
