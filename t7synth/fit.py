"""``python -m t7synth.fit``: train a model, then score its best checkpoint on the test split.

Examples::

    python -m t7synth.fit --model unet                               # demo data, CPU
    python -m t7synth.fit --config experiments/demo_unet.yaml --max-epochs 3
    python -m t7synth.fit --model gan_unet --gpus 4 --data /data/paired
    python -m t7synth.fit --config experiments/demo_unet.yaml --resume last
    python -m t7synth.fit --model unet --config experiments/paper_unet.yaml --summary

This module only parses arguments, builds objects and calls them. Under DDP the module
runs once per rank (Lightning re-runs it for ``--gpus N``/``--cpus N``; srun and torchrun
start every rank themselves), so everything created before ``Trainer.fit`` is either
deterministic or handed from rank 0 to the others: the run directory (see
:func:`resolve_run_dir` and :mod:`t7synth.environment`). Only rank 0 writes to it before
training starts (``config.yaml``, ``environment.yaml``) and only rank 0 talks to W&B.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from t7synth.cli import ArgumentParser, console_entry, run_main
# RUN_DIR_ENV lives in environment.py (launch logic) and stays importable from here.
from t7synth.environment import RUN_DIR_ENV, Launch, detect_launch
from t7synth.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m t7synth.fit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model name (unet, gan_unet, vnet, watnet)")
    parser.add_argument("--config", help="experiment YAML file (experiments/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (dotted), repeatable")
    parser.add_argument("--data", help="dataset folder (default: the embedded demo dataset)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per node: 0 = CPU (fp32), 1 = one GPU (bf16), >1 = DDP")
    parser.add_argument("--nodes", type=int, default=1, help="number of nodes (multi-node DDP; SLURM/torchrun are detected)")
    parser.add_argument("--cpus", type=int, default=1, help="with --gpus 0: CPU processes (>1 = DDP over gloo, for testing)")
    parser.add_argument("--precision", help="override the precision (32-true, bf16-mixed, 16-mixed)")
    parser.add_argument("--max-epochs", type=int, help="number of epochs")
    parser.add_argument("--seed", type=int, help="random seed (runs with the same seed give the same metrics on the CPU)")
    parser.add_argument("--deterministic", action="store_true", help="use only deterministic GPU kernels (slower; warns where none exists)")
    parser.add_argument("--name", help="experiment name: runs/<name>/<version> (default: config file name)")
    parser.add_argument("--resume", metavar="last|PATH", help="continue from the last checkpoint of the experiment, or from a file")
    parser.add_argument("--wandb", choices=["online", "offline", "disabled"], help="W&B mode (default: online with credentials, else offline)")
    parser.add_argument("--fast-dev-run", action="store_true", help="one training and one validation batch, then exit")
    parser.add_argument("--summary", action="store_true", help="print the parameter count and geometry, then exit")
    return parser


def resolve_config(args: argparse.Namespace):
    """The resolved :class:`~t7synth.config.Config` of the command line."""
    from t7synth.config import resolve

    extra: dict = {}
    if args.data:
        extra.setdefault("data", {})["root"] = str(Path(args.data).expanduser().resolve())
    if args.max_epochs is not None:
        extra.setdefault("trainer", {})["max_epochs"] = args.max_epochs
    if args.seed is not None:
        extra["seed"] = args.seed
    if args.name:
        extra["name"] = args.name
    if args.precision:
        extra.setdefault("trainer", {})["precision"] = args.precision
    return resolve(args.model, args.config, args.set, extra)


def versions(base: Path) -> list[Path]:
    """Existing ``version_N`` folders of an experiment, in order of N."""
    found = [p for p in base.glob("version_*") if p.is_dir() and p.name.split("_")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("_")[-1]))


def resumable_runs(base: Path) -> list[Path]:
    """Run folders of an experiment that hold ``checkpoints/last.ckpt``, oldest write first.

    Folders are ``version_N`` or, for runs that srun/torchrun started on several
    processes, ``slurm_<job>``/``torchrun_<id>``; their numbers do not order them, so
    the time ``last.ckpt`` was written does (ties broken by name, so every rank that
    reads the same folder agrees).
    """
    found = [p for p in base.glob("*") if p.is_dir() and (p / "checkpoints" / "last.ckpt").is_file()]
    return sorted(found, key=lambda p: ((p / "checkpoints" / "last.ckpt").stat().st_mtime_ns, p.name))


def resolve_run_dir(config, resume: str | None, launch: Launch | None = None) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from (or ``None``).

    ``--resume last`` continues in the experiment's run folder whose
    ``checkpoints/last.ckpt`` was written most recently; ``--resume PATH`` continues in
    the folder the checkpoint belongs to (a new one if it is elsewhere).

    A new folder must be the same on every rank, and ranks cannot talk yet:

    * ranks that Lightning starts inherit rank 0's choice through :data:`RUN_DIR_ENV`;
    * ranks that srun or torchrun start together all derive it from the job id
      (``slurm_<SLURM_JOB_ID>``, ``torchrun_<rdzv id>``, see
      :attr:`t7synth.environment.Launch.run_name`); if that folder already holds
      ``checkpoints/last.ckpt`` the job was requeued and continues from it;
    * a user may set :data:`RUN_DIR_ENV` on every node;
    * otherwise rank 0 (a single process, or the first of a Lightning launch) takes
      the next free ``version_N``. Any other rank refuses to guess.

    Args:
        config: the resolved config (``runs_dir``, ``name``).
        resume: ``None``, ``"last"`` or a checkpoint path.
        launch: how this process was started; default :func:`detect_launch`.
    """
    launch = launch or detect_launch()
    base = Path(config.runs_dir) / config.name
    inherited = os.environ.get(RUN_DIR_ENV)
    checkpoint: Path | None = None
    run_dir: Path | None = None
    if resume == "last":
        candidates = resumable_runs(base)
        if not candidates:
            raise UserError(f"--resume last: no checkpoints/last.ckpt under {base}")
        run_dir = candidates[-1]
        checkpoint = run_dir / "checkpoints" / "last.ckpt"
    elif resume:
        checkpoint = Path(resume).expanduser()
        if not checkpoint.is_file():
            raise UserError(f"--resume: checkpoint not found: {checkpoint}")
        run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    if inherited:
        run_dir = Path(inherited)
    if run_dir is None and launch.run_name:
        run_dir = base / launch.run_name
        last = run_dir / "checkpoints" / "last.ckpt"
        if checkpoint is None and last.is_file():
            # The job's own folder already has a checkpoint: SLURM requeued this job
            # (preemption, node failure, ``--requeue``). Continue it, never restart it.
            checkpoint = last
    if run_dir is None:
        if not launch.rank_zero:
            raise UserError(
                f"this rank was started by {launch.launcher} without a run folder it can share with rank 0: "
                f"set {RUN_DIR_ENV} to the same folder on every node, or launch with srun or torchrun --rdzv-id"
            )
        existing = versions(base)
        number = int(existing[-1].name.split("_")[-1]) + 1 if existing else 0
        run_dir = base / f"version_{number}"
    return run_dir, checkpoint


