"""``data.slab_sampling: every`` on two real DDP ranks whose shards differ in size.

Every subject gives one sample per brain slice, so two ranks' shards hold different
numbers of samples; a rank that ran one batch fewer would leave the other waiting in
an all-reduce forever. The data module gives every rank the largest shard's count;
this runs two epochs on two gloo ranks and checks they finish in step with the same
weights (a hang fails after ``ddp_helpers.TIMEOUT_S``).
"""

from __future__ import annotations

import ddp_helpers
import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import make_dataset, write_nifti

from t7synth.data import naming

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


def test_every_brain_slice_on_two_ranks_with_unequal_shards(tmp_path):
    data = make_dataset(tmp_path / "data", n_subjects=6)  # 4 training subjects: 2 per rank
    for subject, keep in (("sub-001", slice(8, 13)), ("sub-002", slice(6, 16))):
        path = naming.mask_path(data, subject)
        image = nib.load(str(path))
        mask = np.zeros(image.shape, dtype=np.uint8)
        mask[:, keep] = np.asarray(image.dataobj)[:, keep]
        write_nifti(path, mask, image.affine)
    runs, record = tmp_path / "runs", tmp_path / "record"
    args = ddp_helpers.fit_args(
        data, runs, "--set", "data.slab_sampling=every", "--cpus", "2", "--max-epochs", "2", "--seed", "1"
    )
    ddp_helpers.run(args, ddp_helpers.environment(record, tmp_path / "cache"), tmp_path / "every.log")

    final = [ddp_helpers.weights(record, rank) for rank in (0, 1)]
    for name in final[0]:
        assert torch.equal(final[0][name], final[1][name]), f"ranks diverged at {name}"
    checkpoint = torch.load(
        runs / "unet" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu"
    )
    assert checkpoint["epoch"] == 1
