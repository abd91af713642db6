"""What every benchmark shares: side-by-side timing, peak memory of a whole process, the demo.

Timing: the variants of a comparison run interleaved in one process (A, B, A, B, ...),
so a slow spell of a shared machine hits both; a ratio is reported from the medians,
next to the minima. Peak memory: each variant runs in its own fresh process and reports
its peak resident set size (``VmHWM``), the memory a user's job would be charged; the
reported figure is the minimum over repetitions. Not ``ru_maxrss``: Linux carries it
across ``exec``, so a child forked from a large benchmark process would report the
parent's size on both sides of a comparison and hide the difference.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1024**2


@dataclass
class Timing:
    """Seconds per repetition of one variant."""

    name: str
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: bool = True) -> dict[str, Timing]:
    """Run every variant ``repeats`` times in turn; a variant that returns a float
    reports its own seconds, anything else is timed whole. One untimed round first
    when ``warmup``."""
    if warmup:
        for run in variants.values():
            run()
    timings = {name: Timing(name, []) for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            measured = run()
            elapsed = time.perf_counter() - start
            timings[name].seconds.append(measured if isinstance(measured, float) else elapsed)
    return timings


def ratio(numerator: Timing, denominator: Timing) -> float:
    return numerator.median / denominator.median


def peak_rss(script: str, *args: str, repeats: int = 2) -> int:
    """The smallest peak RSS in bytes over ``repeats`` fresh runs of ``script args``.

    The script must print ``{"peak_rss": bytes, ...}`` as its last output line (see
    :func:`report_peak`). The environment (``OMP_NUM_THREADS``) is this process's.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    peaks = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env, cwd=REPO, check=False)
        if done.returncode:
            raise RuntimeError(f"{script} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        peaks.append(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss"])
    return min(peaks)


def report_peak(**extra) -> None:
    """Print this process's peak RSS as the JSON line :func:`peak_rss` reads."""
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss": peak, **extra}))


def train_step(model, optimizer, batch: dict, bf16: bool = True) -> None:
    """One hand-written training step of a SynthesisModule: what the loop and pipeline
    benchmarks time, so both measure the same work (bf16 autocast as the demo trains)."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        x, context = model.net_input(batch)
        prediction = model(x, context)
    loss = model.reconstruction_losses(prediction, model.net_view(batch["target"]), model.net_view(batch["mask"]))["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def demo_config(name: str = "unet", *overrides: str):
    """The resolved demo config of a model (``experiments/demo_<name>.yaml``)."""
    from t7synth.registry import resolve

    return resolve(None, REPO / "experiments" / f"demo_{name}.yaml", list(overrides))


def demo_datamodule(config):
    """The demo data module, set up (the demo dataset is generated once if absent)."""
    from t7synth.data.datamodule import PairedDataModule

    module = PairedDataModule(config)
    module.prepare_data()
    module.setup("fit")
    return module


def demo_subject(config, split: str = "val"):
    """The first ``split`` subject of the demo dataset, alone (a TorchIO subject with the
    data module's keys): peak-memory runs load one volume, not the whole dataset."""
    from t7synth.data.datamodule import PairedDataModule, resolve_root
    from t7synth.data.layout import assign_splits, discover

    module = PairedDataModule(config)
    data = config.data
    records = assign_splits(discover(resolve_root(config)), data.val_fraction, data.test_fraction, data.split_seed)[split]
    return module._subject(records[0])


def row(label: str, value: str, note: str = "") -> str:
    return f"| {label} | {value} | {note} |"
