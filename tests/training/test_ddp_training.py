"""``python -m t7synth.fit --cpus 2``: two real DDP ranks over gloo, end to end.

Two runs of the same tiny experiment with the same seed (module fixtures, shared by the
tests below, since each costs a couple of interpreter start-ups):

* ``uninterrupted``: three epochs;
* ``crashed``: the same command, SIGKILLed (every rank, as a node failure would be) in
  the middle of epoch 1, then ``--resume last`` to the end.

Six subjects: four for training (two per rank), one each for validation and test, so
the single validation/test subject also exercises the padded evaluation shards.
Augmentation (flip, noise) is on and the learning rate halves every epoch, so a data
stream, an optimiser state or a scheduler that resumed wrongly would change the result.
"""

from __future__ import annotations

import csv
from pathlib import Path

import ddp_helpers
import pytest
import torch
import yaml
from helpers import make_dataset

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

EPOCHS = 3
#: Two batches per rank and epoch (2 subjects x 2 patches / batch 2): step 3 is the
#: first batch of epoch 1, mid-epoch.
KILL_AT_STEP = 3
EXTRA = [
    "--set", "data.augment.flip=0.5",
    "--set", "data.augment.noise=0.05",
    "--set", "optim.lr=1e-3",
    "--set", "optim.step_gamma=0.5",
    "--seed", "7",
    "--cpus", "2",
    "--max-epochs", str(EPOCHS),
]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp_fit")
    make_dataset(root / "data", n_subjects=6)
    return root


@pytest.fixture(scope="module")
def uninterrupted(workspace: Path) -> dict:
    record = workspace / "record_a"
    runs = workspace / "runs_a"
    env = ddp_helpers.environment(record, workspace / "cache_a")
    ddp_helpers.run(ddp_helpers.fit_args(workspace / "data", runs, *EXTRA), env, workspace / "a.log")
    return {"record": record, "run": runs / "unet" / "version_0", "runs": runs}


@pytest.fixture(scope="module")
def crashed(workspace: Path) -> dict:
    record, resumed = workspace / "record_b", workspace / "record_b2"
    runs = workspace / "runs_b"
    args = ddp_helpers.fit_args(workspace / "data", runs, *EXTRA)
    log = workspace / "b.log"
    process = ddp_helpers.start(
        args, ddp_helpers.environment(record, workspace / "cache_b", hold_at_step=KILL_AT_STEP), log
    )
    try:
        ddp_helpers.wait_for(record / "held_rank0", process, log)
        ddp_helpers.wait_for(record / "held_rank1", process, log)
    finally:
        ddp_helpers.kill_group(process)
    run = runs / "unet" / "version_0"
    # What survived the crash: the checkpoint written at the end of epoch 0.
    survived = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    ddp_helpers.run(
        [*args, "--resume", "last"], ddp_helpers.environment(resumed, workspace / "cache_b"), workspace / "b2.log"
    )
    return {"record": record, "resumed": resumed, "run": run, "runs": runs, "survived": survived}


def test_ranks_hold_identical_weights_after_training(uninterrupted):
    first, second = ddp_helpers.weights(uninterrupted["record"], 0), ddp_helpers.weights(uninterrupted["record"], 1)
    initial = ddp_helpers.weights(uninterrupted["record"], 0, "initial")
    assert first.keys() == second.keys() == initial.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    # Not vacuous: the ranks trained on different data, and the weights moved.
    assert max((first[name] - initial[name]).abs().max().item() for name in first) > 1e-4


def test_each_epoch_deals_disjoint_subjects_and_equal_steps(uninterrupted):
    records = [ddp_helpers.record(uninterrupted["record"], rank)["epochs"] for rank in (0, 1)]
    assignments = []
    for epoch in map(str, range(EPOCHS)):
        mine, theirs = (set(r[epoch]["subjects"]) for r in records)
        assert mine and theirs and not mine & theirs, f"epoch {epoch}: ranks shared subjects"
        assert mine | theirs == {"sub-001", "sub-002", "sub-003", "sub-004"}  # the training split
        assert records[0][epoch]["batches"] == records[1][epoch]["batches"] == 2
        assignments.append(frozenset(mine))
    assert len(set(assignments)) > 1, "the subject shuffle never changed between epochs"


def test_validation_metrics_are_the_same_on_every_rank(uninterrupted):
    records = [ddp_helpers.record(uninterrupted["record"], rank)["epochs"] for rank in (0, 1)]
    for epoch in map(str, range(EPOCHS)):
        assert records[0][epoch]["val"]["val/psnr_brain"] == records[1][epoch]["val"]["val/psnr_brain"]
        assert records[0][epoch]["val"].keys() == records[1][epoch]["val"].keys()


