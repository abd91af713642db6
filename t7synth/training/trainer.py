"""Train a model, then score a checkpoint on the test split: what ``fit`` runs.

Under DDP this runs once per rank (Lightning re-runs the command for ``--gpus N`` /
``--cpus N``; srun and torchrun start every rank themselves), so everything created
before ``Trainer.fit`` is either deterministic or handed from rank 0 to the others: the
run directory (:mod:`t7synth.training.run_dir`). Only rank 0 writes to it before
training starts (``config.yaml``, ``environment.yaml``) and only rank 0 talks to W&B.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
import wandb

from t7synth import registry
from t7synth.data.datamodule import PairedDataModule
from t7synth.data.folds import write_split_table
from t7synth.errors import UserError
from t7synth.run_files import BEST, LAST, PROGRESS_FILE, checkpoint_dir, format_test_report, write_config
from t7synth.training.callbacks import (
    AtomicCheckpointIO,
    DataStreamCheck,
    Montages,
    ProgressPlot,
    RunProgressBar,
    TestScores,
)
from t7synth.training.hardware import trainer_hardware
from t7synth.training.join import JoinWatchdog
from t7synth.training.launch import RUN_DIR_ENV, detect_launch
from t7synth.training.loggers import (
    build_loggers,
    check_wandb_mode,
    log_run_files,
    log_test_results,
    wandb_loggers,
    wandb_mode,
)
from t7synth.training.memory import batch_plan
from t7synth.training.nonfinite import NonFiniteGuard
from t7synth.training.precision import resolve_precision
from t7synth.training.preflight import check_trains_something
from t7synth.training.record import environment_record, write_environment
from t7synth.training.run_dir import check_resume, discard_if_empty, existing_ancestor, resolve_run_dir
from t7synth.training.wandb_steps import WandbStepState


@dataclass(frozen=True)
class FitOptions:
    """How to run a resolved config: the hardware and run controls of the command line.

    Attributes:
        gpus: GPUs per node (0: the CPU).
        nodes: number of nodes.
        cpus: CPU processes when ``gpus`` is 0 (more than one: DDP over gloo, for tests).
        resume: ``None``, ``"last"`` or a checkpoint path.
        wandb: ``online``/``offline``/``disabled``, or ``None`` for the config's mode.
        fast_dev_run: one training and one validation batch, then stop.
        deterministic: deterministic GPU kernels where they exist.
    """

    gpus: int = 0
    nodes: int = 1
    cpus: int = 1
    resume: str | None = None
    wandb: str | None = None
    fast_dev_run: bool = False
    deterministic: bool = False


@dataclass
class FitResult:
    """What a finished ``fit`` reports. ``report`` is the text to print (rank 0 only)."""

    run_dir: Path
    report: str | None = None


def fit(
    config, options: FitOptions = FitOptions(), callbacks: Sequence = (), init_weights: dict | None = None
) -> FitResult:
    """Fit ``config``, then test its ``trainer.test_checkpoint`` (best or last); see the module docstring.

    Args:
        config: the resolved :class:`~t7synth.config.Config`.
        options: hardware, resume, W&B and fast-dev-run settings.
        callbacks: extra Lightning callbacks (sweeps, tests), after t7synth's own.
        init_weights: ``fit --init``: the generator's starting weights, already
            checked against this config's network (``t7synth.inference.initial``);
            loaded strictly into the freshly built model, before the optimiser exists.
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    try:
        return _fit(config, options, callbacks, init_weights)
    finally:
        # Only the processes this run launches may inherit its folder, not a later
        # run in the same Python process (tests, sweeps).
        if inherited is None:
            os.environ.pop(RUN_DIR_ENV, None)


