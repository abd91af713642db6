"""``python -m t7synth.predict``: synthesise 7T-like volumes from 3T scans with a checkpoint.

Examples::

    python -m t7synth.predict --ckpt runs/demo_unet/version_0/checkpoints/best.ckpt \\
        --input scan.nii.gz --output scan_synth7T.nii.gz [--mask brain_mask.nii.gz]
    python -m t7synth.predict --ckpt best.ckpt --input scans/ --output synth/ [--mask masks/]
    python -m t7synth.predict --ckpt best.ckpt --input DATASET --split test --output synth/
    python -m t7synth.predict --model model.zip --input scan.nii.gz --output scan_synth7T.nii.gz
    python -m t7synth.predict --ckpt axis0.ckpt --ckpt axis1.ckpt --ckpt axis2.ckpt --input scans/ --output synth/
    python -m t7synth.predict --model model.zip --bids BIDS_DIR --output DERIV_DIR [--participant-label 01]

The checkpoint (or a model package from ``python -m t7synth.export``) alone defines the
model, its geometry and its preprocessing; the output lies on the input's grid (same
affine, float32, [0, 1], zero outside the brain). See :mod:`t7synth.inference.synthesiser`
for the steps. Several ``--ckpt`` (or ``--model``) are fused: the output is their
voxel-wise mean and their voxel-wise SD is written beside it
(``*_desc-synth7Tsd_T1w.nii.gz``, ``*_synth7T_sd.nii.gz``, ``*_sd.nii.gz``). Folder inputs
continue past unreadable files, report each on one line, and exit non-zero at the end.
``--skull-strip``/``--n4`` prepare a raw (full-head) scan on its own grid, and
``qc.tsv`` beside the outputs rates every input against the training data
(docs/applying.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from t7synth.cli import ArgumentParser, console_entry, run_main

#: Exit status when some volumes of a folder failed (the others were written).
PARTIAL_FAILURE_EXIT = 1


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m t7synth.predict", description=__doc__.split("\n\n")[0])
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument(
        "--ckpt",
        action="append",
        help="checkpoint file of a fit run (its best or last, under the run folder); repeat to fuse models",
    )
    weights.add_argument(
        "--model",
        action="append",
        metavar="FILE.zip",
        help="model package written by python -m t7synth.export; repeat to fuse",
    )
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--input", metavar="FILE|DIR", help="a NIfTI file, a folder of them, or a dataset folder")
    inputs.add_argument("--bids", metavar="BIDS_DIR", help="a raw BIDS dataset: every T1w in, derivatives out")
    parser.add_argument("--output", required=True, metavar="FILE|DIR", help="output file (for a file input) or folder")
    parser.add_argument("--participant-label", nargs="+", metavar="LABEL", help="--bids: only these participants")
    parser.add_argument("--session-label", nargs="+", metavar="LABEL", help="--bids: only these sessions")
    parser.add_argument("--skull-strip", action="store_true", help="extract the brain (deepbet); mask written beside")
    parser.add_argument("--n4", action="store_true", help="correct the bias field with N4 (SimpleITK) first")
    parser.add_argument(
        "--preprocess", choices=["auto", "none"], default="auto", help="auto: also what the model's training had"
    )
    parser.add_argument(
        "--mask", metavar="FILE|DIR", help="brain mask(s); default: the dataset's masks, else voxels > 0"
    )
    parser.add_argument(
        "--split", choices=["train", "val", "test"], help="dataset input: only this split (as in training)"
    )
    from t7synth.inference.conditioning import add_arguments as add_conditioning

    add_conditioning(parser)  # --age, --sex, --unconditioned
    parser.add_argument("--gpus", type=int, default=0, help="0 = CPU (default), 1 = the first CUDA GPU")
    parser.add_argument("--batch-size", type=int, help="windows/patches per forward pass (default: the config's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from t7synth.inference.jobs import predict
    from t7synth.measures.quality import no_reference_quality

    outcome = predict(
        args.ckpt,
        args.input,
        args.output,
        mask=args.mask,
        split=args.split,
        age=args.age,
        sex={"F": 1.0, "M": 0.0}.get(args.sex),
        gpus=args.gpus,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        model=args.model,
        unconditioned=args.unconditioned,
        skull_strip=args.skull_strip,
        n4=args.n4,
        preprocess=args.preprocess,
        bids=args.bids,
        participant_labels=args.participant_label,
        session_labels=args.session_label,
        # MRIQC's CNR, CJV and SNR of each output and input in qc.tsv (inference may not
        # import evaluation, so the command hands the measure down).
        quality=no_reference_quality,
    )
    print(outcome.summary)
    if outcome.failures:
        print(
            f"error: {len(outcome.failures)} of {outcome.total} volumes failed (see the lines above)", file=sys.stderr
        )
        return PARTIAL_FAILURE_EXIT
    return 0


#: The ``t7synth-predict`` console script.
console = console_entry(main)

if __name__ == "__main__":
    sys.exit(run_main(main))
