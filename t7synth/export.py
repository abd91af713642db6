"""``python -m t7synth.export``: a trained model as one shareable file, weights only.

Examples::

    python -m t7synth.export runs/demo_unet/version_0                  # -> runs/demo_unet/version_0/model.zip
    python -m t7synth.export runs/demo_unet/version_0/checkpoints/best.ckpt --out unet.zip
    python -m t7synth.export runs/demo_unet/version_0 --out unet.zip --torchscript

    python -m t7synth.predict --model unet.zip --input scan.nii.gz --output scan_synth7T.nii.gz

The package holds the generator's weights and buffers (no optimiser, no discriminator),
the resolved config, the preprocessing settings, a README model card with the run's
test scores and, with ``--torchscript``, the traced network. Reading one never runs
code from it. Format and checks: :mod:`t7synth.inference.package`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from t7synth.cli import ArgumentParser, console_entry, run_main
from t7synth.run_files import BEST_CHECKPOINT, CHECKPOINTS_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m t7synth.export", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "source", metavar="RUN_OR_CKPT", help=f"a run folder (its {CHECKPOINTS_DIR}/{BEST_CHECKPOINT}) or a .ckpt file"
    )
    parser.add_argument("--out", metavar="FILE.zip", help="package to write (default: <run>/model.zip)")
    parser.add_argument(
        "--torchscript",
        action="store_true",
        help="also add the network traced to TorchScript (checked against the model)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from t7synth.inference.package import export_package

    args = build_parser().parse_args(argv)
    result = export_package(args.source, args.out, torchscript=args.torchscript)
    print(result.summary())
    return 0


#: The ``t7synth-export`` console script.
console = console_entry(main)

if __name__ == "__main__":
    sys.exit(run_main(main))
