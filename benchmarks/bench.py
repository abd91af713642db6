"""``make bench``: every performance comparison of docs/performance.md, side by side.

Prints a table, then, last, one line of the headline ratios::

    pipeline_headroom=<x> lightning_overhead=<x> predict3d_vs_monai_time=<x>
    predict3d_vs_monai_peak_mem=<x> predict2d_vs_plain_peak_mem=<x> bf16_speedup=<x>
    cpu_bf16=native|emulated raw_overhead=<x>

Each ratio comes from one run of this script: timings interleaved in one process
(medians of ``--repeats`` rounds; minima in the table), peak memories from fresh
processes (``VmHWM``, the minimum of two runs each). Targets: headroom >= 3,
Lightning overhead <= 1.05, every ``*_vs_*`` ratio <= 1.0; ``raw_overhead`` is the
extra time of ``predict --skull-strip --n4`` on a full-head scan as a fraction of the
demo U-Net's predict time on the masked scan (benchmarks/raw.py). The paper-geometry loader
(samples/s per worker, epoch-start stall) is in the table. Under 10 minutes on 2 cores
once the demo dataset exists (its simulation adds about a minute on a fresh clone).
"""

from __future__ import annotations

import argparse
import time

import common
import inference
import loop
import pipeline
import raw
import step_time
import torch

from t7synth.training.precision import cpu_bf16, cpu_name


def machine() -> str:
    """The CPU (``lscpu``'s model name), its bf16 capability, cores and torch."""
    import os

    native, what = cpu_bf16()
    bf16 = f"native bf16 ({what})" if native else f"no native bf16 ({what})"
    return (
        f"{cpu_name()}, {bf16}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )


def bf16_capability() -> str:
    """``native`` or ``emulated``: what ``bf16_speedup`` was measured on."""
    return "native" if cpu_bf16()[0] else "emulated"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--skip-paper-loader", action="store_true", help="leave out the paper-geometry loader (about 3 minutes)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"machine: {machine()}")
    rows = ["| measurement | value | note |", "|---|---|---|"]

    flow = pipeline.headroom(args.repeats)
    rows.append(
        common.row(
            "demo loader / demo U-Net training",
            f"{flow['loader_samples_s']:.0f} / {flow['model_samples_s']:.1f} samples/s",
            f"headroom x{flow['headroom']:.1f}; {flow['precision']} step {flow['step_s']:.2f} s "
            f"(batch {flow['batch']})",
        )
    )

    lightning = loop.run(args.repeats)
    rows.append(
        common.row(
            "Lightning loop / hand-written loop",
            f"{lightning['lightning_s']:.3f} / {lightning['hand_s']:.3f} s per step",
            f"x{lightning['ratio']:.3f} (best x{lightning['ratio_best']:.3f})",
        )
    )

    bf16 = step_time.bf16_speedup("unet", args.repeats)
    rows.append(
        common.row(
            "demo U-Net step fp32 / bf16",
            f"{bf16['fp32_s']:.2f} / {bf16['bf16_s']:.2f} s",
            f"x{bf16['ratio']:.2f} ({bf16['batch']})",
        )
    )

    predicted = inference.run(args.repeats)
    for kind, label in (("3d", "3D tiling (demo V-Net)"), ("2d", "2.5D tiling (demo U-Net)")):
        result = predicted[kind]
        rows.append(
            common.row(
                f"{label} time vs {result['reference']}",
                f"{result['ours_s']:.2f} / {result['reference_s']:.2f} s",
                f"x{result['time_ratio']:.3f}; outside the network {1000 * result['ours_outside_s']:.0f} / "
                f"{1000 * result['reference_outside_s']:.0f} ms; max abs difference {result['max_difference']:.1e}",
            )
        )
        ours_peak, reference_peak = result["ours_peak"], result["reference_peak"]
        rows.append(
            common.row(
                f"{label} peak memory vs {result['reference']}",
                f"{ours_peak.call / common.MIB:.0f} / {reference_peak.call / common.MIB:.0f} MiB",
                f"x{result['peak_ratio']:.3f} (the prediction's own, one "
                f"{'x'.join(map(str, result['shape']))} volume); "
                f"whole process {ours_peak.process / common.MIB:.0f} / {reference_peak.process / common.MIB:.0f} MiB",
            )
        )

    raw_scan = raw.run()
    rows.append(
        common.row(
            "predict --skull-strip --n4 / masked input",
            f"{raw_scan['raw_s']:.2f} / {raw_scan['masked_s']:.2f} s",
            f"raw_overhead {raw_scan['overhead']:.2f} (demo U-Net, full-head phantom at 1.5 mm)",
        )
    )

    if not args.skip_paper_loader:
        paper = pipeline.paper_geometry()
        rows.append(
            common.row(
                "paper geometry loader",
                f"{paper['samples_s_1']:.0f} / {paper['samples_s_2']:.0f} samples/s",
                f"1 / 2 subject-loading workers; queue {paper['queue_length']}, batch 56",
            )
        )
        for name in ("in_process", "prefetched"):
            waits = paper[name]
            rows.append(
                common.row(
                    f"paper geometry epoch-start stall, {name.replace('_', '-')}",
                    f"{waits['first_of_epoch_2']:.2f} s",
                    f"median batch {waits['median']:.3f} s; consumer {paper['step']:.2f} s per batch",
                )
            )

    print("\n".join(rows))
    print(f"({time.perf_counter() - started:.0f} s)")
    print(
        f"pipeline_headroom={flow['headroom']:.2f} lightning_overhead={lightning['ratio']:.3f} "
        f"predict3d_vs_monai_time={predicted['3d']['time_ratio']:.3f} "
        f"predict3d_vs_monai_peak_mem={predicted['3d']['peak_ratio']:.3f} "
        f"predict2d_vs_plain_peak_mem={predicted['2d']['peak_ratio']:.3f} bf16_speedup={bf16['ratio']:.2f} "
        f"cpu_bf16={bf16_capability()} raw_overhead={raw_scan['overhead']:.2f}"
    )


if __name__ == "__main__":
    main()
