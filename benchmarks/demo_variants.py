"""Training-step time of the demo U-Net's width and batch variants, side by side.

The measurement that chose the demo's base width 16 and batches of 4 (issue 18): per
variant, the median time of one fp32 training step (forward, L1, backward, Adam) on a
random batch shaped like the demo's, interleaved over rounds in this one process, and
its ratio to the previous demo (base 32, batches of 8; the first row). Run it capped at
AVX2 to see an AVX2-only CPU's numbers on a CPU with native bf16::

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/demo_variants.py
"""

from __future__ import annotations

import argparse

import common
import torch
from bench import machine
from step_time import demo_batch, make_step

from t7synth import registry

#: name -> config overrides on experiments/demo_unet.yaml; the first is the reference.
VARIANTS = {
    "base32_batch8": ["model.net.channels=32", "data.batch_size=8"],
    "base32_batch4": ["model.net.channels=32", "data.batch_size=4"],
    "base24_batch4": ["model.net.channels=24", "data.batch_size=4"],
    "base16_batch8": ["model.net.channels=16", "data.batch_size=8"],
    "base16_batch4": ["model.net.channels=16", "data.batch_size=4"],
    "base16_batch2": ["model.net.channels=16", "data.batch_size=2"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    steps = {}
    for name, overrides in VARIANTS.items():
        torch.manual_seed(0)
        config = common.demo_config("unet", *overrides)
        model = registry.get("unet")(config.to_dict())
        steps[name] = make_step(model, demo_batch(config), bf16=False)
    timings = common.interleaved(steps, args.repeats)  # its warm-up round lets oneDNN pick kernels
    reference = timings[next(iter(VARIANTS))]
    for name, timing in timings.items():
        share = common.ratio(timing, reference)
        print(f"{name:15} fp32 step {timing.median:.3f} s (best {timing.best:.3f})  x{share:.2f}")


if __name__ == "__main__":
    main()
