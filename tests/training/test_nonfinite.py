"""A non-finite loss or gradient skips its optimiser step, is counted, and N in a row
stop the run with one line and a usable ``last.ckpt`` (both GAN optimisers included)."""

from __future__ import annotations

import csv
import math

import pytest
import pytorch_lightning as pl
import torch
from helpers import TINY_UNET, make_dataset

from t7synth import fit
from t7synth.cli import run_main
from t7synth.models.base import SynthesisModule
from t7synth.models.gan_unet import GANUNetModule
from t7synth.training.nonfinite import NonFiniteGuard


@pytest.fixture
def dataset(tmp_path):
    """2 training subjects (4 batches an epoch) and 1 validation subject; no test split,
    so each run ends after training (the test phase is not what these tests check)."""
    root = make_dataset(tmp_path / "data", n_subjects=3)
    table = root / "participants.tsv"
    table.write_text(table.read_text().replace("\ttest", "\ttrain"))
    return root


def _args(dataset, runs, model="unet", *extra):
    sets = [*TINY_UNET, "trainer.precision=32-true", "data.samples_per_volume=4"]
    if model == "gan_unet":
        sets += ["model.discriminator.channels=4", "model.discriminator.num_layers=2"]
    return [
        "--model",
        model,
        "--data",
        str(dataset),
        "--out",
        str(runs),
        "--max-epochs",
        "1",
        "--wandb",
        "disabled",
        *[item for value in sets for item in ("--set", value)],
        *extra,
    ]


class ParameterWatch(pl.Callback):
    """Record, per training batch, whether the generator's weights changed and stayed finite."""

    def __init__(self):
        self.changed: list[bool] = []
        self.finite = True

    def _weights(self, module) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in module.generator().parameters()]).clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._before = self._weights(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        after = self._weights(pl_module)
        self.changed.append(not torch.equal(after, self._before))
        self.finite = self.finite and bool(torch.isfinite(after).all())


def _skipped(run) -> list[float]:
    with open(run / "metrics.csv") as handle:
        return [float(row["train/skipped_steps"]) for row in csv.DictReader(handle) if row.get("train/skipped_steps")]


def test_a_nan_loss_skips_its_step_and_is_counted(dataset, tmp_path, monkeypatch):
    losses = SynthesisModule.reconstruction_losses

    def nan_at_step_one(self, *args, **kwargs):
        result = losses(self, *args, **kwargs)
        if self.training and self.global_step == 1:
            result["loss"] = result["loss"] * math.nan
        return result

    monkeypatch.setattr(SynthesisModule, "reconstruction_losses", nan_at_step_one)
    watch = ParameterWatch()
    assert fit.main(_args(dataset, tmp_path / "runs"), callbacks=[watch]) == 0
    assert watch.changed[:3] == [True, False, True] and watch.finite
    (run,) = (tmp_path / "runs").glob("*/version_0")
    assert _skipped(run) == [1.0]


def test_an_infinite_gradient_skips_its_step(dataset, tmp_path, monkeypatch):
    def inf_gradient_at_step_zero(self):
        if self.global_step == 0:
            next(iter(self.generator().parameters())).grad.view(-1)[0] = math.inf

    monkeypatch.setattr(SynthesisModule, "on_after_backward", inf_gradient_at_step_zero, raising=False)
    watch = ParameterWatch()
    assert fit.main(_args(dataset, tmp_path / "runs"), callbacks=[watch]) == 0
    assert watch.changed[:2] == [False, True] and watch.finite


@pytest.mark.parametrize("model", ["unet", "gan_unet"])
def test_n_bad_steps_in_a_row_stop_the_run_with_one_line(dataset, tmp_path, monkeypatch, capfd, model):
    losses = SynthesisModule.reconstruction_losses
    d_losses = GANUNetModule.discriminator_losses

    def nan_from_step_two(self, *args, **kwargs):
        result = losses(self, *args, **kwargs)
        if self.training and self.global_step >= 2:
            result["loss"] = result["loss"] * math.nan
        return result

    def nan_discriminator(self, *args, **kwargs):
        result = d_losses(self, *args, **kwargs)
        if self.global_step >= 2:
            result["d_loss"] = result["d_loss"] * math.nan
        return result

    monkeypatch.setattr(SynthesisModule, "reconstruction_losses", nan_from_step_two)
    monkeypatch.setattr(GANUNetModule, "discriminator_losses", nan_discriminator)
    runs = tmp_path / "runs"
    status = run_main(fit.main, _args(dataset, runs, model, "--set", "trainer.nonfinite_patience=2"))
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and "Traceback" not in err
    assert len(errors) == 1 and "training stopped at step" in errors[0] and "nonfinite_patience" in errors[0]
    (run,) = runs.glob("*/version_0")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    weights = [v for v in checkpoint["state_dict"].values() if v.is_floating_point()]
    assert weights and all(bool(torch.isfinite(v).all()) for v in weights)
    assert not (run / "test_scores.csv").exists()  # a stopped run is not tested


def test_the_guard_skips_either_gan_optimiser_alone():
    """Unit level: of two optimisers, only the one with a NaN gradient loses its step."""
    generator, discriminator = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    opt_g = torch.optim.Adam(generator.parameters(), lr=0.1)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=0.1)

    class Trainer:
        precision = "bf16-mixed"
        global_step = 7
        current_epoch = 0
        optimizers = [opt_g, opt_d]
        should_stop = False

    guard = NonFiniteGuard(patience=2)
    for net in (generator, discriminator):
        net(torch.ones(1, 2)).sum().backward()
    discriminator.weight.grad[0, 0] = math.nan
    before = discriminator.weight.detach().clone()
    for optimizer in (opt_g, opt_d):
        guard.on_before_optimizer_step(Trainer, None, optimizer)
        optimizer.step()
    assert generator.weight.grad is not None and discriminator.weight.grad is None
    assert torch.equal(discriminator.weight, before) and opt_d.state == {}
    assert guard.epoch_skipped == 1 and guard.in_a_row == 1 and not Trainer.should_stop
    discriminator(torch.ones(1, 2)).sum().mul(math.inf).backward()
    guard.on_before_optimizer_step(Trainer, None, opt_d)
    assert Trainer.should_stop and "step 7" in guard.stopped_at and "optimiser 1" in guard.stopped_at
