"""``python -m t7synth.evaluate``: score synthetic volumes against the dataset's 7T.

Examples::

    python -m t7synth.evaluate --pred synth/ --data DATASET --split test --ckpt best.ckpt
    python -m t7synth.evaluate --pred synth/ --data DATASET --config experiments/demo_unet.yaml --out eval/
    python -m t7synth.evaluate --pred synth/ --data DATASET --split test --ckpt best.ckpt \
        --segmenter 'mri_synthseg --i {input} --o {output} --robust --cpu'
    python -m t7synth.evaluate --pred other_tool/ --data DATASET --split test --pred-scale percentile

How predictions are found, preprocessed and scored: :mod:`t7synth.evaluation.evaluator`;
what each score means: ``docs/metrics.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from t7synth.cli import ArgumentParser, console_entry, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m t7synth.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pred", required=True, metavar="DIR", help="folder of predictions (sub-XXX anywhere in each name)"
    )
    parser.add_argument("--data", required=True, metavar="DATASET", help="dataset folder with the 7T targets")
    parser.add_argument(
        "--split",
        choices=["train", "val", "test"],
        help="score exactly this split (default: every subject with a prediction)",
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default: <pred>/evaluation)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--ckpt", metavar="CKPT", help="read the preprocessing settings, split and intensity LUT from this checkpoint"
    )
    source.add_argument(
        "--model", metavar="FILE.zip", help="read them from this model package (python -m t7synth.export)"
    )
    source.add_argument(
        "--config", metavar="FILE", help="read them from this experiment YAML (default: built-in defaults)"
    )
    parser.add_argument(
        "--perceptual-weights",
        metavar="FILE",
        help="MedicalNet ResNet-10 or -50 weights: adds a 3D perceptual distance",
    )
    parser.add_argument(
        "--ssim",
        choices=["t7synth", "authors"],
        default="t7synth",
        help=(
            "authors: add the paper's SSIM forms (scikit-image default, flattened in-brain) beside t7synth's "
            "(docs/metrics.md)"
        ),
    )
    parser.add_argument(
        "--pred-scale",
        choices=["as-is", "percentile"],
        default="as-is",
        help=(
            "as-is: predictions on predict's [0, 1] scale (refused if not); percentile: normalise each like the "
            "target, for other tools' outputs in scanner intensities"
        ),
    )
    parser.add_argument(
        "--segmenter",
        metavar="CMD",
        help=(
            "a command with {input} and {output} that writes a FreeSurfer-numbered label map, e.g. "
            "'mri_synthseg --i {input} --o {output} --robust --cpu': per-structure Dice against the 7T's "
            "(docs/metrics.md)"
        ),
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from t7synth.evaluation.evaluator import evaluate

    args = build_parser().parse_args(argv)
    report = evaluate(
        args.pred,
        args.data,
        split=args.split,
        out=args.out,
        ckpt=args.ckpt,
        model=args.model,
        config_file=args.config,
        perceptual_weights=args.perceptual_weights,
        ssim=args.ssim,
        pred_scale=args.pred_scale,
        segmenter=args.segmenter,
        progress=not args.no_progress,
    )
    print(report)
    return 0


#: The ``t7synth-evaluate`` console script.
console = console_entry(main)

if __name__ == "__main__":
    sys.exit(run_main(main))
