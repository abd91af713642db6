"""Resuming is exact for a model with two optimisers and manual optimisation (GAN U-Net).

One process (the DDP version of this is ``test_ddp_training.py``): two epochs in one go
against one epoch plus ``--resume last`` for the second. Epoch 0 steps the generator on
every batch and epoch 1 on every ``generator_every``-th, both schedulers decay each
epoch, and the gradient penalty draws random mixes, so the generator, discriminator,
both Adam states, both schedulers, the module's own step counters and the random
stream must all be restored for the weights to agree.
"""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_UNET

from t7synth import fit, registry
from t7synth.cli import run_main

pytestmark = pytest.mark.slow


@pytest.mark.skipif(
    "gan_unet" not in registry.names(), reason="the gan_unet model is not registered in t7synth.registry yet"
)
# every: per-subject sample counts; workers 1: batches made ahead by a background
# process across epochs (t7synth.data.prefetch).
@pytest.mark.parametrize(("sampling", "workers"), [("label", 0), ("every", 0), ("label", 1)])
def test_gan_resume_matches_an_uninterrupted_run(dataset, tmp_path, sampling, workers):
    def args(runs, *extra):
        sets = [x for item in TINY_UNET for x in ("--set", item)]
        return [
            "--model", "gan_unet", "--data", str(dataset), "--set", f"runs_dir={runs}", *sets,
            "--set", "model.discriminator.channels=4", "--set", "model.discriminator.num_layers=2",
            "--set", "data.samples_per_volume=4", "--set", "optim.generator_every=2",
            "--set", "optim.step_gamma=0.5", "--set", "data.augment.noise=0.05",
            "--set", f"data.slab_sampling={sampling}", "--set", f"data.num_workers={workers}",
            "--seed", "5", "--wandb", "disabled", *extra,
        ]  # fmt: skip

    assert run_main(fit.main, args(tmp_path / "a", "--max-epochs", "2")) == 0
    assert run_main(fit.main, args(tmp_path / "b", "--max-epochs", "1")) == 0
    assert run_main(fit.main, args(tmp_path / "b", "--max-epochs", "2", "--resume", "last")) == 0

    def last(runs):
        return torch.load(
            runs / "gan_unet" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu"
        )

    a, b = last(tmp_path / "a"), last(tmp_path / "b")
    assert not (tmp_path / "b" / "gan_unet" / "version_1").exists()
    assert (b["epoch"], b["global_step"], b["gan_steps"]) == (a["epoch"], a["global_step"], a["gan_steps"])
    # 4 batches per epoch with label (2 subjects x 4 / batch 2): G steps on all 4 in
    # epoch 0, then on batches 1 and 3; every draws each of the ~19 brain slices.
    batches = a["gan_steps"]["discriminator"] // 2
    assert a["gan_steps"] == {"generator": batches + batches // 2, "discriminator": 2 * batches}
    assert batches == 4 if sampling == "label" else batches > 4
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][name], a["state_dict"][name], rtol=1e-6, atol=1e-7, msg=name)
    assert b["lr_schedulers"] == a["lr_schedulers"]
    assert [s["_last_lr"] for s in a["lr_schedulers"]] == [[0.25e-4], [0.5e-4]]  # both decayed twice
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"]):
        for index, state in opt_a["state"].items():
            assert int(opt_b["state"][index]["step"]) == int(state["step"])
            torch.testing.assert_close(opt_b["state"][index]["exp_avg"], state["exp_avg"], rtol=1e-5, atol=1e-10)

    # metrics.csv of the resumed run reads as the uninterrupted run's, epoch by epoch:
    # epoch 0 kept, epoch 1 once, and the first launch's test rows replaced, not repeated.
    from ddp_helpers import history

    history_a = history(tmp_path / "a" / "gan_unet" / "version_0")
    history_b = history(tmp_path / "b" / "gan_unet" / "version_0")
    assert [sorted(row) for row in history_b] == [sorted(row) for row in history_a]
    for row_a, row_b in zip(history_a, history_b):
        # nan_ok: a tiny untrained model can leave a tissue class empty (its CNR, CJV, SNR: NaN).
        assert row_b == pytest.approx(row_a, rel=1e-5, abs=1e-6, nan_ok=True)
