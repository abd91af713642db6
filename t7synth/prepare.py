"""``python -m t7synth.prepare``: turn raw paired 3T/7T scans into the dataset folder ``fit`` reads.

Examples::

    python -m t7synth.prepare --raw /data/raw --out /data/paired
    python -m t7synth.prepare --pairs pairs.tsv --out /data/paired --workers 2
    python -m t7synth.prepare --raw /data/coregistered --out /data/paired --no-register
    python -m t7synth.prepare --raw /data/raw --out /data/paired --overwrite   # redo every subject
    python -m t7synth.prepare --raw /data/bids --out /data/paired --field-strength ses-pre=3T,ses-post=7T
    python -m t7synth.prepare --fieldbridge /data/FieldBridge-MRI --out /data/public --sources unc,penn --jobs 2

What is read, checked and written: :mod:`t7synth.data.prepare` (``--fieldbridge``:
:mod:`t7synth.data.fieldbridge`; a file that fails there is one ``error:`` line each on
stderr, the other subjects are written and the exit status is 2). The first line printed
is the dataset folder, the second a summary.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from t7synth.cli import ArgumentParser, console_entry, run_main


def build_parser() -> argparse.ArgumentParser:
    from t7synth.data.prepare import INTERPOLATIONS

    parser = ArgumentParser(
        prog="python -m t7synth.prepare",
        description="Turn raw paired 3T/7T scans (any grids) into the dataset folder that fit reads.",
    )
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument(
        "--raw", type=Path, metavar="DIR", help="raw BIDS folder (sub-*/anat or sub-*/ses-*/anat), scans on any grids"
    )
    inputs.add_argument(
        "--pairs",
        type=Path,
        metavar="FILE",
        help="table (.tsv/.csv): subject, source, target[, mask, age, sex, split, ...]",
    )
    inputs.add_argument(
        "--fieldbridge",
        type=Path,
        metavar="DIR",
        help="a FieldBridge-MRI download (pairs.tsv or metadata/pairs.tsv): its T1w 3T/7T pairs, with their site",
    )
    parser.add_argument("--sources", metavar="NAME,...", help="--fieldbridge: only these source_dataset values")
    parser.add_argument("--voxel-size", type=float, metavar="MM", help="--fieldbridge: resample to this voxel size")
    parser.add_argument(
        "--field-strength",
        metavar="ENTITY-LABEL=3T|7T,...",
        help="--raw: which scans are 3T and 7T when neither their ses-/acq- labels nor their JSON sidecars say, "
        "e.g. ses-pre=3T,ses-post=7T",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="dataset folder to write (new, empty, or an earlier prepare output)",
    )
    parser.add_argument(
        "--no-register", action="store_true", help="only resample by the scanner affines (scans already co-registered)"
    )
    parser.add_argument(
        "--interpolation",
        choices=INTERPOLATIONS,
        default="linear",
        help="3T resampling (default linear, as predict uses)",
    )
    parser.add_argument("--overwrite", action="store_true", help="prepare every subject again, even complete ones")
    parser.add_argument(
        "--workers", "--jobs", dest="workers", type=int, default=1, metavar="N", help="parallel processes (default 1)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prepare the dataset, print its folder and the summary."""
    from t7synth.data.prepare import prepare

    args = build_parser().parse_args(argv)
    if args.fieldbridge is not None or args.sources or args.voxel_size is not None:
        from t7synth.data.fieldbridge import prepare_fieldbridge

        outcome = prepare_fieldbridge(
            args.fieldbridge, args.out, args.sources, args.voxel_size, args.workers, not args.no_progress
        )
        print(f"{args.out.expanduser()}\n{outcome.summary}")
        for line in outcome.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2 if outcome.problems else 0
    summary = prepare(
        args.out,
        raw=args.raw,
        pairs=args.pairs,
        register=not args.no_register,
        interpolation=args.interpolation,
        overwrite=args.overwrite,
        workers=args.workers,
        progress=not args.no_progress,
        field_strength=args.field_strength,
    )
    print(args.out.expanduser())
    print(summary)
    return 0


#: The ``t7synth-prepare`` console script.
console = console_entry(main)

if __name__ == "__main__":
    sys.exit(run_main(main))
