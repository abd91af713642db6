"""Lightning callbacks and plugins that t7synth adds to every run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_warn

from t7synth import charts, plotting
from t7synth.charts import save_progress
from t7synth.files import atomic_path
from t7synth.run_files import (
    EPOCH_TIME,
    METRICS_FILE,
    PROGRESS_FILE,
    TEST_SCORES_FILE,
    TEST_SPECTRA_FILE,
    montage_path,
)
from t7synth.scores import write_rows
from t7synth.training.history import RunCSVLogger
from t7synth.training.loggers import wandb_loggers


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
    """Checkpoint I/O that is atomic when writing and safe when reading.

    * Writes go to a hidden temporary, are flushed to the disk and then renamed
      (:func:`t7synth.files.atomic_path`), so a crash while saving never leaves a
      truncated ``last.ckpt`` for ``--resume last`` to trip over, and a full disk is
      one ``error:`` line naming the checkpoint.
    * Reads (``--resume``, the final test's best checkpoint) always unpickle with
      ``weights_only=True``. Lightning passes ``weights_only=None``, which torch turns
      into a full, code-running unpickle when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is
      set (or on torch < 2.6); an explicit ``True`` is honoured whatever the
      environment says. t7synth checkpoints hold only tensors and plain containers.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:

        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        if map_location is None:
            return super().load_checkpoint(path, weights_only=True)
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class ProgressPlot(pl.Callback):
    """Log each epoch's wall time and redraw the run's ``progress.png`` after each validation.

    nnU-Net's ``progress.png``: one picture that says how a run is going, for users
    without W&B (and for everyone after the fact). It is drawn from ``metrics.csv``,
    which holds the whole history of the run folder, resumed epochs included.

    * ``train/epoch_time`` (seconds from an epoch's first training batch to the end of
      its validation) is logged at the end of every training epoch; Lightning runs
      the epoch's validation before ``on_train_epoch_end``.
    * The picture is redrawn at the start of the epoch after a validation and when
      the fit ends: only then has Lightning handed the epoch's metrics (its time
      included) to the CSV logger, which this callback flushes before reading.

    Rank 0 draws; the PNG is written atomically.

    Args:
        run_dir: the run folder (``metrics.csv`` is read and ``progress.png`` written there).
        title: the picture's title (the run's name).
    """

    def __init__(self, run_dir: str | Path, title: str = ""):
        self.run_dir = Path(run_dir)
        self.title = title
        self._started: float | None = None
        self._pending = False

    @property
    def path(self) -> Path:
        return self.run_dir / PROGRESS_FILE

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._draw(trainer)
        self._started = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._pending = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._started is not None:
            pl_module.log(EPOCH_TIME, time.perf_counter() - self._started, on_step=False, on_epoch=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._draw(trainer)

    def _draw(self, trainer: pl.Trainer) -> None:
        if not (self._pending and trainer.is_global_zero):
            return

        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger):
                logger.save()
        save_progress(self.run_dir / METRICS_FILE, self.path, self.title)
        self._pending = False


def run_version(run_dir: str | Path) -> int | str:
    """What the progress bar shows as ``v_num``: ``3`` for ``version_3``, else the folder name."""
    name = Path(run_dir).name
    number = name.removeprefix("version_")
    return int(number) if number != name and number.isdigit() else name


def run_folder(trainer: pl.Trainer) -> Path:
    """The run directory (``runs/<experiment>/<version>``), or the trainer's root.

    Read from the first logger rather than ``trainer.log_dir``: that property
    broadcasts from rank 0, a collective that deadlocks DDP when only rank 0 asks
    (montages and score files are written by rank 0 alone).
    """
    logger = trainer.loggers[0] if trainer.loggers else None
    log_dir = getattr(logger, "log_dir", None) if logger is not None else None
    return Path(log_dir or trainer.default_root_dir)


def _log_image(trainer: pl.Trainer, key: str, path: Path, caption: str | None) -> None:
    extra = {"caption": [caption]} if caption is not None else {}
    for logger in wandb_loggers(trainer.loggers):
        logger.log_image(key=key, images=[str(path)], **extra)


class Montages(pl.Callback):
    """Draws what a validation or test step scored (``SynthesisModule._score_batch``'s
    return value): one montage per validation epoch (rank 0's first subject, also
    logged to W&B) and one per test subject, since the test runs once (test montages
    go to W&B as one gallery, :func:`t7synth.training.loggers.log_test_results`).

    A callback, so that the LightningModule computes and the run's side effects (files,
    loggers) belong to training.
    """

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, scored: dict) -> Path:
        row, subject = scored["row"], scored["subject"]
        scores = f"PSNR(brain) {row['psnr_brain']:.2f} dB  SSIM(brain) {row['ssim_brain']:.3f}"
        if stage == "val":
            title = f"{subject}  validation, epoch {pl_module.current_epoch}  {scores}"
        else:
            title = f"{subject}  test, {pl_module.scored_weights()}  {scores}"
        where = montage_path(run_folder(trainer), stage, subject, pl_module.current_epoch)
        volumes = (scored[key] for key in ("source", "prediction", "target", "mask"))
        return plotting.save_montage(where, *volumes, title)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.is_global_zero and batch_idx == 0 and outputs:
            path = self._draw(trainer, pl_module, "val", outputs)
            _log_image(trainer, "val/montage", path, outputs["subject"])

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.is_global_zero and outputs:
            self._draw(trainer, pl_module, "test", outputs)


class TestScores(pl.Callback):
    """Writes the test's per-subject rows (``SynthesisModule.test_rows``, gathered from
    every rank) to ``test_scores.csv`` and draws their power spectra beside the test
    montages (logged to W&B), on rank 0, after the test."""

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rows = pl_module.test_rows
        if not (trainer.is_global_zero and rows):
            return
        run_dir = run_folder(trainer)
        write_rows(run_dir / TEST_SCORES_FILE, rows)
        name = pl_module.config.model.name
        title = f"test power spectra, {name}, {pl_module.scored_weights()}"
        path = charts.save_spectra(run_dir / TEST_SPECTRA_FILE, rows, f"{name} (synthetic 7T)", title)
        if path is not None:
            _log_image(trainer, "test/spectra", path, None)


class RunProgressBar(pl.callbacks.TQDMProgressBar):
    """Lightning's tqdm bar with ``v_num`` naming the run folder (``version_3`` -> 3).

    Lightning joins the versions of all loggers and keeps the last four characters,
    which with the CSV and W&B loggers shows the tail of the W&B id.

    Args:
        run_dir: the run folder.
        refresh_rate: batches between redraws.
    """

    def __init__(self, run_dir: str | Path, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self.version = run_version(run_dir)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        if "v_num" in items:
            items["v_num"] = self.version
        return items