def trainer_hardware(gpus: int, nodes: int, cpus: int, precision: str | None, find_unused: bool) -> dict:
    """Trainer arguments for the hardware: accelerator, devices, nodes, strategy, precision.

    ``devices`` is per node and ``num_nodes`` counts nodes, as in Lightning, so the world
    size is ``devices * num_nodes``; under srun that must equal the job's tasks
    (``--ntasks-per-node`` = GPUs per node), which Lightning checks. Lightning also
    detects SLURM and torchrun and then joins the ranks they started instead of
    launching its own.

    Precision: ``--gpus 0`` is the CPU in fp32 (bf16 on request); GPUs default to
    ``bf16-mixed``, or ``16-mixed`` on GPUs without native bf16 (before Ampere).
    Losses, metrics and whole-volume aggregation stay fp32 whatever runs the net.

    More than one process means DDP (gloo on the CPU, NCCL on GPUs). Lightning's
    distributed sampler stays off (``use_distributed_sampler=False`` in :func:`train`):
    the data module shards subjects itself.

    Args:
        gpus: GPUs per node (0: the CPU).
        nodes: number of nodes.
        cpus: CPU processes per node when ``gpus`` is 0 (more than one only tests DDP).
        precision: Lightning precision string, or ``None`` for the default above.
        find_unused: DDP's ``find_unused_parameters``; only models that leave
            parameters unused by design (the GAN's two networks) set it.
    """
    from pytorch_lightning.strategies import DDPStrategy

    if gpus < 0 or nodes < 1 or cpus < 1:
        raise UserError("--gpus must be >= 0, --nodes and --cpus >= 1")
    if gpus == 0:
        kwargs = {"accelerator": "cpu", "devices": cpus, "num_nodes": nodes, "precision": precision or "32-true"}
        processes = cpus * nodes
    else:
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--gpus {gpus}: no CUDA GPU is visible on this machine (use --gpus 0 for the CPU)")
        kwargs = {"accelerator": "gpu", "devices": gpus, "num_nodes": nodes, "precision": precision or default_gpu_precision()}
        processes = gpus * nodes
    if processes > 1:
        kwargs["strategy"] = DDPStrategy(find_unused_parameters=find_unused, process_group_backend="gloo" if gpus == 0 else None)
    return kwargs


