#!/bin/bash
# Multi-view synthesis: one 2.5D model per slice axis, fused voxel by voxel by predict.
#
#   experiments/multiview/train_and_fuse.sh                                  # demo U-Net on the demo data, CPU
#   CONFIG=experiments/paper_unet.yaml DATA=/data/paired experiments/multiview/train_and_fuse.sh --gpus 4
#   experiments/multiview/train_and_fuse.sh --max-epochs 2                   # arguments go to every fit
#
# The authors' follow-up (multi-view-super-resolution-* in DeMONLab-BioFINDER/SuperResolutionMalo)
# trains the paper's U-Net three times, slicing along each array axis, and averages the three
# synthetic volumes (Unet/average.py). This script does the same with t7synth's commands:
#
#   1. fit CONFIG three times with --set geometry.axis=0, 1, 2 (sagittal, coronal and axial
#      slices: t7synth reorients every volume to RAS+ first), as experiments <name>_axis0..2;
#   2. predict the test split with the three checkpoints at once (--ckpt A --ckpt B --ckpt C):
#      each output is their voxel-wise mean, and sub-XXX_desc-synth7Tsd_T1w.nii.gz beside it
#      their voxel-wise SD, where the views disagree;
#   3. evaluate the fused volumes (the SD maps are skipped).
#
# Variables read from the calling shell: CONFIG (default experiments/demo_unet.yaml), DATA
# (default: the demo dataset, made once by python -m t7synth.demo), RUNS (runs), CKPT (best or
# last: which checkpoint of each run is fused; default best), OUT (synth_multiview), PYTHON
# (.venv/bin/python). Every run's settings other than the axis are CONFIG's, so the three
# models split the dataset alike (predict refuses to fuse a --split of models that do not).

set -euo pipefail

CONFIG=${CONFIG:-experiments/demo_unet.yaml}
PYTHON=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-runs}
CKPT=${CKPT:-best}
OUT=${OUT:-synth_multiview}
if [[ -z "${DATA:-}" ]]; then
    # The demo folder is the first line python -m t7synth.demo prints.
    DATA=$("$PYTHON" -m t7synth.demo --no-progress | head -n 1)
fi
NAME=$(basename "$CONFIG" .yaml)

checkpoints=()
for axis in 0 1 2; do
    "$PYTHON" -m t7synth.fit --config "$CONFIG" --data "$DATA" --set "geometry.axis=$axis" --name "${NAME}_axis${axis}" --out "$RUNS" "$@"
    run=$(ls -d "$RUNS/${NAME}_axis${axis}"/version_* | sort -V | tail -n 1)
    checkpoints+=("$run/checkpoints/$CKPT.ckpt")
done

fuse=()
for checkpoint in "${checkpoints[@]}"; do fuse+=(--ckpt "$checkpoint"); done
"$PYTHON" -m t7synth.predict "${fuse[@]}" --input "$DATA" --split test --output "$OUT" --no-progress
# The preprocessing settings and the split are the same in the three checkpoints: any one serves.
"$PYTHON" -m t7synth.evaluate --pred "$OUT" --data "$DATA" --split test --ckpt "${checkpoints[0]}" --out "$OUT/evaluation" --no-progress
