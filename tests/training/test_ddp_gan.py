"""The GAN U-Net under DDP: two optimisers, manual optimisation, one DDP wrapper.

Each of the GAN's backward passes leaves the other network's parameters without
gradients, which plain DDP rejects; ``GANUNetModule.FIND_UNUSED_PARAMETERS`` makes
``t7synth.fit`` build the strategy with ``find_unused_parameters=True``. This runs one
real epoch on two gloo ranks and checks both networks trained and stayed in sync.
"""

from __future__ import annotations

import ddp_helpers
import pytest
import torch
from helpers import make_dataset

from t7synth import registry

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


@pytest.mark.skipif(
    "gan_unet" not in registry.names(), reason="the gan_unet model is not registered in t7synth.registry yet"
)
def test_gan_trains_one_epoch_on_two_ranks(tmp_path):
    data = make_dataset(tmp_path / "data", n_subjects=6)  # 4 training subjects: 2 per rank
    runs = tmp_path / "runs"
    record = tmp_path / "record"
    args = ddp_helpers.fit_args(
        data,
        runs,
        "--set", "model.discriminator.channels=4",
        "--set", "model.discriminator.num_layers=2",
        "--cpus", "2",
        "--max-epochs", "1",
        "--seed", "3",
        model="gan_unet",
    )  # fmt: skip
    ddp_helpers.run(args, ddp_helpers.environment(record, tmp_path / "cache"), tmp_path / "gan.log")

    final = [ddp_helpers.weights(record, rank) for rank in (0, 1)]
    initial = ddp_helpers.weights(record, 0, "initial")
    for name in final[0]:
        assert torch.equal(final[0][name], final[1][name]), f"ranks diverged at {name}"
    moved = {name for name in final[0] if not torch.equal(final[0][name], initial[name])}
    assert any(name.startswith("discriminator.") for name in moved), "the discriminator never stepped"
    assert any(name.startswith("net.") for name in moved), "the generator never stepped"

    checkpoint = torch.load(
        runs / "gan_unet" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu"
    )
    assert len(checkpoint["optimizer_states"]) == 2 and len(checkpoint["lr_schedulers"]) == 2
    steps = [int(next(iter(state["state"].values()))["step"]) for state in checkpoint["optimizer_states"]]
    # Epoch 0 steps the generator and the discriminator on every batch: 2 batches per rank.
    assert steps == [2, 2]
    assert checkpoint["global_step"] == 4  # global_step counts optimiser steps
