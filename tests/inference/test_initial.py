"""fit --init: starting weights from a checkpoint, a package or an official file (t7synth.inference.initial)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import yaml
from helpers import TINY_UNET

from t7synth import fit
from t7synth.cli import run_main
from t7synth.errors import UserError
from t7synth.inference.initial import initial_weights, source_weights
from t7synth.inference.official import convert
from t7synth.inference.package import export_package
from t7synth.models.unet import UNetModule
from t7synth.registry import resolve


def tiny_config(*extra):
    return resolve("unet", None, [*TINY_UNET, *extra])


def source_module(seed: int = 1) -> UNetModule:
    """A tiny U-Net with random weights everywhere (its output layers start at zero)."""
    torch.manual_seed(seed)
    module = UNetModule(tiny_config().to_dict())
    with torch.no_grad():
        for parameter in module.net.parameters():
            parameter.normal_(0, 0.05)
    return module


def save_checkpoint(path, module):
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": module.hparams["config"]}}, path)
    return path


def save_official(path, module):
    """The authors' layout: the net's weights under model_state_dict, DataParallel names."""
    state = {f"module.{key}": value for key, value in module.net.state_dict().items()}
    torch.save({"epoch": 3, "model_state_dict": state}, path)
    return path


def same(weights, module) -> bool:
    state = module.net.state_dict()
    return set(weights) == set(state) and all(torch.equal(weights[k], state[k]) for k in state)


def test_checkpoint_package_and_official_file_give_the_same_weights(tmp_path):
    module = source_module()
    checkpoint = save_checkpoint(tmp_path / "source.ckpt", module)
    package = export_package(checkpoint, tmp_path / "source.zip").path
    official = save_official(tmp_path / "official.pt", module)
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump({"model": tiny_config().to_dict()["model"]}))
    converted = tmp_path / "converted.ckpt"
    convert(official, config_file, converted, frame=(20, 24, 18))
    kinds = {}
    for path in (checkpoint, package, official, converted):
        weights, kind = source_weights(path)
        kinds[path.name] = kind
        assert same(weights, module), path.name
    assert kinds == {
        "source.ckpt": "t7synth checkpoint",
        "source.zip": "model package",
        "official.pt": "official checkpoint",
        "converted.ckpt": "t7synth checkpoint",
    }
    config = tiny_config()
    initial_weights(package, config)
    assert config.model.init == str(package.resolve())


def test_mismatch_names_the_first_differing_tensor(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "source.ckpt", source_module())
    with pytest.raises(UserError, match=r"source\.ckpt: time_embed\.0\.weight has shape \(32, 8\), .* has \(64, 16\)"):
        initial_weights(checkpoint, tiny_config("model.net.channels=16"))


class Capture(pl.Callback):
    """The generator's weights when training starts, and the optimiser's state then."""

    def on_train_start(self, trainer, module):
        self.weights = {k: v.detach().clone() for k, v in module.generator().state_dict().items()}
        self.optimiser_state = dict(trainer.optimizers[0].state)
        self.epoch = trainer.current_epoch


def test_fit_starts_at_the_given_weights_with_a_fresh_optimiser(tmp_path, dataset):
    module = source_module()
    checkpoint = save_checkpoint(tmp_path / "source.ckpt", module)
    runs = tmp_path / "runs"
    sets = [x for item in TINY_UNET for x in ("--set", item)]
    capture = Capture()
    argv = ["--model", "unet", "--data", str(dataset), "--set", f"runs_dir={runs}", *sets]
    argv += ["--init", str(checkpoint), "--fast-dev-run", "--wandb", "disabled"]
    assert fit.main(argv, callbacks=[capture]) == 0
    assert same(capture.weights, module)
    assert capture.optimiser_state == {} and capture.epoch == 0
    config = yaml.safe_load((runs / "unet" / "version_0" / "config.yaml").read_text())
    assert config["model"]["init"] == str(checkpoint.resolve())


def test_init_with_resume_is_refused(tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "source.ckpt", source_module())
    sets = [x for item in TINY_UNET for x in ("--set", item)]
    argv = ["--model", "unet", *sets, "--init", str(checkpoint), "--resume", "last"]
    assert run_main(fit.main, argv) == 2
    assert "--init" in capsys.readouterr().err


def first_validation(run) -> dict[str, float]:
    import csv

    with open(run / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/mae")]
    return {key: float(rows[0][key]) for key in ("val/mae", "val/psnr_brain")}


def last_validation(run) -> dict[str, float]:
    import csv

    with open(run / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/mae")]
    return {key: float(rows[-1][key]) for key in ("val/mae", "val/psnr_brain")}


@pytest.mark.slow
def test_first_validation_equals_the_source_models(tmp_path, dataset):
    """Trained source -> --init with a vanishing learning rate: the first validation of the new
    run scores the source's weights, so it equals the source's last validation."""
    runs = tmp_path / "runs"
    sets = [x for item in TINY_UNET for x in ("--set", item)]
    base = ["--model", "unet", "--data", str(dataset), "--set", f"runs_dir={runs}", *sets, "--wandb", "disabled"]
    assert fit.main([*base, "--max-epochs", "1", "--name", "source"]) == 0
    source = runs / "source" / "version_0"
    argv = [*base, "--max-epochs", "1", "--name", "tuned", "--set", "optim.lr=1e-30"]
    assert fit.main([*argv, "--init", str(source / "checkpoints" / "last.ckpt")]) == 0
    tuned = runs / "tuned" / "version_0"
    assert first_validation(tuned) == pytest.approx(last_validation(source), rel=1e-6)
    state = torch.load(tuned / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    source_state = torch.load(source / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # a fresh optimiser: its step count is this run's steps, not the source's plus them
    steps = [s["step"] for s in state["optimizer_states"][0]["state"].values()]
    source_steps = [s["step"] for s in source_state["optimizer_states"][0]["state"].values()]
    assert float(steps[0]) == float(source_steps[0]) and state["epoch"] == 0


def test_a_gan_starts_from_a_unet_generator(tmp_path):
    """The GAN U-Net's generator is the U-Net's network: --init from a U-Net checkpoint
    fills it, and its critic is left to start at random."""
    module = source_module()
    checkpoint = save_checkpoint(tmp_path / "unet.ckpt", module)
    config = resolve("gan_unet", None, list(TINY_UNET))
    weights = initial_weights(checkpoint, config)
    assert same(weights, module)
    assert config.model.init == str(checkpoint.resolve())
