"""A few U-Net updates on fixed batches, on one process or as DDP ranks.

``python ddp_equivalence_script.py OUT`` trains on two CPU ranks with the strategy
:func:`t7synth.training.hardware.trainer_hardware` returns for ``--cpus 2`` (Lightning relaunches
this script for rank 1) and writes each rank's final parameters to
``OUT/rank<r>.pt``. The test imports :func:`train` to run the single-process
reference in its own process.

Every step uses one fixed batch of ``2 * PER_RANK`` samples; with ``parts`` ranks,
rank r trains on the r-th slice of it, so two ranks with batch b see exactly the
samples one process sees with batch 2b.

Precision is ``64-true``: DDP averages gradients in another order than one process
sums them, and Adam's first steps divide by the gradient's own magnitude, so float32
rounding would show up as 1e-4-sized differences; in float64 the two updates must
agree to ~1e-12.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from t7synth.models.unet import UNetModule
from t7synth.registry import resolve
from t7synth.training.hardware import trainer_hardware

STEPS = 3
PER_RANK = 2
SHAPE = (16, 3, 16)  # a 3-slice slab along array axis 1, as the U-Net trains on
CONFIG = [
    "model.net.channels=8",
    "model.net.channel_mult=[1,2]",
    "model.net.num_res_blocks=1",
    "model.net.attention_levels=[1]",
    "model.net.norm_groups=4",
    "optim.lr=1e-3",
]


def fixed_batches(steps: int = STEPS, size: int = 2 * PER_RANK, seed: int = 0) -> list[dict]:
    """``steps`` batches of ``size`` random slabs with the keys the U-Net reads."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        start = torch.randint(0, 10, (size,), generator=generator)
        location = torch.stack([torch.zeros_like(start), start, torch.zeros_like(start)], 1)
        batches.append(
            {
                "source": torch.rand(size, 1, *SHAPE, generator=generator),
                "target": torch.rand(size, 1, *SHAPE, generator=generator),
                "mask": torch.ones(size, 1, *SHAPE, dtype=torch.uint8),
                "location": torch.cat([location, location + torch.tensor(SHAPE)], 1),
                "age": 40 + 40 * torch.rand(size, generator=generator),
                "sex": torch.randint(0, 2, (size,), generator=generator).float(),
                "brain_mid": torch.full((size,), 6.0),
                "n_slices": torch.full((size,), 12.0),
            }
        )
    return batches


class FixedBatches(pl.LightningDataModule):
    """Each rank's slice of the fixed batches (``part``/``parts`` override the rank)."""

    def __init__(self, part: int | None = None, parts: int | None = None):
        super().__init__()
        self.part, self.parts = part, parts

    def train_dataloader(self):
        part = self.trainer.global_rank if self.part is None else self.part
        parts = self.trainer.world_size if self.parts is None else self.parts
        rows = slice(part * 2 * PER_RANK // parts, (part + 1) * 2 * PER_RANK // parts)
        mine = [{key: value[rows] for key, value in batch.items()} for batch in fixed_batches()]
        return DataLoader(mine, batch_size=None)  # each item is already a batch


def build_model() -> UNetModule:
    """The tiny U-Net, initialised from seed 0 (the same on every rank and run)."""
    pl.seed_everything(0, verbose=False)
    return UNetModule(resolve("unet", None, CONFIG).to_dict())


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters()}


def train(processes: int, part: int | None = None, parts: int | None = None) -> tuple[dict, int]:
    """Train for :data:`STEPS` steps; returns (parameters, global rank)."""
    model = build_model()
    hardware = trainer_hardware(gpus=0, nodes=1, cpus=processes, precision="64-true", find_unused=False)
    trainer = pl.Trainer(
        **hardware,
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=FixedBatches(part, parts))
    assert trainer.global_step == STEPS
    return parameters(model), trainer.global_rank


if __name__ == "__main__":
    out = Path(sys.argv[1])
    weights, rank = train(processes=2)
    torch.save(weights, out / f"rank{rank}.pt")
