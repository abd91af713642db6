"""Lightning callbacks and plugins that t7synth adds to every run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_warn


class DataStreamCheck(pl.Callback):
    """Warn when a run resumes with another seed or another number of processes.

    Each epoch's training data are drawn from a stream fixed by (seed, rank, epoch)
    (see :meth:`t7synth.data.datamodule.PairedDataModule.set_epoch`), which is what
    makes ``--resume`` exact. Resuming with a different ``--seed`` or GPU count still
    trains correctly, but from other streams, so the result will not match an
    uninterrupted run; this callback stores both in the checkpoint and says so.

    Args:
        seed: the run seed (``config.seed``).
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._world_size: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._world_size = trainer.world_size

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "world_size": self._world_size}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        seed, world = state_dict.get("seed"), state_dict.get("world_size")
        changed = []
        if seed is not None and seed != self.seed:
            changed.append(f"seed {seed} -> {self.seed}")
        if world is not None and self._world_size is not None and world != self._world_size:
            changed.append(f"processes {world} -> {self._world_size}")
        if changed:
            rank_zero_warn(
                f"resuming with {', '.join(changed)}: training continues, but each epoch's data stream differs "
                "from the uninterrupted run's, so results will not match it exactly"
            )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary name and rename, so a crash while saving never
    leaves a truncated ``last.ckpt`` for ``--resume last`` to trip over."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
