"""``fit --resume`` with a hostile, damaged or mismatched checkpoint: one line, nothing written.

One tiny U-Net is trained for two epochs (module fixture); each case copies its run
folder, damages it, and resumes. A refused resume must leave every file of the run
(``config.yaml``, ``environment.yaml``, ``metrics.csv``, the checkpoints) as it was,
and a hostile checkpoint must not run its code even under
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``. Keys of :data:`t7synth.config.RESUMABLE_KEYS`
may change on resume and are honoured.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_UNET, make_dataset
from robust_helpers import assert_refused, malicious_checkpoint, snapshot, truncated_copy

from t7synth import fit
from t7synth.cli import run_main

pytestmark = pytest.mark.slow


def args(data: Path, runs: Path, *extra: str, tiny=TINY_UNET) -> list[str]:
    sets = [x for item in tiny for x in ("--set", item)]
    return [
        "--model",
        "unet",
        "--data",
        str(data),
        "--set",
        f"runs_dir={runs}",
        *sets,
        "--wandb",
        "disabled",
        "--seed",
        "3",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    import os

    root = tmp_path_factory.mktemp("trained")
    old_cache = os.environ.get("T7SYNTH_CACHE")
    os.environ["T7SYNTH_CACHE"] = str(root / "cache")
    try:
        data = make_dataset(root / "data")
        assert run_main(fit.main, args(data, root / "runs", "--max-epochs", "2")) == 0
    finally:
        if old_cache is None:
            os.environ.pop("T7SYNTH_CACHE", None)
        else:
            os.environ["T7SYNTH_CACHE"] = old_cache
    return {"data": data, "runs": root / "runs"}


@pytest.fixture
def run(trained, tmp_path) -> dict:
    """A private copy of the trained run, to damage."""
    runs = tmp_path / "runs"
    shutil.copytree(trained["runs"], runs)
    return {"data": trained["data"], "runs": runs, "dir": runs / "unet" / "version_0"}


def _damage_hostile(run, marker):
    last = run["dir"] / "checkpoints" / "last.ckpt"
    real = torch.load(last, weights_only=True)
    malicious_checkpoint(last, marker, like=real)  # a real checkpoint plus a payload
    return []


def _damage_truncated(run, marker):
    last = run["dir"] / "checkpoints" / "last.ckpt"
    truncated_copy(last, last)
    return []


def _damage_empty(run, marker):
    (run["dir"] / "checkpoints" / "last.ckpt").write_bytes(b"")
    return []


def _damage_huge(run, marker):
    """The stored config claims a 2048-channel net (the tensors are the tiny net's)."""
    last = run["dir"] / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"]["config"]["model"]["net"]["channels"] = 2048
    torch.save(checkpoint, last)
    return ["--set", "model.net.channels=2048"]  # the request matches the stored config


@pytest.mark.parametrize(
    ("damage", "extra", "expected"),
    [
        (_damage_hostile, [], "cannot read checkpoint"),
        (_damage_truncated, [], "cannot read checkpoint"),
        (_damage_empty, [], "the file is empty"),
        (_damage_huge, [], "does not fit model 'unet' built from its config"),
        (None, ["--set", "model.net.channels=16"], "model.net.channels (8 in the checkpoint, 16 now)"),
        (None, ["--set", "optim.lr=0.5"], "optim.lr (0.0001 in the checkpoint, 0.5 now)"),
        (None, ["--set", "data.augment.flip=0.5"], "data.augment.flip"),
    ],
    ids=["hostile", "truncated", "empty", "claims-2048-channels", "other-width", "other-lr", "other-augmentation"],
)
def test_a_bad_resume_is_one_line_and_leaves_the_run_untouched(
    run, tmp_path, capfd, monkeypatch, damage, extra, expected
):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code-ran"
    if damage is not None:
        extra = [*extra, *damage(run, marker)]
    before = snapshot(run["runs"])
    status = run_main(fit.main, args(run["data"], run["runs"], "--max-epochs", "3", "--resume", "last", *extra))
    captured = capfd.readouterr()
    assert_refused(status, captured.err, expected)
    assert "GPU available" not in captured.out + captured.err  # the line is not buried under the banner
    assert not marker.exists()
    assert snapshot(run["runs"]) == before  # config.yaml, environment.yaml, metrics.csv untouched


def test_resuming_another_model_names_the_model(run, capfd):
    before = snapshot(run["runs"])
    status = run_main(
        fit.main, args(run["data"], run["runs"], "--model", "vnet", "--name", "unet", "--resume", "last", tiny=[])[2:]
    )
    assert_refused(status, capfd.readouterr().err, "model.name ('unet' in the checkpoint, 'vnet' now)")
    assert snapshot(run["runs"]) == before


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if v and k != "train/epoch_time"} for row in csv.DictReader(handle)]


def test_resumable_keys_are_honoured_and_the_history_continues(run, capfd):
    before = _metrics(run["dir"])
    status = run_main(
        fit.main,
        args(
            run["data"],
            run["runs"],
            "--max-epochs",
            "3",
            "--resume",
            "last",
            "--set",
            "trainer.log_every_n_steps=2",
            "--set",
            "data.inference_batch_size=4",
        ),
    )
    assert status == 0, capfd.readouterr().err[-2000:]
    config = yaml.safe_load((run["dir"] / "config.yaml").read_text())
    assert config["trainer"]["max_epochs"] == 3 and config["trainer"]["log_every_n_steps"] == 2
    assert config["data"]["inference_batch_size"] == 4
    assert torch.load(run["dir"] / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    after = _metrics(run["dir"])
    trained_rows = [row for row in before if not any(k.startswith("test/") for k in row)]
    assert after[: len(trained_rows)] == trained_rows  # nothing of epochs 0-1 lost
    epochs = [int(row["epoch"]) for row in after if "val/psnr_brain" in row]
    assert epochs == [0, 1, 2]  # every validation once, in order
    assert sum(1 for row in after if "test/psnr_brain" in row) == 1  # the old test row replaced, not repeated


def test_resuming_a_finished_run_keeps_its_whole_history(run, capfd):
    before = _metrics(run["dir"])
    assert run_main(fit.main, args(run["data"], run["runs"], "--max-epochs", "2", "--resume", "last")) == 0
    after = _metrics(run["dir"])
    assert [row for row in after if "test/psnr_brain" not in row] == [
        row for row in before if "test/psnr_brain" not in row
    ]
    assert len(after) == len(before)  # the test ran again: its row replaced, not added
