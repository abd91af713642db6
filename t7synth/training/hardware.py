"""Trainer arguments for the hardware: accelerator, devices, nodes, DDP strategy, precision."""

from __future__ import annotations

import torch
from pytorch_lightning.strategies import DDPStrategy

from t7synth.errors import UserError
from t7synth.training.precision import resolve_precision


def trainer_hardware(gpus: int, nodes: int, cpus: int, precision: str | None, find_unused: bool) -> dict:
    """Trainer arguments for the hardware: accelerator, devices, nodes, strategy, precision.

    ``devices`` is per node and ``num_nodes`` counts nodes, as in Lightning, so the world
    size is ``devices * num_nodes``; under srun that must equal the job's tasks
    (``--ntasks-per-node`` = GPUs per node), which Lightning checks. Lightning also
    detects SLURM and torchrun and then joins the ranks they started instead of
    launching its own.

    Precision: ``auto`` (or ``None``) follows the hardware
    (:func:`t7synth.training.precision.resolve_precision`: bf16 where it is native, else
    fp16 on GPUs and fp32 on CPUs); any other name is obeyed. Losses, metrics and
    whole-volume aggregation stay fp32 whatever runs the net.

    More than one process means DDP (gloo on the CPU, NCCL on GPUs). Lightning's
    distributed sampler stays off (``use_distributed_sampler=False`` in :func:`t7synth.training.trainer.fit`):
    the data module shards subjects itself.

    Args:
        gpus: GPUs per node (0: the CPU).
        nodes: number of nodes.
        cpus: CPU processes per node when ``gpus`` is 0 (more than one only tests DDP).
        precision: Lightning precision string, ``auto`` or ``None``.
        find_unused: DDP's ``find_unused_parameters``; only models that leave
            parameters unused by design (the GAN's two networks) set it.
    """
    if gpus < 0 or nodes < 1 or cpus < 1:
        raise UserError("--gpus must be >= 0, --nodes and --cpus >= 1")
    if gpus == 0:
        kwargs = {"accelerator": "cpu", "devices": cpus, "num_nodes": nodes}
        processes = cpus * nodes
    else:
        if not torch.cuda.is_available():
            raise UserError(f"--gpus {gpus}: no CUDA GPU is visible on this machine (use --gpus 0 for the CPU)")
        kwargs = {"accelerator": "gpu", "devices": gpus, "num_nodes": nodes}
        processes = gpus * nodes
    kwargs["precision"] = resolve_precision(precision, "cpu" if gpus == 0 else "cuda").precision
    if processes > 1:
        kwargs["strategy"] = DDPStrategy(
            find_unused_parameters=find_unused, process_group_backend="gloo" if gpus == 0 else None
        )
    return kwargs
