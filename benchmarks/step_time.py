"""Training-step time of each registered model's demo network, fp32 against bf16-mixed.

Prints, per model, the mean time of a training step (forward, L1, backward, Adam step)
on a batch shaped like the demo's, in float32 and under bf16 autocast, measured side by
side in this one process, and their ratio. Run: ``python benchmarks/step_time.py``.
Numbers depend on the machine; the ratio is the portable part.
"""

from __future__ import annotations

import argparse
import time

import torch

from t7synth import registry
from t7synth.registry import resolve


def step_time(model, batch, bf16: bool, repeats: int) -> float:
    optimizer = torch.optim.Adam(model.generator().parameters(), lr=1e-4)
    times = []
    for index in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            x, context = model.net_input(batch)
            prediction = model(x, context)
        loss = torch.abs(prediction.float() - model.net_view(batch["target"]).float()).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if index:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def demo_batch(config, shape=(120, 144, 128)) -> dict:
    geometry = config.geometry
    size = config.data.batch_size
    if geometry.mode == "slab":
        patch = list(shape)
        if geometry.inplane:
            patch = list(geometry.inplane)
            patch.insert(geometry.axis, 0)
        patch[geometry.axis] = geometry.slices
    else:
        patch = list(geometry.patch)
    volume = torch.rand(size, 1, *patch)
    return {
        "source": volume,
        "target": volume.clone(),
        "mask": torch.ones_like(volume, dtype=torch.uint8),
        "location": torch.zeros(size, 6, dtype=torch.long),
        "age": torch.full((size,), 70.0),
        "sex": torch.ones(size),
        "brain_mid": torch.full((size,), 72.0),
        "n_slices": torch.full((size,), 144.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=registry.names())
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':10} {'batch':>12} {'fp32 s/step':>12} {'bf16 s/step':>12} {'fp32/bf16':>10}")
    for name in args.models:
        config = resolve(name, f"experiments/demo_{name}.yaml")
        model = registry.get(name)(config.to_dict())
        batch = demo_batch(config)
        fp32 = step_time(model, batch, bf16=False, repeats=args.repeats)
        bf16 = step_time(model, batch, bf16=True, repeats=args.repeats)
        shape = "x".join(map(str, batch["source"].shape[2:]))
        print(f"{name:10} {config.data.batch_size:>3} x {shape:>8} {fp32:12.3f} {bf16:12.3f} {fp32 / bf16:10.2f}")


if __name__ == "__main__":
    main()
