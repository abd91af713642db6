"""What every benchmark shares: side-by-side timing, peak memory of a whole process, the demo.

Timing: the variants of a comparison run interleaved in one process (A, B, A, B, ...),
so a slow spell of a shared machine hits both; a ratio is reported from the medians,
next to the minima. Peak memory: each variant runs in its own fresh process and reports
its peak resident set size (``VmHWM``), the memory a user's job would be charged, and
the peak of the measured call above the resident size just before it (the peak is reset
by writing 5 to ``/proc/self/clear_refs``). The call's own peak is what a comparison
uses: the same set-up (imports, model, volume) leaves fresh processes 40–140 MiB apart,
more than the differences being measured. Figures are medians over repetitions. Not
``ru_maxrss``: Linux carries it across ``exec``, so a child forked from a large benchmark
process would report the parent's size on both sides of a comparison and hide the
difference.
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


@dataclass
class Peak:
    """Peak memory of one variant, in bytes (medians over fresh processes)."""

    process: int  #: the whole process's peak resident size
    call: int  #: the measured call's peak above the resident size just before it


def peak_rss(script: str, *args: str, repeats: int = 3) -> Peak:
    """Peak memory over ``repeats`` fresh runs of ``script args`` (medians).

    The script measures one call between :func:`start_peak` and :func:`report_peak`,
    which prints ``{"peak_rss": bytes, "call_peak": bytes, ...}`` as its last line. The
    environment (``OMP_NUM_THREADS``) is this process's.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, script, *args], capture_output=True, text=True, env=env, cwd=REPO, check=False
        )
        if done.returncode:
            raise RuntimeError(f"{script} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return Peak(
        int(statistics.median(r["peak_rss"] for r in runs)), int(statistics.median(r["call_peak"] for r in runs))
    )


def _status(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(f"{key}:"))


_before_call: int | None = None


def start_peak() -> None:
    """Mark the start of the measured call: remember the resident size, reset the peak."""
    import gc

    global _before_call
    gc.collect()
    _before_call = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        _before_call = 0  # cannot reset: the call's peak is the process's


def report_peak(**extra) -> None:
    """Print this process's peak RSS and the measured call's, as :func:`peak_rss` reads."""
    peak = _status("VmHWM")
    call = peak - (_before_call or 0)
    print(json.dumps({"peak_rss": peak, "call_peak": call, **extra}))


def train_step(model, optimizer, batch: dict, bf16: bool = True) -> None:
    """One hand-written training step of a SynthesisModule: what the loop and pipeline
    benchmarks time, so both measure the same work (``bf16``: under bf16 autocast, as the
    demo trains where the CPU computes bf16 natively)."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        x, context = model.net_input(batch)
        prediction = model(x, context)
    loss = model.reconstruction_losses(prediction, model.net_view(batch["target"]), model.net_view(batch["mask"]))[
        "loss"
    ]
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
    records = assign_splits(discover(resolve_root(config)), data.val_fraction, data.test_fraction, data.split_seed)[
        split
    ]
    return module._subject(records[0])


def row(label: str, value: str, note: str = "") -> str:
    return f"| {label} | {value} | {note} |"
