"""``python -m t7synth.compare``: the test scores of several runs side by side.

Examples::

    python -m t7synth.compare runs/demo_unet/version_0 runs/demo_vnet/version_0
    python -m t7synth.compare runs/demo_unet/version_0 synth/evaluation runs/demo_unet_lr --trials 2
    python -m t7synth.compare runs/*/version_0 --out comparison/ --wandb offline
    python -m t7synth.compare runs/public_loso_unet        # a cross-validation: per fold, pooled, per site

What is read and written: :mod:`t7synth.evaluation.compare` (a cross-validation folder,
``runs/<name>`` with ``fold_<I>`` folders: :mod:`t7synth.evaluation.fold_scores`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from t7synth.cli import ArgumentParser, console_entry, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m t7synth.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="FOLDER",
        help="fit run folders (runs/<experiment>/<version>), evaluate outputs, sweep study folders (runs/<study>)",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=3,
        metavar="K",
        help="from each sweep study folder, its K best complete trials (default 3)",
    )
    parser.add_argument("--out", default="comparison", metavar="DIR", help="output folder (default: comparison)")
    parser.add_argument(
        "--wandb",
        choices=["online", "offline", "disabled"],
        default="disabled",
        help="also log to W&B (default: disabled)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from t7synth.evaluation.compare import compare

    args = build_parser().parse_args(argv)
    from t7synth.evaluation.fold_scores import compare_folds, is_cross_validation

    if any(is_cross_validation(path) for path in args.runs):
        if len(args.runs) > 1:
            from t7synth.errors import UserError

            raise UserError("a cross-validation folder is compared on its own: give one runs/<name> folder")
        print(compare_folds(args.runs[0], args.out, args.wandb))
        return 0
    print(
        compare(
            args.runs,
            args.out,
            args.wandb,
            warn=lambda message: print(f"warning: {message}", file=sys.stderr),
            trials=args.trials,
        )
    )
    return 0


#: The ``t7synth-compare`` console script.
console = console_entry(main)

if __name__ == "__main__":
    sys.exit(run_main(main))
