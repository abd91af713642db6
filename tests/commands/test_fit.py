"""``python -m t7synth.fit`` end to end on tiny datasets, in-process."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import TINY_UNET

from t7synth import fit
from t7synth.cli import run_main


def _args(root, runs, *extra):
    sets = [x for item in TINY_UNET for x in ("--set", item)]
    return ["--model", "unet", "--data", str(root), "--set", f"runs_dir={runs}", *sets, *extra]


def test_fast_dev_run_exits_zero(dataset, tmp_path, capsys):
    status = run_main(fit.main, _args(dataset, tmp_path / "runs", "--fast-dev-run", "--wandb", "disabled"))
    assert status == 0
    assert "fast dev run finished" in capsys.readouterr().out


def test_summary_counts_generator_parameters(capsys):
    assert run_main(fit.main, ["--model", "unet", "--summary", *[x for i in TINY_UNET for x in ("--set", i)]]) == 0
    out = capsys.readouterr().out
    from t7synth.nets.unet import ConditionedUNet

    net = ConditionedUNet(in_channels=3, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), norm_groups=4)
    assert f"parameters: {sum(p.numel() for p in net.parameters())}" in out.splitlines()
    assert "2.5D slab: 3 slices along axis 1" in out


def test_unknown_key_is_one_line(capsys):
    assert run_main(fit.main, ["--model", "unet", "--set", "optim.learning_rate=1", "--summary"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.learning_rate" in err[0] and "optim.lr" in err[0]


def test_run_directory_and_resume(dataset, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert run_main(fit.main, _args(dataset, runs, "--max-epochs", "1", "--wandb", "disabled")) == 0
    out = capsys.readouterr().out
    run = runs / "unet" / "version_0"
    for name in ("config.yaml", "metrics.csv", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "test_scores.csv"):
        assert (run / name).is_file(), name
    assert list((run / "samples").glob("val_epoch000_*.png")) and list((run / "samples").glob("test_sub-*.png"))
    assert "identity (3T input)" in out and "intensity LUT" in out and "In-brain PSNR gain" in out
    with open(run / "test_scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["model"] for r in rows} == {"model", "identity", "lut"}
    with open(run / "metrics.csv") as handle:
        header = next(csv.reader(handle))
    assert {"train/loss", "val/psnr_brain", "val/identity/psnr_brain", "val/lut/psnr_brain"} <= set(header)

    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["epoch"] == 0
    steps = first["global_step"]
    assert run_main(fit.main, _args(dataset, runs, "--max-epochs", "2", "--wandb", "disabled", "--resume", "last")) == 0
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert not (runs / "unet" / "version_1").exists()  # continued in the same folder
    assert resumed["epoch"] == 1
    assert resumed["global_step"] == 2 * steps
    adam = resumed["optimizer_states"][0]["state"][0]
    assert int(adam["step"]) == 2 * steps  # the optimizer state continued, not restarted
    assert resumed["lr_schedulers"][0]["last_epoch"] == 2


def test_resume_last_without_checkpoint_is_one_line(tmp_path, capsys):
    status = run_main(fit.main, ["--model", "unet", "--resume", "last", "--set", f"runs_dir={tmp_path}"])
    assert status == 2
    assert "no checkpoints/last.ckpt" in capsys.readouterr().err


def test_offline_wandb_leaves_its_files(dataset, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "")
    runs = tmp_path / "runs"
    assert run_main(fit.main, _args(dataset, runs, "--max-epochs", "1", "--wandb", "offline")) == 0
    run = runs / "unet" / "version_0"
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    run_id = (run / "wandb_id.txt").read_text().strip()
    assert offline[0].name.endswith(run_id)
    assert list(offline[0].glob("*.wandb"))
    assert list(offline[0].rglob("*.png"))  # the montage went to W&B too