def default_gpu_precision() -> str:
    """``bf16-mixed`` where the GPU computes bf16 natively, else ``16-mixed``.

    bf16 needs no loss scaling and keeps fp32's range, so it is the default; V100s
    and T4s only emulate it (slowly), where fp16 with a gradient scaler is the
    better mixed precision.
    """
    import torch

    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no including_emulation
        native = torch.cuda.is_bf16_supported()
    return "bf16-mixed" if native else "16-mixed"


def summary(config) -> str:
    """The ``--summary`` text: trainable generator parameters and the sample geometry."""
    import torch

    from t7synth import registry

    # On the meta device nothing is allocated: the 259M-parameter paper net counts in
    # milliseconds and without a gigabyte of memory.
    with torch.device("meta"):
        model = registry.get(config.model.name)(config.to_dict())
    count = sum(p.numel() for p in model.generator().parameters() if p.requires_grad)
    geometry = config.geometry
    if geometry.mode == "slab":
        inplane = "x".join(map(str, geometry.inplane)) if geometry.inplane else "full in-plane"
        shape = f"2.5D slab: {geometry.slices} slices along axis {geometry.axis} ({inplane}), target: {geometry.target} slice(s)"
    else:
        shape = f"3D patch: {'x'.join(map(str, geometry.patch))}, inference overlap {geometry.overlap}"
    return f"model: {config.model.name}\nparameters: {count}\ngeometry: {shape}"


