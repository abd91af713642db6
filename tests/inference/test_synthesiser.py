"""The Synthesiser's output on a scan's own grid: nothing outside the brain, ever."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from helpers import constant_module, make_pair, write_nifti

from t7synth.config import Config
from t7synth.inference.jobs import Job
from t7synth.inference.synthesiser import Synthesiser


def test_output_is_zero_outside_the_mask_after_resampling(tmp_path):
    # Trained at 2 mm, applied to a 1 mm scan: the prediction is resampled back, and
    # linear interpolation would smear the brain's values into the voxels around it.
    source, _, mask = make_pair((16, 18, 14), seed=3)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    scan = write_nifti(tmp_path / "scan.nii.gz", source, affine)
    mask_file = write_nifti(tmp_path / "mask.nii.gz", mask, affine)
    model = constant_module(Config().to_dict())
    model.voxel_size.copy_(torch.tensor([2.0, 2.0, 2.0]))
    out = Synthesiser(model).write(Job(source=scan, output=tmp_path / "synth.nii.gz", mask=mask_file))
    data = np.asarray(nib.load(str(out)).dataobj)
    assert data.shape == source.shape
    assert (data[mask == 0] == 0).all()
    assert (data[mask == 1] > 0).mean() > 0.9  # the brain itself is predicted
