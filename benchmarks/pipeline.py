"""The training data pipeline: headroom over the demo U-Net, and the paper geometry's
loader throughput and epoch-start stall.

* Headroom (``make demo``'s setting): samples per second the demo's loader delivers
  (whole epochs, Queue fills included) over samples per second the demo U-Net trains
  (bf16 steps on the same batches), interleaved.
* Paper geometry (``experiments/paper_unet.yaml``: 222x288x242 volumes, full axial
  slabs, every brain slice once per epoch, batch 56) on synthetic subjects written to a
  temporary folder: samples/s with 1 and 2 subject-loading workers, and the wait for
  each batch of two epochs when a consumer takes ``--step`` seconds per batch (default
  56 / 30: one GPU at 40% of an H100's bf16 peak, docs/performance.md), in-process
  (``num_workers: 0``) and prefetched (``num_workers`` > 0, :mod:`t7synth.data.prefetch`).
  The epoch-start stall is the first batch's wait in the second epoch.

Run: ``python benchmarks/pipeline.py``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import common
import numpy as np
import torch

from t7synth.training.precision import resolve_precision

PAPER_SHAPE = (222, 288, 242)


def headroom(repeats: int = 3, steps: int = 3) -> dict:
    from t7synth import registry

    config = common.demo_config("unet")
    module = common.demo_datamodule(config)
    torch.manual_seed(0)
    model = registry.get("unet")(config.to_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    precision = resolve_precision(config.trainer.precision, "cpu").precision
    bf16 = precision == "bf16-mixed"
    kept: list[dict] = []

    def epoch() -> float:
        start, samples = time.perf_counter(), 0
        for batch in module.train_dataloader():
            samples += len(batch["source"])
            if len(kept) < steps:
                kept.append(batch)
        return (time.perf_counter() - start) / samples  # seconds per sample

    def train() -> float:
        times = []
        for batch in kept[:steps]:
            start = time.perf_counter()
            common.train_step(model, optimizer, batch, bf16)
            times.append((time.perf_counter() - start) / len(batch["source"]))
        return statistics.median(times)

    timings = common.interleaved({"loader": epoch, "model": train}, repeats)
    return {
        "loader_samples_s": 1 / timings["loader"].median,
        "model_samples_s": 1 / timings["model"].median,
        "step_s": timings["model"].median * config.data.batch_size,
        "batch": f"{config.data.batch_size} x {'x'.join(map(str, kept[0]['source'].shape[2:]))}",
        "headroom": timings["model"].median / timings["loader"].median,
        "precision": precision,
    }


def write_paper_subjects(root: Path, count: int) -> Path:
    """``count`` synthetic subjects of the paper's shape: an ellipsoid brain with smooth
    intensities (the loader's cost does not depend on them; smooth ones compress fast),
    3T and 7T files and a mask."""
    from t7synth.data import naming
    from t7synth.data.volumes import write_nifti

    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in PAPER_SHAPE], indexing="ij"))
    mask = ((grid**2).sum(0) < 0.72**2).astype(np.uint8)
    lines = ["participant_id\tage\tsex\tsplit"]
    for index in range(count):
        subject = f"sub-{index + 1:03d}"
        for path in (naming.source_path(root, subject), naming.target_path(root, subject)):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_nifti(
                path, ((0.5 + 0.3 * grid[index % 3] + 0.05 * rng.random()) * mask).astype(np.float32), np.eye(4)
            )
        write_nifti(naming.mask_path(root, subject), mask, np.eye(4))
        lines.append(f"{subject}\t70\tF\t{'train' if index < count - 1 else 'val'}")
    (root / naming.PARTICIPANTS).write_text("\n".join(lines) + "\n")
    return root


def paper_module(root: Path, cache: Path, workers: int, queue_length: int):
    from t7synth.data.datamodule import PairedDataModule
    from t7synth.registry import resolve

    overrides = [f"data.root={root}", f"data.num_workers={workers}", f"data.queue_length={queue_length}"]
    config = resolve(None, common.REPO / "experiments" / "paper_unet.yaml", overrides)
    module = PairedDataModule(config, cache_dir=cache)
    module.prepare_data()
    module.setup("fit")
    module.trainer = SimpleNamespace(world_size=1, global_rank=0, current_epoch=0, accumulate_grad_batches=1)
    return module


def batch_waits(module, epochs: int, step: float) -> list[list[float]]:
    """Seconds spent waiting for each batch, per epoch, by a consumer taking ``step`` s per batch."""
    waits = []
    for epoch in range(epochs):
        module.trainer.current_epoch = epoch
        epoch_waits = []
        iterator = iter(module.train_dataloader())
        while True:
            start = time.perf_counter()
            batch = next(iterator, None)
            if batch is None:
                break
            epoch_waits.append(time.perf_counter() - start)
            time.sleep(step)
        waits.append(epoch_waits)
    return waits


def paper_geometry(subjects: int = 4, queue_length: int = 600, step: float = 56 / 30) -> dict:
    with tempfile.TemporaryDirectory(prefix="t7synth-bench-") as folder:
        root = write_paper_subjects(Path(folder) / "data", subjects)
        cache = Path(folder) / "cache"
        result = {"subjects": subjects - 1, "queue_length": queue_length, "step": step}
        for workers in (1, 2):
            module = paper_module(root, cache, workers, queue_length)
            waits = batch_waits(module, 1, 0.0)[0]
            module.teardown("fit")
            samples = len(waits) * module.micro_batch_size()
            result[f"samples_s_{workers}"] = samples / sum(waits)
        for workers, name in ((0, "in_process"), (1, "prefetched")):
            module = paper_module(root, cache, workers, queue_length)
            first, second = batch_waits(module, 2, step)
            module.teardown("fit")
            result[name] = {
                "first_of_epoch_2": second[0],
                "median": statistics.median(first[1:] + second[1:]),
                "batches": len(first),
            }
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=4, help="synthetic paper-geometry subjects (one is validation)")
    parser.add_argument("--queue-length", type=int, default=600)
    parser.add_argument("--step", type=float, default=56 / 30, help="seconds the simulated consumer takes per batch")
    parser.add_argument("--skip-headroom", action="store_true")
    args = parser.parse_args()
    if not args.skip_headroom:
        result = headroom(args.repeats)
        print(
            f"demo: loader {result['loader_samples_s']:.1f} samples/s, U-Net {result['model_samples_s']:.1f} "
            f"samples/s: headroom x{result['headroom']:.1f}"
        )
    result = paper_geometry(args.subjects, args.queue_length, args.step)
    print(f"paper geometry: {result['samples_s_1']:.1f} samples/s with 1 worker, {result['samples_s_2']:.1f} with 2")
    for name in ("in_process", "prefetched"):
        waits = result[name]
        print(
            f"  {name}: first batch of epoch 2 waits {waits['first_of_epoch_2']:.2f} s, median batch "
            f"{waits['median']:.3f} s"
        )


if __name__ == "__main__":
    main()
