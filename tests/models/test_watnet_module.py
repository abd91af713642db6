"""The WATNet baseline as a LightningModule: count, optimiser groups, wavelet statistics."""

from __future__ import annotations

import torch
from helpers import REPO

from t7synth import fit
from t7synth.cli import run_main
from t7synth.models.watnet import WATNetModule
from t7synth.nets.watnet import WATNet
from t7synth.registry import resolve

REFERENCE_PARAMS = 1_219_139  # the Caffe release's design (experiments/paper_watnet.yaml)

#: 16x16 in-plane crops of the fixture's 20x18 slices; width 16 (the narrowest that groups=4 allows) keeps it fast.
TINY_WATNET = [
    "model.net.features=16",
    "geometry.inplane=[16,16]",
    "data.batch_size=2",
    "data.samples_per_volume=2",
    "data.queue_length=4",
    "data.inference_batch_size=8",
    "trainer.log_every_n_steps=1",
]


def _cli(root, runs, *extra):
    sets = [x for item in TINY_WATNET for x in ("--set", item)]
    return ["--model", "watnet", "--data", str(root), "--set", f"runs_dir={runs}", *sets, "--wandb", "disabled", *extra]


def test_paper_summary(capsys):
    assert (
        run_main(fit.main, ["--model", "watnet", "--config", str(REPO / "experiments/paper_watnet.yaml"), "--summary"])
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    count = int(next(line for line in out if line.startswith("parameters:")).split()[1])
    assert abs(count - REFERENCE_PARAMS) <= 0.02 * REFERENCE_PARAMS
    assert "geometry: 2.5D slab: 3 slices along axis 2 (64x64), target: all slice(s)" in out  # axial


def test_paper_optimiser_uses_the_caffe_multipliers():
    config = resolve("watnet", str(REPO / "experiments/paper_watnet.yaml"), ["model.net.features=16"])
    module = WATNetModule(config.to_dict())
    optimizers = module.configure_optimizers()
    groups = {group["name"]: group for group in optimizers["optimizer"].param_groups}
    assert groups["weights"]["lr"] == 2.5e-4 and groups["weights"]["weight_decay"] == 1e-4
    assert groups["biases"]["lr"] == 2.5e-5 and groups["output"]["lr"] == 2.5e-5
    assert groups["upsample"]["weight_decay"] == 1e-5
    scheduler = optimizers["lr_scheduler"]["scheduler"]
    assert (scheduler.step_size, scheduler.gamma) == (34, 0.8)


def test_training_slabs_cover_the_brain_slices(dataset):
    from t7synth.data.datamodule import PairedDataModule

    config = resolve("watnet", None, [*TINY_WATNET, f"data.root={dataset}"])
    datamodule = PairedDataModule(config)
    datamodule.setup("fit")
    module = WATNetModule(config.to_dict())
    subjects = datamodule.subjects["train"]
    slabs = list(module.training_slabs(subjects, slabs_per_batch=4))
    assert slabs and all(s.shape[1:] == (3, 20, 18) and len(s) <= 4 for s in slabs)
    # Brain slices along axis 1 (J), grouped three by three without overlap.
    brain = [int((s["mask"].data > 0).any(dim=(0, 1, 3)).sum()) for s in subjects]
    assert sum(len(s) for s in slabs) == sum(n // 3 for n in brain)


def test_fast_dev_run(dataset, tmp_path, capsys):
    assert run_main(fit.main, _cli(dataset, tmp_path / "runs", "--fast-dev-run")) == 0
    assert "fast dev run finished" in capsys.readouterr().out


def test_wavelet_statistics_are_fitted_and_saved(dataset, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    assert run_main(fit.main, _cli(dataset, runs, "--max-epochs", "1")) == 0
    state = torch.load(runs / "watnet" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    mean, std = state["net.wavelet_mean"], state["net.wavelet_std"]
    assert not torch.equal(mean, torch.zeros_like(mean)) and not torch.equal(std, torch.ones_like(std))
    assert (std > 0).all() and mean[6] > 0  # the level-3 approximation of a positive image

    # Resuming keeps the checkpoint's statistics rather than refitting them.
    module = WATNetModule.load_from_checkpoint(
        runs / "watnet" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True
    )
    assert module.net.wavelet_stats_fitted and torch.equal(module.net.wavelet_mean, mean)

    def refit(self, batches):
        raise AssertionError("a resumed run refitted the wavelet statistics")

    monkeypatch.setattr(WATNet, "fit_wavelet_stats", refit)
    assert run_main(fit.main, _cli(dataset, runs, "--max-epochs", "2", "--resume", "last")) == 0
    resumed = torch.load(runs / "watnet" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 1 and torch.equal(resumed["state_dict"]["net.wavelet_mean"], mean)


def test_untrained_network_is_the_identity():
    # The output conv starts at zero (a documented deviation from the Caffe init), so the
    # global residual passes the input slices through unchanged.
    module = WATNetModule(resolve("watnet", None, TINY_WATNET).to_dict())
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        assert torch.equal(module(x), x)
