"""``make bench-gpu``: the paper U-Net on real GPUs, against the projections of
docs/performance.md.

For one GPU, then (with several GPUs) DDP over all of them: a few hundred training
steps of ``experiments/paper_unet.yaml``'s network at bf16 on synthetic batches of its
geometry (L1 only, Adam), after a warm-up. Reports samples/s, model FLOPs utilisation
(model FLOPs from ``FlopCounterMode``, recomputation not counted, over the GPU's dense
bf16 peak), peak memory (``torch.cuda.max_memory_allocated``) next to
:mod:`t7synth.training.memory`'s estimate for the same micro-batch, and the DDP scaling
efficiency (samples/s on N GPUs over N times one GPU's). The micro-batch is the plan's
(the config's share of the global batch, split as memory allows) unless ``--batch``.
"Plan held" means the run fitted in the GPU and the measured peak stayed within
:data:`PLAN_TOLERANCE` of the estimate the plan chose the micro-batch from. Everything
printed also goes to a JSON file (``--json``, default ``bench-gpu.json``) that
docs/performance.md quotes. Without CUDA it says so and exits 0.

Run: ``python benchmarks/gpu.py [--steps 300] [--config experiments/paper_gan_unet.yaml]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import common
import torch

#: Dense (non-sparse) bf16 peak TFLOP/s from the vendors' datasheets, by device-name part.
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 NVL": 835.5,
    "H100 PCIe": 756.5,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
    "L4": 121.0,
}


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)


def _train(rank: int, world: int, args, results) -> None:
    from t7synth import registry
    from t7synth.registry import resolve
    from t7synth.training import memory

    if world > 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        torch.distributed.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    config = resolve(None, args.config, list(args.set))
    shape = memory.volume_shape(config)
    capacity = float(torch.cuda.get_device_properties(rank).total_memory)
    footprint = memory.measure(config, shape, "bf16-mixed")
    micro = args.batch or memory.make_plan(config, footprint, world, capacity).micro
    torch.manual_seed(rank)
    model = registry.get(config.model.name)(config.to_dict()).cuda()
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank]) if world > 1 else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    meta = memory.meta_batch(config, shape, micro)
    batch = {
        k: (
            torch.rand(v.shape, device="cuda")
            if v.dtype.is_floating_point
            else torch.zeros(v.shape, dtype=v.dtype, device="cuda")
        )
        for k, v in meta.items()
    }
    x, context = model.net_input(batch)
    target = model.net_view(batch["target"]).float()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            prediction = net(x, context)
        loss = (prediction.float() - target).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if rank == 0:
        results.update(
            samples_s=world * micro * args.steps / seconds,
            micro=micro,
            peak=torch.cuda.max_memory_allocated(),
            estimate=footprint.peak(micro, world),
            capacity=capacity,
            name=torch.cuda.get_device_name(0),
        )
    if world > 1:
        torch.distributed.destroy_process_group()


def _worker(rank: int, world: int, args, queue) -> None:
    results: dict = {}
    _train(rank, world, args, results)
    if rank == 0:
        queue.put(results)


def run(world: int, args) -> dict:
    if world == 1:
        results: dict = {}
        _train(0, 1, args, results)
        return results
    context = torch.multiprocessing.get_context("spawn")
    queue = context.Queue()
    torch.multiprocessing.start_processes(_worker, args=(world, args, queue), nprocs=world, start_method="spawn")
    return queue.get()


#: How far above the plan's estimate a measured peak may lie for the plan to have held.
PLAN_TOLERANCE = 0.10


def plan_held(result: dict) -> bool:
    """Whether the memory plan held: the peak fitted and stayed near the estimate."""
    return result["peak"] <= result["capacity"] and result["peak"] <= result["estimate"] * (1 + PLAN_TOLERANCE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(common.REPO / "experiments" / "paper_unet.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, help="micro-batch per GPU (default: the memory plan's)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if its name is not in the table")
    parser.add_argument("--json", default="bench-gpu.json", help="where to write the results (default: %(default)s)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench-gpu: no CUDA GPU is visible; skipped (docs/performance.md holds the projections).")
        return 0
    from projections import flops_per_sample

    from t7synth.registry import resolve

    _, flops = flops_per_sample(resolve(None, args.config, list(args.set)))
    count = torch.cuda.device_count()
    worlds = [1] + ([count] if count > 1 else [])
    rows = {}
    for world in worlds:
        rows[world] = run(world, args)
    name = rows[1]["name"]
    peak = peak_tflops(name, args.peak_tflops)
    print(f"{name}: {flops / 1e12:.2f} TFLOP per training sample (model FLOPs), {args.steps} steps after {args.warmup}")
    print("| GPUs | micro-batch | samples/s | MFU | peak memory (measured / estimated) | plan held | scaling |")
    print("|---|---|---|---|---|---|---|")
    records = []
    for world, result in rows.items():
        mfu = result["samples_s"] / world * flops / (peak * 1e12) if peak else None
        scaling = result["samples_s"] / (world * rows[1]["samples_s"]) if world > 1 else None
        held = plan_held(result)
        print(
            f"| {world} | {result['micro']} | {result['samples_s']:.1f} | "
            f"{f'{mfu:.1%}' if mfu is not None else 'n/a (--peak-tflops)'} | "
            f"{result['peak'] / 1024**3:.1f} / {result['estimate'] / 1024**3:.1f} GiB | {'yes' if held else 'NO'} | "
            f"{f'{scaling:.1%}' if scaling is not None else ''} |"
        )
        records.append(
            {
                "gpus": world,
                "micro_batch": result["micro"],
                "samples_per_s": result["samples_s"],
                "mfu": mfu,
                "peak_bytes": result["peak"],
                "estimate_bytes": result["estimate"],
                "capacity_bytes": result["capacity"],
                "plan_held": held,
                "scaling": scaling,
            }
        )
    summary = {
        "gpu": name,
        "config": args.config,
        "overrides": list(args.set),
        "steps": args.steps,
        "warmup": args.warmup,
        "tflop_per_sample": flops / 1e12,
        "peak_tflops": peak,
        "torch": torch.__version__,
        "rows": records,
    }
    with open(args.json, "w") as handle:
        json.dump(summary, handle, indent=2)
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