def test_only_rank_zero_creates_the_run_folder_and_records_the_environment(uninterrupted):
    experiment = uninterrupted["runs"] / "unet"
    assert [p.name for p in experiment.iterdir()] == ["version_0"]  # rank 1 made no version_1
    environment = yaml.safe_load((uninterrupted["run"] / "environment.yaml").read_text())
    (launch,) = environment["launches"]
    assert launch["seed"] == 7 and launch["world_size"] == 2 and launch["launcher"] == "lightning"
    assert launch["resumed_from"] is None
    import pytorch_lightning
    import torchio

    versions = launch["versions"]
    assert versions["torch"] == torch.__version__ and versions["pytorch-lightning"] == pytorch_lightning.__version__
    assert versions["torchio"] == torchio.__version__
    assert {"python", "numpy", "monai"} <= versions.keys()


def test_same_seed_gives_identical_validation_metrics_and_batches(uninterrupted, crashed):
    """Two separate runs with the same seed, before one of them crashed: bit-identical."""
    for rank in (0, 1):
        a = ddp_helpers.record(uninterrupted["record"], rank)["epochs"]
        b = ddp_helpers.record(crashed["record"], rank)["epochs"]
        assert a["0"]["val"] == b["0"]["val"]
        assert a["0"]["sums"] == b["0"]["sums"]
        assert b["1"]["sums"] == a["1"]["sums"][: len(b["1"]["sums"])]


def test_kill_and_resume_matches_the_uninterrupted_run(uninterrupted, crashed):
    survived = crashed["survived"]
    assert survived["epoch"] == 0 and survived["global_step"] == 2  # the crash came mid-epoch 1
    held = ddp_helpers.record(crashed["record"], 0)["epochs"]["1"]
    assert held["batches"] == 1

    # The resumed run drew epochs 1 and 2 exactly as the uninterrupted one did ...
    for rank in (0, 1):
        a = ddp_helpers.record(uninterrupted["record"], rank)["epochs"]
        resumed = ddp_helpers.record(crashed["resumed"], rank)["epochs"]
        assert sorted(resumed) == ["1", "2"]
        for epoch in ("1", "2"):
            assert resumed[epoch]["subjects"] == a[epoch]["subjects"]
            assert resumed[epoch]["sums"] == a[epoch]["sums"]
            assert resumed[epoch]["val"] == pytest.approx(a[epoch]["val"], rel=1e-6, abs=1e-7)

    # ... and ended with the same weights, optimiser, scheduler and test scores.
    final_a = ddp_helpers.weights(uninterrupted["record"], 0)
    final_b = ddp_helpers.weights(crashed["resumed"], 0)
    for name in final_a:
        torch.testing.assert_close(final_b[name], final_a[name], rtol=1e-6, atol=1e-7, msg=name)
    last_a = torch.load(uninterrupted["run"] / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    last_b = torch.load(crashed["run"] / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert (
        (last_b["epoch"], last_b["global_step"]) == (last_a["epoch"], last_a["global_step"]) == (EPOCHS - 1, 2 * EPOCHS)
    )
    assert last_b["lr_schedulers"] == last_a["lr_schedulers"]
    adam_a, adam_b = last_a["optimizer_states"][0]["state"], last_b["optimizer_states"][0]["state"]
    for index in adam_a:
        torch.testing.assert_close(adam_b[index]["exp_avg_sq"], adam_a[index]["exp_avg_sq"], rtol=1e-5, atol=1e-12)
    with open(uninterrupted["run"] / "test_scores.csv") as a, open(crashed["run"] / "test_scores.csv") as b:
        rows_a, rows_b = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [r["subject"] for r in rows_a] == [r["subject"] for r in rows_b]
    for row_a, row_b in zip(rows_a, rows_b):
        for key in ("psnr_brain", "ssim_brain", "mae"):
            assert float(row_b[key]) == pytest.approx(float(row_a[key]), rel=1e-5, abs=1e-6)

    # metrics.csv holds the same history, epoch by epoch: the rows the killed run logged
    # in epoch 1 were dropped and logged again once, nothing of epoch 0 was lost.
    history_a, history_b = ddp_helpers.history(uninterrupted["run"]), ddp_helpers.history(crashed["run"])
    assert [sorted(row) for row in history_b] == [sorted(row) for row in history_a]
    for row_a, row_b in zip(history_a, history_b):
        assert row_b == pytest.approx(row_a, rel=1e-5, abs=1e-6)
    assert [row["epoch"] for row in history_b if "val/psnr_brain" in row] == list(range(EPOCHS))

    # It continued in the same folder, and environment.yaml tells both launches apart.
    assert [p.name for p in (crashed["runs"] / "unet").iterdir()] == ["version_0"]
    launches = yaml.safe_load((crashed["run"] / "environment.yaml").read_text())["launches"]
    assert [launch["resumed_from"] for launch in launches] == [None, str(crashed["run"] / "checkpoints" / "last.ckpt")]
