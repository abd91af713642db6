"""The V-Net baseline as a LightningModule: parameter count, loss, CLI run."""

from __future__ import annotations

import torch
from helpers import REPO

from t7synth import fit
from t7synth.cli import run_main
from t7synth.models.vnet import VNetModule
from t7synth.registry import resolve

#: 16^3 patches fit the fixture's 20x24x18 volumes; the narrowest widths keep it fast.
TINY_VNET = [
    "model.net.channels=[2,4,8,8,8]",
    "geometry.patch=[16,16,16]",
    "geometry.overlap=4",
    "data.batch_size=2",
    "data.samples_per_volume=2",
    "data.queue_length=4",
    "data.inference_batch_size=4",
    "trainer.log_every_n_steps=1",
]


def test_paper_summary(capsys):
    assert (
        run_main(fit.main, ["--model", "vnet", "--config", str(REPO / "experiments/paper_vnet.yaml"), "--summary"]) == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert "parameters: 15734497" in out
    assert "geometry: 3D patch: 64x64x64, inference overlap 8" in out


def test_defaults_are_the_published_optimiser_and_masked_l1():
    config = resolve("vnet", None, TINY_VNET)
    assert config.loss.l1_in_mask and config.optim.lr == 1e-3 and config.optim.weight_decay == 1e-5
    assert config.optim.step_gamma == 1.0
    module = VNetModule(config.to_dict())
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["weight_decay"] == 1e-5  # coupled L2, as Adam(weight_decay=...)


def test_l1_ignores_errors_outside_the_brain():
    module = VNetModule(resolve("vnet", None, TINY_VNET).to_dict())
    target = torch.zeros(1, 1, 4, 4, 4)
    mask = torch.zeros(1, 1, 4, 4, 4, dtype=torch.uint8)
    mask[..., :2] = 1
    prediction = target.clone()
    prediction[..., 2:] = 5.0  # wrong only outside the mask
    assert module.reconstruction_losses(prediction, target, mask)["l1"] == 0
    prediction[..., :2] = 1.0
    assert torch.isclose(module.reconstruction_losses(prediction, target, mask)["l1"], torch.tensor(1.0))


def test_fast_dev_run(dataset, tmp_path, capsys):
    sets = [x for item in TINY_VNET for x in ("--set", item)]
    args = [
        "--model",
        "vnet",
        "--data",
        str(dataset),
        "--set",
        f"runs_dir={tmp_path / 'runs'}",
        *sets,
        "--wandb",
        "disabled",
        "--fast-dev-run",
    ]
    assert run_main(fit.main, args) == 0
    assert "fast dev run finished" in capsys.readouterr().out
