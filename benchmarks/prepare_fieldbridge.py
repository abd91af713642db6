"""``prepare --fieldbridge`` on one pair at FieldBridge-MRI's real size: seconds per
subject and peak memory per job.

A synthetic pair is written once to a temporary folder as FieldBridge distributes its
T1w volumes: 364x436x364 float32 at 0.5 mm, gzipped NIfTI, zero outside a head-sized
ellipsoid (about 140x170x140 mm, so the crop keeps a realistic box), with a
``metadata/pairs.tsv`` naming them. Each setting then prepares it in a fresh process
(``--jobs 1``: the memory of one job), which reports the seconds of
:func:`t7synth.data.fieldbridge.prepare_fieldbridge` and its peak resident size
(``VmHWM``, :mod:`common`): once at the native 0.5 mm and once resampled to 1 mm
(``--voxel-size 1``). Target: peak below 3 GiB per job.

Run: ``python benchmarks/prepare_fieldbridge.py`` (about a minute on 2 cores, most of it
writing and gzipping the two input volumes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np

SHAPE = (364, 436, 364)
SPACING = 0.5
#: The head's semi-axes in millimetres (an adult head is about 140 x 170 x 140 mm wide).
HEAD_MM = (70.0, 85.0, 70.0)
GIB = 1024**3


def write_download(root: Path) -> None:
    """The synthetic pair and its ``metadata/pairs.tsv``."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = [-SPACING * (s - 1) / 2 for s in SHAPE]
    # Distance from the centre in units of the head's semi-axes, built axis by axis so the
    # set-up itself needs no full-size float64 grids.
    axes = [((np.arange(s) - (s - 1) / 2) * SPACING / r).astype(np.float32) ** 2 for s, r in zip(SHAPE, HEAD_MM)]
    inside = (axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]) < 1.0
    for name, contrast in (("T1w_3T", 0.6), ("T1w_7T", 0.8)):
        volume = np.zeros(SHAPE, np.float32)
        volume[inside] = contrast + 0.05 * rng.standard_normal(int(inside.sum()), dtype=np.float32)
        path = root / "bench" / "bench_001" / f"{name}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(volume, affine), str(path))
        del volume
    table = root / "metadata" / "pairs.tsv"
    table.parent.mkdir(parents=True, exist_ok=True)
    header = "fieldbridge_id source_dataset pair_id modality field_strength paired_field_strength relative_path"
    rows = [
        "\t".join([*header.split(), "split_group"]),
        "\t".join(["fb1", "bench", "bench_001", "T1W", "3T", "7T", "bench/bench_001/T1w_3T.nii.gz", "train"]),
        "\t".join(["fb2", "bench", "bench_001", "T1W", "7T", "3T", "bench/bench_001/T1w_7T.nii.gz", "train"]),
    ]
    table.write_text("\n".join(rows) + "\n")


def child(root: Path, out: Path, voxel_size: float | None) -> None:
    """Prepare the pair in this fresh process; print seconds and peaks as JSON."""
    from t7synth.data.fieldbridge import prepare_fieldbridge

    common.start_peak()
    start = time.perf_counter()
    outcome = prepare_fieldbridge(root, out, voxel_size=voxel_size, workers=1, progress=False)
    seconds = time.perf_counter() - start
    if outcome.problems:
        raise SystemExit("; ".join(outcome.problems))
    common.report_peak(seconds=seconds)


def cpu_text() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "OUT", "VOXEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        root, out, voxel = args.child
        child(Path(root), Path(out), None if voxel == "none" else float(voxel))
        return
    env = {**os.environ, "PYTHONPATH": str(common.REPO)}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "FieldBridge-MRI"
        start = time.perf_counter()
        write_download(root)
        print(
            f"input: 2 x {'x'.join(map(str, SHAPE))} float32 (.nii.gz) written in {time.perf_counter() - start:.0f} s"
        )
        print(f"CPU: {cpu_text()}")
        for voxel in ("none", "1"):
            out = Path(folder) / f"out-{voxel}"
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(root), str(out), voxel],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            result = json.loads(done.stdout.strip().splitlines()[-1])
            setting = "0.5 mm (native)" if voxel == "none" else "--voxel-size 1"
            print(
                f"{setting:18s} {result['seconds']:6.1f} s per subject, peak {result['peak_rss'] / GIB:.2f} GiB "
                f"per job (call {result['call_peak'] / GIB:.2f} GiB)"
                + ("" if result["peak_rss"] < 3 * GIB else "  ABOVE the 3 GiB target")
            )


if __name__ == "__main__":
    main()