def main(argv: Sequence[str] | None = None, callbacks: Sequence = ()) -> int:
    """Parse ``argv`` and train; ``callbacks`` are extra Lightning callbacks (sweeps, tests)."""
    args = build_parser().parse_args(argv)
    config = resolve_config(args)
    if args.summary:
        print(summary(config))
        return 0
    inherited = os.environ.get(RUN_DIR_ENV)
    try:
        return train(args, config, callbacks)
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
    through :class:`~t7synth.callbacks.AtomicCheckpointIO`.
    """
    import pytorch_lightning as pl

    folder = run_dir / "checkpoints"
    best = pl.callbacks.ModelCheckpoint(
        dirpath=folder,
        filename="best",
        monitor="val/psnr_brain",
        mode="max",
        save_top_k=1,
        save_on_train_epoch_end=False,
        enable_version_counter=False,
    )
    # monitor=None and top-1 with a fixed name: overwrite last.ckpt every epoch.
    last = pl.callbacks.ModelCheckpoint(
        dirpath=folder,
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    return best, last


def train(args: argparse.Namespace, config, callbacks: Sequence = ()) -> int:
    """Fit, then test the best checkpoint; see the module docstring.

    Args:
        args: parsed command line (hardware, resume, W&B, fast-dev-run).
        config: the resolved config.
        callbacks: extra Lightning callbacks, appended to t7synth's own.
    """

    import pytorch_lightning as pl
    import torch

    from t7synth import registry
    from t7synth.callbacks import AtomicCheckpointIO, DataStreamCheck
    from t7synth.config import save_yaml
    from t7synth.data.datamodule import PairedDataModule
    from t7synth.environment import environment_record, write_environment
    from t7synth.loggers import build_loggers, log_test_results, wandb_mode

    module_class = registry.get(config.model.name)
    launch = detect_launch()
    run_dir, checkpoint = resolve_run_dir(config, args.resume, launch)
    # Not "did not inherit RUN_DIR_ENV": a user may set it on every node, rank 0's
    # included. Ranks that Lightning starts carry LOCAL_RANK/NODE_RANK, srun's and
    # torchrun's carry SLURM_PROCID/RANK.
    rank_zero = launch.rank_zero
    os.environ[RUN_DIR_ENV] = str(run_dir)
    hardware = trainer_hardware(args.gpus, args.nodes, args.cpus, config.trainer.precision, module_class.FIND_UNUSED_PARAMETERS)
    if rank_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(config.to_dict(), run_dir / "config.yaml")
        write_environment(run_dir, environment_record(config.seed, launch, hardware, str(checkpoint) if checkpoint else None))
    # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
    # Each epoch's training stream is then reseeded per rank by the data module.
    pl.seed_everything(config.seed, workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")

    datamodule = PairedDataModule(config)
    model = module_class(config.to_dict())
    # W&B exists on rank 0 only: Lightning would create the run there anyway, and
    # ranks that srun/torchrun start together must not race to create wandb_id.txt.
    mode = wandb_mode(args.wandb or config.wandb.mode) if rank_zero else "disabled"
    best, last = checkpoint_callbacks(run_dir)
    with _quiet_known_warnings():
        trainer = pl.Trainer(
            **hardware,
            max_epochs=config.trainer.max_epochs,
            logger=build_loggers(config, run_dir, mode),
            callbacks=[
                best,
                last,
                DataStreamCheck(config.seed),
                pl.callbacks.LearningRateMonitor("epoch"),
                # tqdm, not rich: it also reads well in log files and CI output.
                pl.callbacks.TQDMProgressBar(refresh_rate=max(1, config.trainer.log_every_n_steps // 2)),
                *callbacks,
            ],
            plugins=[AtomicCheckpointIO()],
            default_root_dir=run_dir,
            check_val_every_n_epoch=config.trainer.val_every,
            log_every_n_steps=config.trainer.log_every_n_steps,
            num_sanity_val_steps=0,
            # The data module shards subjects itself (see PairedDataModule).
            use_distributed_sampler=False,
            # A fresh Queue every epoch: nothing (leftover patches, a half-read subject
            # loader) carries from one epoch into the next, so epoch k draws the same
            # samples whether or not the run was resumed before it.
            reload_dataloaders_every_n_epochs=1,
            deterministic="warn" if args.deterministic else None,
            fast_dev_run=args.fast_dev_run,
            enable_model_summary=False,
        )
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(checkpoint) if checkpoint else None)
        if args.fast_dev_run:
            if trainer.is_global_zero:
                print(f"fast dev run finished: {run_dir}")
            return 0
        if not datamodule.subjects.get("test"):
            return 0
        best_path = best.best_model_path or last.best_model_path or None
        trainer.test(model, datamodule=datamodule, ckpt_path=best_path, verbose=False)
        if trainer.is_global_zero:
            from t7synth.report import format_test_report

            print(format_test_report(model.test_rows, config.model.name, best_path, run_dir))
        log_test_results(trainer.loggers, model.test_rows, run_dir)
        _finish_wandb(trainer)
        return 0


@contextlib.contextmanager
def _quiet_known_warnings():
    """Silence Lightning warnings that are wrong for t7synth runs, and only those.

    * "Experiment logs directory … exists and is not empty … will be deleted": the run
      folder always holds ``config.yaml`` before the CSV logger starts, and the CSV
      logger appends to ``metrics.csv`` (it deletes nothing).
    * "It is recommended to use ``self.log(…, sync_dist=True)``": validation and test
      scores are gathered from every rank before they are logged, so every rank logs
      the same value; under DDP this would print once per metric and epoch.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\(.*sync_dist=True\)`")
        yield


def _finish_wandb(trainer) -> None:
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()


#: The ``t7synth-fit`` console script.
console = console_entry(main)

if __name__ == "__main__":
    sys.exit(run_main(main))