def checkpoint_callbacks(run_dir: Path) -> tuple:
    """``best.ckpt`` (highest in-brain validation PSNR) and ``last.ckpt`` (every epoch).

    Two callbacks, because Lightning's ``save_last`` only refreshes ``last.ckpt`` when
    the monitored metric improved: after a crash, ``--resume last`` would go back to
    the best epoch rather than the latest. ``last`` is saved at the end of every
    training epoch, after validation and the epoch's scheduler steps, so a resumed run
    starts the next epoch exactly where the checkpointed one ended. Both are written
    through :class:`~t7synth.training.callbacks.AtomicCheckpointIO`.
    """

    folder = checkpoint_dir(run_dir)
    best = pl.callbacks.ModelCheckpoint(
        dirpath=folder,
        filename=BEST,
        monitor="val/psnr_brain",
        mode="max",
        save_top_k=1,
        save_on_train_epoch_end=False,
        enable_version_counter=False,
    )
    # monitor=None and top-1 with a fixed name: overwrite last.ckpt every epoch.
    last = pl.callbacks.ModelCheckpoint(
        dirpath=folder,
        filename=LAST,
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    return best, last


def _fit(config, options: FitOptions, callbacks: Sequence, init_weights: dict | None = None) -> FitResult:
    module_class = registry.get(config.model.name)
    launch = detect_launch()
    # Not "did not inherit RUN_DIR_ENV": a user may set it on every node, rank 0's
    # included. Ranks that Lightning starts carry LOCAL_RANK/NODE_RANK, srun's and
    # torchrun's carry SLURM_PROCID/RANK.
    rank_zero = launch.rank_zero
    precision = resolve_precision(config.trainer.precision, "cuda" if options.gpus else "cpu")
    hardware = trainer_hardware(
        options.gpus, options.nodes, options.cpus, precision.precision, module_class.FIND_UNUSED_PARAMETERS
    )
    _check_nodes(options.nodes, launch)
    # The batch split and, on GPUs, the memory plan: a config that cannot fit is refused
    # here, before anything is built or written (t7synth.training.memory).

    world = (options.gpus or options.cpus) * options.nodes
    plan = batch_plan(config, options.gpus, world, hardware["precision"])
    # W&B exists on rank 0 only: Lightning would create the run there anyway, and
    # ranks that srun/torchrun start together must not race to create wandb_id.txt.
    mode = wandb_mode(options.wandb or config.wandb.mode) if rank_zero else "disabled"
    check_wandb_mode(mode)
    existed = existing_ancestor(Path(config.runs_dir) / config.name)
    run_dir, checkpoint = resolve_run_dir(config, options.resume, launch)
    # Everything a user can get wrong is checked before anything is written to the run
    # folder and before Lightning prints its banner: the checkpoint (read safely, its
    # config compared, its tensors against the network built on the meta device) and
    # every subject (read in full and preprocessed into the cache). A refused fit
    # leaves no run folder behind and config.yaml of a resumed run untouched.
    try:
        resume = check_resume(checkpoint, config) if checkpoint is not None else None
        datamodule = PairedDataModule(config, batch_plan=plan)
        if rank_zero:
            datamodule.prepare_data()
            datamodule.setup("fit")
            datamodule.check_shardable(world)
            check_trains_something(config, datamodule.subjects, world, plan.accumulate)
            write_config(run_dir, config.to_dict())
            write_split_table(run_dir, datamodule.split_records)
            write_environment(
                run_dir,
                environment_record(
                    config.seed,
                    launch,
                    hardware,
                    str(checkpoint) if checkpoint else None,
                    precision,
                    batch_plan=plan.to_dict(),
                ),
            )
    except BaseException:
        if rank_zero:
            discard_if_empty(run_dir, existed)
        raise
    if rank_zero:  # after the checks: a refused fit prints its error line alone
        print(precision.describe(), file=sys.stderr)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
    # Each epoch's training stream is then reseeded per rank by the data module.
    pl.seed_everything(config.seed, workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")

    model = module_class(config.to_dict())
    if init_weights is not None and checkpoint is None:
        # Fine-tuning: the given weights, a fresh optimiser, schedule and epoch counter.
        model.generator().load_state_dict(init_weights, strict=True)
    best, last = checkpoint_callbacks(run_dir)
    loggers = build_loggers(config, run_dir, mode, resume)
    guard = NonFiniteGuard(config.trainer.nonfinite_patience)
    result = FitResult(run_dir)
    with _quiet_known_warnings():
        trainer = pl.Trainer(
            **hardware,
            max_epochs=config.trainer.max_epochs,
            logger=loggers,
            callbacks=[
                best,
                last,
                DataStreamCheck(config.seed),
                guard,
                WandbStepState.of(loggers),
                *early_stopping(config),
                # One-cycle steps per batch: its LR is logged per step, so progress.png
                # draws the schedule, not an epoch staircase; StepLR changes per epoch.
                pl.callbacks.LearningRateMonitor("step" if config.optim.schedule == "onecycle" else "epoch"),
                ProgressPlot(run_dir, f"{config.name}/{run_dir.name} ({config.model.name})"),
                Montages(),
                TestScores(),
                # tqdm, not rich: it also reads well in log files and CI output.
                RunProgressBar(run_dir, refresh_rate=max(1, config.trainer.log_every_n_steps // 2)),
                *callbacks,
            ],
            plugins=[AtomicCheckpointIO()],
            default_root_dir=run_dir,
            check_val_every_n_epoch=config.trainer.val_every,
            accumulate_grad_batches=plan.accumulate,
            log_every_n_steps=config.trainer.log_every_n_steps,
            num_sanity_val_steps=0,
            # The data module shards subjects itself (see PairedDataModule).
            use_distributed_sampler=False,
            # A fresh Queue every epoch: nothing (leftover patches, a half-read subject
            # loader) carries from one epoch into the next, so epoch k draws the same
            # samples whether or not the run was resumed before it.
            reload_dataloaders_every_n_epochs=1,
            deterministic="warn" if options.deterministic else None,
            fast_dev_run=options.fast_dev_run,
            enable_model_summary=False,
        )
        with join_watchdog(trainer, options.nodes, rank_zero, config.trainer.join_timeout):
            trainer.fit(model, datamodule=datamodule, ckpt_path=str(checkpoint) if checkpoint else None)
        guard.check()  # a run stopped by non-finite steps ends in its one line, untested
        if options.fast_dev_run:
            if trainer.is_global_zero:
                result.report = f"fast dev run finished: {run_dir}"
            return result
        if not datamodule.subjects.get("test"):
            if trainer.is_global_zero:
                result.report = (
                    f"Training finished: {run_dir}\nThe dataset has no test subjects, so nothing was tested "
                    f"(checkpoints: {checkpoint_dir(run_dir)}; curves: {run_dir / PROGRESS_FILE})."
                )
            _finish_wandb(
                trainer,
                run_dir,
                (best.best_model_path or last.best_model_path) if config.wandb.log_checkpoint else None,
            )
            return result
        # trainer.test_checkpoint: best (highest val/psnr_brain) or last (the final
        # epoch's, as the authors released); "last" also stands in when no validation ran.
        chosen = last if config.trainer.test_checkpoint == "last" else best
        test_path = chosen.best_model_path or last.best_model_path or None
        trainer.test(model, datamodule=datamodule, ckpt_path=test_path, verbose=False)
        if trainer.is_global_zero:
            result.report = format_test_report(model.test_rows, config.model.name, test_path, run_dir)
        log_test_results(trainer.loggers, model.test_rows, run_dir)
        _finish_wandb(
            trainer,
            run_dir,
            test_path if config.wandb.log_checkpoint else None,
            getattr(model, "_checkpoint_epoch", None),
        )
        return result


def early_stopping(config) -> list:
    """Lightning's ``EarlyStopping`` on ``val/psnr_brain`` with ``trainer.early_stopping_patience``, or none.

    Checked after each validation only (not at a training epoch's end, where the
    metric may not exist yet); the patience counts validations, so with
    ``trainer.val_every: k`` it spans ``k * patience`` epochs.
    """
    patience = config.trainer.early_stopping_patience
    if patience is None:
        return []

    return [
        pl.callbacks.EarlyStopping(
            monitor="val/psnr_brain", mode="max", patience=patience, check_on_train_epoch_end=False, verbose=False
        )
    ]


def join_watchdog(trainer, nodes: int, rank_zero: bool, timeout: float):
    """A :class:`~t7synth.training.join.JoinWatchdog` for a run over several nodes, else nothing.

    The address is the cluster environment's (SLURM's first node, torchrun's or
    ``MASTER_ADDR``), read from the trainer's strategy as Lightning will use it.
    """
    if nodes < 2 or timeout <= 0:
        return contextlib.nullcontext()
    environment = trainer.strategy.cluster_environment
    return JoinWatchdog(timeout, rank_zero, environment.main_address, environment.main_port, nodes)


def _check_nodes(nodes: int, launch) -> None:
    """Refuse ``--nodes N`` that nothing would start, rather than wait for it forever.

    Under srun or torchrun the launcher starts every node's processes. A plain
    command can only join other nodes started by hand with ``MASTER_ADDR``,
    ``MASTER_PORT`` and ``NODE_RANK`` set on each (Lightning's own multi-node
    environment); without them it would wait for nodes that never come.
    """
    if nodes < 2 or launch.launcher != "lightning":
        return
    if not os.environ.get("MASTER_ADDR"):
        raise UserError(
            f"--nodes {nodes}: nothing starts the other {nodes - 1} node(s): run the command on every node under "
            f"srun or torchrun, or set MASTER_ADDR, MASTER_PORT and NODE_RANK (0 to {nodes - 1}) on each yourself"
        )
    if launch.rank_zero:
        print(
            f"note: waiting for the other {nodes - 1} node(s) to join at {os.environ['MASTER_ADDR']}:"
            f"{os.environ.get('MASTER_PORT', '?')} (started by hand with NODE_RANK 1 to {nodes - 1}); "
            "stops after trainer.join_timeout seconds if they cannot meet",
            file=sys.stderr,
        )


@contextlib.contextmanager
def _quiet_known_warnings():
    """Silence Lightning warnings that are wrong for t7synth runs, and only those.

    * "Experiment logs directory … exists and is not empty … will be deleted": the run
      folder always holds ``config.yaml`` before the CSV logger starts, and the CSV
      logger appends to ``metrics.csv`` (it deletes nothing).
    * "It is recommended to use ``self.log(…, sync_dist=True)``": validation and test
      scores are gathered from every rank before they are logged, so every rank logs
      the same value; under DDP this would print once per metric and epoch.
    * "Checkpoint directory … exists and is not empty": ``--resume`` continues in the
      folder that holds ``last.ckpt``, by design.
    * "``isinstance(treespec, LeafSpec)`` is deprecated" (a ``FutureWarning``):
      Lightning 2.6's result collection builds torch's deprecated ``LeafSpec``; nothing
      a user can change.
    * Lightning's adverts, "💡 Tip: … try installing litlogger / litmodels": info
      lines of its ``rank_zero`` logger, dropped by a logging filter on that logger
      (Lightning's documented way to change its console output is the standard
      ``logging`` module).
    """

    tips = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    advert = _DropAdverts()
    tips.addFilter(advert)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
            warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\(.*sync_dist=True\)`")
            warnings.filterwarnings(
                "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
            )
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            yield
    finally:
        tips.removeFilter(advert)


class _DropAdverts:
    """A ``logging`` filter that drops Lightning's "💡 Tip:" adverts."""

    @staticmethod
    def filter(record) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


def _finish_wandb(trainer, run_dir: Path, checkpoint: str | None = None, epoch: int | None = None) -> None:
    """Save the run's files (and ``checkpoint``, with ``wandb.log_checkpoint``) with its W&B run, and end it."""

    log_run_files(trainer.loggers, run_dir, checkpoint or None, epoch)
    if wandb_loggers(trainer.loggers):
        wandb.finish()
