"""Trainer arguments for the hardware: accelerator, devices, nodes, DDP strategy, precision."""

from __future__ import annotations

from t7synth.errors import UserError


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
    distributed sampler stays off (``use_distributed_sampler=False`` in :func:`t7synth.training.trainer.fit`):
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
        kwargs = {
            "accelerator": "gpu",
            "devices": gpus,
            "num_nodes": nodes,
            "precision": precision or default_gpu_precision(),
        }
        processes = gpus * nodes
    if processes > 1:
        kwargs["strategy"] = DDPStrategy(
            find_unused_parameters=find_unused, process_group_backend="gloo" if gpus == 0 else None
        )
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
