"""The GAN U-Net: update schedule, discriminator learning, bf16, parameter count."""

from __future__ import annotations

import csv

import pytest
import torch
from helpers import REPO, TINY_UNET

from t7synth import fit
from t7synth.cli import run_main
from t7synth.models.gan_unet import GANUNetModule
from t7synth.registry import build_on_meta, resolve

#: A tiny generator (conftest's U-Net) and a two-layer discriminator, which fits the
#: fixture's 20x18 slices (three layers would shrink them to a 1x1 map).
TINY_GAN = [*TINY_UNET, "model.discriminator.channels=4", "model.discriminator.num_layers=2"]


def _sets(items):
    return [x for item in items for x in ("--set", item)]


def _cli(root, runs, *extra):
    return [
        "--model",
        "gan_unet",
        "--data",
        str(root),
        "--set",
        f"runs_dir={runs}",
        *_sets(TINY_GAN),
        "--wandb",
        "disabled",
        *extra,
    ]


def test_paper_summary_counts_the_generator_only(capsys):
    args = ["--model", "gan_unet", "--config", str(REPO / "experiments/paper_gan_unet.yaml"), "--summary"]
    assert run_main(fit.main, args) == 0
    assert "parameters: 222326589" in capsys.readouterr().out.splitlines()


def test_two_optimisers_step_in_the_published_ratio(dataset, tmp_path, capsys, monkeypatch):
    # 2 training subjects x 10 samples / batch 2 = 10 batches per epoch: the
    # discriminator steps first on every batch; the generator after it on all 10 in
    # epoch 0, then on batches 4 and 9 of epoch 1 (LoadingModel.py: not (step + 1) % 5).
    events: list = []
    step, training_step = GANUNetModule._step, GANUNetModule.training_step

    def recording_step(self, optimizer, loss):
        events[-1][1].append("G" if optimizer is self.optimizers()[0] else "D")
        return step(self, optimizer, loss)

    def recording_training_step(self, batch, batch_idx):
        events.append(((self.current_epoch, batch_idx), []))
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(GANUNetModule, "_step", recording_step)
    monkeypatch.setattr(GANUNetModule, "training_step", recording_training_step)
    runs = tmp_path / "runs"
    extra = ["--max-epochs", "2", *_sets(["data.samples_per_volume=10", "data.queue_length=20", "trainer.val_every=2"])]
    assert run_main(fit.main, _cli(dataset, runs, *extra)) == 0
    order = {key: "".join(steps) for key, steps in events}
    assert order == {(epoch, b): "DG" if epoch == 0 or b in (4, 9) else "D" for epoch in (0, 1) for b in range(10)}
    checkpoint = torch.load(runs / "gan_unet" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["gan_steps"] == {"generator": 12, "discriminator": 20}
    assert checkpoint["global_step"] == 32  # global_step counts the steps of both optimisers
    g_state, d_state = checkpoint["optimizer_states"]
    assert int(next(iter(g_state["state"].values()))["step"]) == 12
    assert int(next(iter(d_state["state"].values()))["step"]) == 20
    assert [s["last_epoch"] for s in checkpoint["lr_schedulers"]] == [2, 2]  # both stepped per epoch
    assert "intensity LUT" in capsys.readouterr().out
    with open(runs / "gan_unet" / "version_0" / "metrics.csv") as handle:
        header = set(next(csv.reader(handle)))
    keys = {"g_loss", "d_loss", "l1", "adversarial", "gp", "d_real", "d_fake"}
    assert {f"train/{key}" for key in keys} <= header


@pytest.mark.parametrize("penalty", [0.0, 10.0])
def test_discriminator_loss_falls_when_real_and_fake_differ(penalty):
    config = resolve("gan_unet", None, [*TINY_GAN, f"loss.gradient_penalty={penalty}"])
    torch.manual_seed(0)
    module = GANUNetModule(config.to_dict())
    optimizer = torch.optim.Adam(module.discriminator.parameters(), lr=2e-3, betas=(0.0, 0.9))
    real = 0.5 + 0.5 * torch.rand(4, 1, 16, 16)  # bright, textured
    fake = torch.zeros(4, 1, 16, 16)  # black: trivially separable
    history = []
    for _ in range(15):
        losses = module.discriminator_losses(real, fake)
        optimizer.zero_grad()
        losses["d_loss"].backward()
        optimizer.step()
        history.append({name: float(value.detach()) for name, value in losses.items()})
    first, last = history[0], history[-1]
    assert last["d_loss"] < 0.5 * first["d_loss"]
    if penalty == 0:
        # Unconstrained, the discriminator separates the two at once.
        assert last["d_bce"] < 0.5 * first["d_bce"]
        assert last["d_real"] > 0.75 and last["d_fake"] < 0.25
    else:
        # The penalty (10x the BCE, on the gradient of the summed patch logits) is what
        # falls first: it pulls the critic's input gradient norm towards 1.
        assert last["gp"] < 0.05 * first["gp"]


def test_gradient_penalty_is_fp32_under_bf16_autocast():
    config = resolve("gan_unet", None, TINY_GAN)
    module = GANUNetModule(config.to_dict())
    real, fake = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        penalty = module.gradient_penalty(real, fake)
    assert penalty.dtype == torch.float32 and torch.isfinite(penalty)
    penalty.backward()  # create_graph: the penalty reaches every conv kernel of the critic
    kernels = [p for name, p in module.discriminator.named_parameters() if p.ndim > 1]
    assert kernels and all(p.grad is not None and torch.isfinite(p.grad).all() for p in kernels)


def test_generator_loss_rewards_fooling_the_discriminator():
    # A perfect reconstruction (no L1), judged by a discriminator whose last bias says
    # "real" everywhere, then "fake" everywhere: only the adversarial term differs.
    config = resolve("gan_unet", None, TINY_GAN)
    module = GANUNetModule(config.to_dict())
    target = torch.rand(2, 1, 16, 16)
    last = [layer for layer in module.discriminator.modules() if isinstance(layer, torch.nn.Conv2d)][-1]
    losses = {}
    for verdict, bias in (("real", 10.0), ("fake", -10.0)):
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(bias)
        losses[verdict] = module.generator_losses(target.clone(), target, torch.ones_like(target))
    fooled, caught = losses["real"], losses["fake"]
    assert fooled["l1"] == caught["l1"] == 0
    assert fooled["adversarial"] < 1e-3 < 9 < caught["adversarial"]
    assert fooled["g_loss"] < caught["g_loss"]


def test_gradient_penalty_runs_on_the_meta_device():
    # The memory plan runs the model's own losses on the meta device, where torch.autocast
    # does not exist: the penalty skips its autocast-off context there.
    config = resolve("gan_unet", None, TINY_GAN)
    module = build_on_meta(config)
    real, fake = torch.empty(2, 1, 16, 16, device="meta"), torch.empty(2, 1, 16, 16, device="meta")
    penalty = module.discriminator_losses(real, fake)["gp"]
    assert penalty.device.type == "meta" and penalty.dtype == torch.float32 and penalty.shape == ()


def test_fast_dev_run_bf16(dataset, tmp_path, capsys):
    args = _cli(dataset, tmp_path / "runs", "--fast-dev-run", "--precision", "bf16-mixed")
    assert run_main(fit.main, args) == 0
    assert "fast dev run finished" in capsys.readouterr().out


def test_unknown_discriminator_key_is_a_user_error(capsys):
    args = ["--model", "gan_unet", "--set", "model.discriminator.width=8", "--summary"]
    assert run_main(fit.main, args) == 2
    assert "model.discriminator.width" in capsys.readouterr().err


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_discriminator_norm_choice(norm):
    config = resolve("gan_unet", None, [*TINY_GAN, f"model.discriminator.norm={norm}"])
    module = GANUNetModule(config.to_dict())
    kinds = {type(m).__name__ for m in module.discriminator.modules()}
    assert ("InstanceNorm2d" if norm == "instance" else "BatchNorm2d") in kinds
