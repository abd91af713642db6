"""``optim.schedule``: StepLR per epoch, or the one-cycle policy per step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import TINY_UNET

from t7synth import registry
from t7synth.errors import UserError
from t7synth.models.base import one_cycle
from t7synth.registry import resolve


def test_one_cycle_is_pytorchs_and_holds_its_last_rate():
    total = 37
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2.0, total_steps=total)
    factor = one_cycle(total)
    for step in range(total):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(2.0 * factor(step), rel=1e-9)
        optimizer.step()
        if step < total - 1:
            reference.step()
    assert factor(total + 5) == factor(total - 1) == pytest.approx(1 / 2.5e5)


def _module(name, *sets):
    config = resolve(name, None, [*TINY_UNET, "optim.lr=1e-3", *sets])
    module = registry.get(name)(config.to_dict())
    module.trainer = SimpleNamespace(estimated_stepping_batches=20)
    return module


def test_onecycle_steps_per_batch_and_peaks_at_lr():
    module = _module("unet", "optim.schedule=onecycle")
    entry = module.configure_optimizers()["lr_scheduler"]
    assert entry["interval"] == "step"
    scheduler = entry["scheduler"]
    rates = []
    for _ in range(20):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    assert max(rates) == pytest.approx(1e-3, rel=1e-3) and rates[0] == pytest.approx(1e-3 / 25)
    assert rates.index(max(rates)) == 5  # 30% of 20 steps, counted from 0


def test_step_schedule_is_per_epoch():
    entry = _module("unet", "optim.step_gamma=0.5").configure_optimizers()["lr_scheduler"]
    assert entry["interval"] == "epoch" and isinstance(entry["scheduler"], torch.optim.lr_scheduler.StepLR)


def test_onecycle_is_refused_for_the_gan():
    module = _module(
        "gan_unet", "optim.schedule=onecycle", "model.discriminator.channels=4", "model.discriminator.num_layers=2"
    )
    with pytest.raises(UserError, match="optim.schedule onecycle needs automatic optimisation"):
        module.configure_optimizers()
