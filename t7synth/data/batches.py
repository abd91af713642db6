"""Plain-tensor batches, and the 2.5D slab ↔ channel conversions every model shares.

Lightning moves batches to the device by rebuilding their objects; TorchIO images do
not survive that (TorchIO issue #1189), so the collate functions here turn subjects
and patches into dicts of tensors (and a list of subject labels).

Batch keys (``B`` samples, spatial dims ``I, J, K`` in RAS+ array order):

* ``source``, ``target``: (B, 1, I, J, K) float32; ``mask``: (B, 1, I, J, K) uint8
* ``location``: (B, 6) int64, the patch's start and end indices in its volume
* ``age``, ``sex``, ``brain_mid``: (B,) float32; ``n_slices``: (B,) float32
* ``subject``: list of ``sub-XXX`` labels
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchio as tio

from t7synth.errors import UserError

SUBJECT_KEYS = ("age", "sex", "brain_mid", "n_slices")


def collate(items: Sequence) -> dict:
    """Stack TorchIO subjects or patches into a dict of tensors."""

    batch = {
        name: torch.stack([item[name].data for item in items])
        for name in ("source", "target", "mask")
        if name in items[0]
    }
    if tio.LOCATION in items[0]:
        batch["location"] = torch.stack([torch.as_tensor(item[tio.LOCATION]) for item in items]).long()
    for key in SUBJECT_KEYS:
        if key in items[0]:
            batch[key] = torch.tensor([float(item[key]) for item in items], dtype=torch.float32)
    if "subject" in items[0]:
        batch["subject"] = [item["subject"] for item in items]
    return batch


def slab_to_channels(x: torch.Tensor, axis: int) -> torch.Tensor:
    """(B, 1, I, J, K) slab → (B, k, H, W) with the slab's slices as channels."""
    return x[:, 0].movedim(axis + 1, 1)


def channels_to_slab(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Inverse of :func:`slab_to_channels`: (B, k, H, W) → (B, 1, I, J, K)."""
    return x.movedim(1, axis + 1).unsqueeze(1)


def centre_slice(x: torch.Tensor, axis: int) -> torch.Tensor:
    """(B, 1, I, J, K) slab → its centre slice as (B, 1, H, W)."""
    channels = slab_to_channels(x, axis)
    middle = channels.shape[1] // 2
    return channels[:, middle : middle + 1]


def slice_position(centre: torch.Tensor, brain_mid: torch.Tensor, n_slices: torch.Tensor) -> torch.Tensor:
    """The paper's slice-position token, 2 (j − mid) / n_slices (Gicquel et al. 2025, §3.1)."""
    return 2.0 * (centre.float() - brain_mid.float()) / n_slices.float().clamp(min=1)


def brain_middle(mask: torch.Tensor, axis: int) -> float:
    """Centre index of the brain's extent along ``axis`` of a (1, I, J, K) mask."""
    other = tuple(d for d in range(1, 4) if d != axis + 1)
    present = (mask > 0).any(dim=other).any(dim=0) if mask.ndim == 4 else (mask > 0).any(dim=other)
    indices = torch.nonzero(present).flatten()
    if len(indices) == 0:
        return (mask.shape[axis + 1] - 1) / 2
    return float(indices[0] + indices[-1]) / 2


def batch_share(data, world: int) -> int:
    """Training samples per process and optimiser step, from a config's ``data`` section.

    ``data.batch_scope: per_gpu``: ``data.batch_size`` itself; ``global``: the batch of
    all ``world`` processes together (a published batch), split evenly.
    """

    if data.batch_scope == "per_gpu":
        return data.batch_size
    if data.batch_size % world:
        raise UserError(
            f"config key data.batch_size {data.batch_size} is the global batch (data.batch_scope: global) "
            f"and must be divisible by the {world} processes"
        )
    return data.batch_size // world


@dataclass(frozen=True)
class BatchPlan:
    """How a run cuts its batch, decided once by the planner
    (:func:`t7synth.training.memory.batch_plan`) and handed to the Trainer
    (``accumulate_grad_batches``), the data module (its loaders' batch size) and the
    run's ``environment.yaml``, so that none of them re-derives it.

    Attributes:
        world: processes (GPUs, or CPU processes under DDP).
        accumulate: micro-batches per optimiser step.
        share: samples per process and optimiser step (:func:`batch_share`).
        micro_batch: samples per forward pass (:func:`micro_batch`).
    """

    world: int
    accumulate: int
    share: int
    micro_batch: int

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def plan_batches(data, world: int, accumulate: int) -> BatchPlan:
    """The :class:`BatchPlan` of a config's ``data`` section for ``world`` processes."""
    return BatchPlan(world, accumulate, batch_share(data, world), micro_batch(data, world, accumulate))


def micro_batch(data, world: int, accumulate: int) -> int:
    """Samples per forward pass: a process's share split into ``accumulate`` micro-batches
    (``trainer.accumulate_grad_batches``), which must divide it."""

    share = batch_share(data, world)
    if accumulate < 1 or share % accumulate:
        raise UserError(
            f"config key trainer.accumulate_grad_batches {accumulate} must divide the {share} samples each process "
            f"takes per step (data.batch_size {data.batch_size}, data.batch_scope {data.batch_scope}, {world} "
            "processes)"
        )
    return share // accumulate
