"""Lightning callbacks and plugins that t7synth adds to every run."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.plugins.io import TorchCheckpointIO


class SubjectSamplerEpoch(pl.Callback):
    """Advance the data module's subject-level DDP sampler every epoch.

    Lightning calls ``set_epoch`` only on samplers it injected itself; the TorchIO
    Queue's subject sampler is ours, and without this every epoch would deal the same
    subjects to the same ranks in the same order.
    """

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_epoch"):
            datamodule.set_epoch(trainer.current_epoch)


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
