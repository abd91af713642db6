"""``python -m t7synth.convert``: turn the authors' released checkpoint into a t7synth checkpoint.

Examples::

    python -m t7synth.convert --official my_unet_no_diag.pt --config experiments/paper_unet.yaml \\
        --out unet_official.ckpt
    python -m t7synth.convert --official my_unetGanNoDiag.pt --config experiments/paper_gan_unet.yaml \\
        --out gan_official.ckpt
    python -m t7synth.predict --ckpt unet_official.ckpt --input sub-01_registered.nii.gz \\
        --output sub-01_synth7T.nii.gz --age 70 --sex F

The official file (DeMONLab-BioFINDER/SuperResolutionMalo, ``models/*.pt``) is read
without running code from it; the result is an ordinary t7synth checkpoint that
``predict`` and ``evaluate`` use as any other, and ``predict`` with it reproduces the
authors' ``inferer3T.py``. How: :mod:`t7synth.inference.official`; ``docs/models.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from t7synth.cli import ArgumentParser, console_entry, run_main


def build_parser() -> argparse.ArgumentParser:
    # The released models' settings (their params files); framing.py imports no torch.
    from t7synth.inference.framing import OFFICIAL_FRAME, OFFICIAL_SLICE_DIM

    parser = ArgumentParser(prog="python -m t7synth.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--official",
        required=True,
        metavar="FILE",
        help="the authors' checkpoint (models/my_unet_no_diag.pt, my_unetGanNoDiag.pt)",
    )
    parser.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="experiment file describing its network (experiments/paper_unet.yaml or paper_gan_unet.yaml)",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="the t7synth checkpoint to write (.ckpt)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable), e.g. data.inference_batch_size=8",
    )
    parser.add_argument(
        "--slice-dim",
        type=int,
        default=OFFICIAL_SLICE_DIM,
        metavar="AXIS",
        help=f"the model's slice_dim, an array axis of the scan files (default {OFFICIAL_SLICE_DIM})",
    )
    parser.add_argument(
        "--frame",
        type=int,
        nargs=3,
        default=list(OFFICIAL_FRAME),
        metavar=("D1", "D2", "D3"),
        help=(
            f"inferer3T.py's d1 d2 d3 (default {' '.join(map(str, OFFICIAL_FRAME))}, the released models' "
            "training frame)"
        ),
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from t7synth.inference.official import convert

    print(convert(args.official, args.config, args.out, overrides=args.set, slice_dim=args.slice_dim, frame=args.frame))
    return 0


#: The ``t7synth-convert`` console script.
console = console_entry(main)

if __name__ == "__main__":
    sys.exit(run_main(main))
