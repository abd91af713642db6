"""``python -m t7synth.demo``: make (once) and locate the simulated demo dataset.

::

    python -m t7synth.demo [--out DIR] [--subjects N] [--seed S] [--voxel-size MM]

prints the dataset folder on the first line (for scripts), a one-line summary on
the second, and on the third the ``fit`` command that trains on this very dataset
(``--data`` names it: ``fit`` without ``--data`` makes its own from ``data.demo_*``).
The dataset itself: :mod:`t7synth.data.demo`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from t7synth.cli import ArgumentParser, console_entry, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m t7synth.demo",
        description="Generate (once) the simulated paired 3T/7T demo dataset and print its folder.",
    )
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="dataset folder (default: the cache, see T7SYNTH_CACHE)"
    )
    parser.add_argument("--subjects", type=int, default=20, metavar="N", help="number of subjects, >= 3 (default 20)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    parser.add_argument(
        "--voxel-size", type=float, default=1.5, metavar="MM", help="isotropic spacing, 1-6 mm (default 1.5)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: print the dataset folder and a summary; 0 on success."""
    args = build_parser().parse_args(argv)
    from t7synth.data.demo.cache import describe_demo, ensure_demo_dataset

    folder = ensure_demo_dataset(
        n_subjects=args.subjects,
        seed=args.seed,
        out=args.out,
        voxel_size=args.voxel_size,
        progress=not args.no_progress,
    )
    print(folder)
    print(describe_demo(folder))
    print(f"train on it: python -m t7synth.fit --config experiments/demo_unet.yaml --data {folder}")
    return 0


#: The ``t7synth-demo`` console script.
console = console_entry(main)

if __name__ == "__main__":
    sys.exit(run_main(main))
