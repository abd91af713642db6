"""Training-step time of each registered model's demo network, fp32 against bf16-mixed.

Prints, per model, the median time of a training step (forward, L1, backward, Adam
step) on a batch shaped like the demo's, in float32 and under bf16 autocast, measured
side by side (interleaved) in this one process, and their ratio (``bf16_speedup`` of
``make bench`` is the U-Net's). Run: ``python benchmarks/step_time.py``. Numbers depend
on the machine; the ratio is the portable part.
"""

from __future__ import annotations

import argparse

import common
import torch


def make_step(model, batch, bf16: bool):
    """One training step of ``model`` on ``batch`` as a callable (its own Adam)."""
    optimizer = torch.optim.Adam(model.generator().parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            x, context = model.net_input(batch)
            prediction = model(x, context)
        loss = torch.abs(prediction.float() - model.net_view(batch["target"]).float()).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def demo_batch(config, shape=(120, 144, 128)) -> dict:
    """A random batch shaped like the demo's (``data.batch_size`` samples)."""
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


def bf16_speedup(name: str = "unet", repeats: int = 3) -> dict:
    """fp32 and bf16 step times of ``name``'s demo network, interleaved; their ratio."""
    from t7synth import registry

    torch.manual_seed(0)
    config = common.demo_config(name)
    model = registry.get(name)(config.to_dict())
    batch = demo_batch(config)
    timings = common.interleaved(
        {"fp32": make_step(model, batch, False), "bf16": make_step(model, batch, True)}, repeats
    )
    shape = "x".join(map(str, batch["source"].shape[2:]))
    return {
        "model": name,
        "batch": f"{config.data.batch_size} x {shape}",
        "fp32_s": timings["fp32"].median,
        "bf16_s": timings["bf16"].median,
        "ratio": common.ratio(timings["fp32"], timings["bf16"]),
    }


def main() -> None:
    from t7synth import registry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=registry.names())
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':10} {'batch':>16} {'fp32 s/step':>12} {'bf16 s/step':>12} {'fp32/bf16':>10}")
    for name in args.models:
        result = bf16_speedup(name, args.repeats)
        print(
            f"{name:10} {result['batch']:>16} {result['fp32_s']:12.3f} {result['bf16_s']:12.3f} {result['ratio']:10.2f}"
        )


if __name__ == "__main__":
    main()
