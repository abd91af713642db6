"""W&B steps continue across ``fit --resume`` (training/wandb_steps.py), read back from the ``.wandb`` files."""

from __future__ import annotations

import time

import pytest
import torch
from helpers import TINY_UNET, make_dataset

from t7synth import fit
from t7synth.cli import run_main
from t7synth.run_files import WANDB_STEP_FILE
from t7synth.training.wandb_steps import StepCounter, WandbStepState


class _Run:
    def __init__(self, step: int = 0):
        self.step = step


def test_a_counter_starts_past_the_checkpoint_the_rows_written_and_the_server(tmp_path):
    counter = StepCounter(tmp_path)
    assert [counter.take(_Run()) for _ in range(3)] == [0, 1, 2]
    assert (tmp_path / WANDB_STEP_FILE).read_text().strip() == "2"

    resumed = StepCounter(tmp_path)
    resumed.resume_at(1)  # the checkpoint was taken before rows 1 and 2 were written: follow them
    assert resumed.take(_Run()) == 3
    (tmp_path / WANDB_STEP_FILE).unlink()
    elsewhere = StepCounter(tmp_path)
    elsewhere.resume_at(7)  # no record in the folder: the checkpoint's step
    assert elsewhere.take(_Run()) == 7
    online = StepCounter(tmp_path)
    assert online.take(_Run(step=40)) == 40  # a resumed online run: after the server's last step


def test_the_step_state_travels_in_the_checkpoint(tmp_path):
    counter = StepCounter(tmp_path)
    for _ in range(5):
        counter.take(_Run())
    state = WandbStepState(counter).state_dict()
    fresh = StepCounter(tmp_path / "other")
    WandbStepState(fresh).load_state_dict(state)
    assert fresh.next == 5
    assert WandbStepState(None).state_dict() == {"wandb_step": 0}  # W&B off: stored anyway


@pytest.mark.slow
def test_a_resumed_offline_run_continues_its_steps_in_one_run_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from wandb_file import read_run

    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    data = make_dataset(tmp_path / "data")
    sets = [x for item in TINY_UNET for x in ("--set", item)]
    args = ["--model", "unet", "--data", str(data), "--set", f"runs_dir={tmp_path / 'runs'}", *sets]
    args += ["--wandb", "offline"]
    assert run_main(fit.main, [*args, "--max-epochs", "1"]) == 0
    assert run_main(fit.main, [*args, "--max-epochs", "2", "--resume", "last"]) == 0
    run = tmp_path / "runs" / "unet" / "version_0"
    files = sorted(run.glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)
    assert len(files) == 2  # one per process, as W&B writes offline runs
    assert len({path.name for path in files}) == 1  # one run id
    # W&B's service process may still be writing the last file when fit returns: wait for it.
    deadline = time.monotonic() + 30
    while not (second := read_run(files[1])).exit_code == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    first = read_run(files[0])
    steps = [row["_step"] for row in first.history + second.history]
    assert steps == sorted(set(steps)) and steps[0] == 0  # strictly increasing across the resume
    resumed_at = second.history[0]["_step"]
    assert resumed_at == first.history[-1]["_step"] + 1  # continues right after what the run wrote
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    stored = next(v for k, v in checkpoint["callbacks"].items() if "WandbStepState" in k)["wandb_step"]
    assert stored > resumed_at  # the second epoch's checkpoint holds its own step
    assert [row["epoch"] for row in second.history if "val/psnr" in row] == [1]
