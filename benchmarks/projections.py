"""What the paper models need on GPUs, derived from counts (no GPU needed).

* FLOPs per training sample: ``torch.utils.flop_counter.FlopCounterMode`` over one
  forward and backward pass of the network on the meta device (shapes only), one
  sample of the config's geometry. Activation checkpointing adds one more forward pass
  of the blocks (hardware FLOPs, not model FLOPs).
* Memory: :mod:`t7synth.training.memory` (weights, gradients and Adam state, activations
  per sample under bf16 autocast as CUDA runs it), the largest micro-batch that fits
  40, 80 and 141 GB GPUs, and the plan for the config's global batch on 4 GPUs.
* Throughput at ``--mfu`` (default 40%) of an H100 SXM's dense bf16 peak (989.4
  TFLOP/s, NVIDIA's datasheet; 1,979 is with 2:4 sparsity): samples/s per GPU, an epoch
  over ``--subjects`` subjects of ``--slices`` slabs each (172 subjects, every brain
  slice: about 200), and the data-loading workers one GPU needs at the loader rate per
  worker that ``make bench`` measured (``--loader-rate``).

Run: ``python benchmarks/projections.py [--config experiments/paper_gan_unet.yaml]``.
"""

from __future__ import annotations

import argparse
import math

import common

H100_BF16_DENSE = 989.4e12


def flops_per_sample(config) -> tuple[float, float]:
    """(forward, forward + backward) model FLOPs of one training sample of the config's
    generator (without activation checkpointing's recomputation)."""
    import dataclasses

    from torch.utils.flop_counter import FlopCounterMode

    from t7synth import registry
    from t7synth.training import memory

    net = {**config.model.net, "checkpointing": False} if "checkpointing" in config.model.net else config.model.net
    model = registry.build_on_meta(dataclasses.replace(config, model=dataclasses.replace(config.model, net=net)))
    batch = memory.meta_batch(config, memory.volume_shape(config), 1)
    with FlopCounterMode(display=False) as counter:
        x, context = model.net_input(batch)
        prediction = model(x, context)
        forward = counter.get_total_flops()
        prediction.float().abs().mean().backward()
    return float(forward), float(counter.get_total_flops())


def project(config, mfu: float, subjects: int, slices: int, loader_rate: float) -> dict:
    from t7synth.training import memory

    forward, training = flops_per_sample(config)
    shape = memory.volume_shape(config)
    footprint = memory.measure(config, shape, "bf16-mixed")
    checkpointed_config = memory.checkpointing_variant(config)
    checkpointed = memory.measure(checkpointed_config, shape, "bf16-mixed") if checkpointed_config else None
    rate = mfu * H100_BF16_DENSE / training
    samples = subjects * slices
    return {
        "forward": forward,
        "training": training,
        "footprint": footprint,
        "checkpointed": checkpointed,
        "largest": {name: footprint.largest_micro_batch(capacity) for name, capacity in memory.REFERENCE_GPUS.items()},
        "largest_checkpointed": {
            name: checkpointed.largest_micro_batch(capacity) for name, capacity in memory.REFERENCE_GPUS.items()
        }
        if checkpointed
        else None,
        "plan_4x80": memory.make_plan(config, footprint, 4, 80e9),
        "rate": rate,
        "rate_checkpointed": mfu * H100_BF16_DENSE / (training + forward),
        "epoch_minutes": samples / rate / 60,
        "workers": math.ceil(rate / loader_rate) if loader_rate else None,
    }


def main() -> None:
    from t7synth.registry import resolve

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(common.REPO / "experiments" / "paper_unet.yaml"))
    parser.add_argument("--mfu", type=float, default=0.40)
    parser.add_argument("--subjects", type=int, default=172)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument(
        "--loader-rate", type=float, default=0.0, help="loader samples/s per worker (make bench); 0: skip"
    )
    args = parser.parse_args()
    config = resolve(None, args.config, [])
    result = project(config, args.mfu, args.subjects, args.slices, args.loader_rate)
    gib = 1024**3
    footprint = result["footprint"]
    print(f"| quantity | {config.model.name} |")
    print("|---|---|")
    print(
        f"| generator FLOPs per training sample (forward + backward) | {result['training'] / 1e12:.2f} TFLOP "
        f"({result['forward'] / 1e12:.2f} forward) |"
    )
    print(
        f"| weights + gradients + Adam | {footprint.states / gib:.2f} GiB (+{footprint.gradients / gib:.2f} GiB "
        "DDP buckets) |"
    )
    print(
        f"| activations per sample, bf16 autocast | {footprint.per_sample / gib:.2f} GiB "
        f"(+{footprint.activations(0) / gib:.2f} GiB per step) |"
    )
    if result["checkpointed"] is not None:
        print(f"| ... with model.net.checkpointing | {result['checkpointed'].per_sample / gib:.2f} GiB |")
    largest = ", ".join(f"{name}: {count}" for name, count in result["largest"].items())
    print(f"| largest micro-batch per GPU (1 GPU) | {largest} |")
    if result["largest_checkpointed"]:
        print(
            "| ... with model.net.checkpointing | "
            f"{', '.join(f'{n}: {c}' for n, c in result['largest_checkpointed'].items())} |"
        )
    print(f"| plan for the global batch on 4 x 80 GB | {result['plan_4x80'].describe()} |")
    print(
        f"| samples/s per GPU at {args.mfu:.0%} of H100 bf16 dense peak | {result['rate']:.1f} "
        f"({result['rate_checkpointed']:.1f} with checkpointing) |"
    )
    print(f"| epoch over {args.subjects} subjects x {args.slices} slabs, one GPU | {result['epoch_minutes']:.0f} min |")
    if result["workers"] is not None:
        print(f"| loader workers per GPU at {args.loader_rate:.0f} samples/s per worker | {result['workers']} |")


if __name__ == "__main__":
    main()
