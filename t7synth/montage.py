"""``python -m t7synth.montage``: several models' synthetic 7T beside the 3T and the 7T, one cortical region enlarged.

Each model's predictions come from ``predict`` into a folder; the montage shows one
subject's axial slice through the upper brain and enlarges a square of the left
hemisphere's lateral cortex, where an L1-trained U-Net's blur and a GAN's texture
differ most visibly. Example (the demo's four models, after ``fit`` of each)::

    DEMO=$(python -m t7synth.demo | head -1)
    for m in unet gan_unet vnet watnet; do
        python -m t7synth.predict --ckpt runs/demo_$m/version_0/checkpoints/best.ckpt \\
            --input $DEMO --split test --output runs/demo_$m/version_0/predictions
    done
    python -m t7synth.montage --data $DEMO --subject sub-019 \\
        --ckpt runs/demo_unet/version_0/checkpoints/best.ckpt \\
        --pred "U-Net=runs/demo_unet/version_0/predictions" \\
        --pred "GAN U-Net=runs/demo_gan_unet/version_0/predictions" \\
        --pred "V-Net=runs/demo_vnet/version_0/predictions" \\
        --pred "WATNet=runs/demo_watnet/version_0/predictions" \\
        --out docs/img/demo_zoom.png

The library function is :func:`t7synth.evaluation.montage.zoom_montage`.
"""

from __future__ import annotations

import sys

from t7synth.cli import ArgumentParser, console_entry, run_main
from t7synth.errors import UserError


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m t7synth.montage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, metavar="DATASET", help="the dataset the predictions were made from")
    parser.add_argument("--subject", required=True, metavar="sub-XXX")
    parser.add_argument(
        "--pred",
        required=True,
        action="append",
        metavar="LABEL=DIR",
        help="a model's label and prediction folder (repeat)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ckpt", metavar="CKPT", help="preprocessing settings from this checkpoint (as evaluate)")
    source.add_argument("--config", metavar="FILE", help="or from this experiment YAML")
    parser.add_argument(
        "--size", type=int, metavar="VOXELS", help="side of the enlarged square (default: a third of the brain)"
    )
    parser.add_argument("--out", required=True, metavar="PNG")
    args = parser.parse_args(argv)
    predictions = []
    for item in args.pred:
        label, _, folder = item.partition("=")
        if not label or not folder:
            raise UserError(f"--pred {item!r}: expected LABEL=DIR")
        predictions.append((label, folder))
    from t7synth.evaluation.montage import zoom_montage

    print(
        zoom_montage(
            args.data, args.subject, predictions, args.out, ckpt=args.ckpt, config_file=args.config, size=args.size
        )
    )
    return 0


#: The ``t7synth-montage`` console script.
console = console_entry(main)

if __name__ == "__main__":
    sys.exit(run_main(main))
