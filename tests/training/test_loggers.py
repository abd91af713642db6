"""What a run sends to W&B (training/loggers.py, training/wandb_logger.py), read back where it can be."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from t7synth.measures.metrics import NAMES
from t7synth.scores import COLUMNS, write_rows
from t7synth.training import loggers


class WandbLogger:
    """Stands in for Lightning's WandbLogger (matched by class name)."""

    def __init__(self):
        self.tables, self.images = [], []
        self.experiment = type("Experiment", (), {"summary": {}})()

    def log_table(self, key, columns, data):
        self.tables.append((key, columns, data))

    def log_image(self, key, images, caption):
        self.images.append((key, images, caption))


def test_log_test_results_fills_summary_table_and_montages(tmp_path):
    run_dir = tmp_path / "run"
    rows = []
    for index, value in enumerate((25.0, 27.0)):
        subject = f"sub-00{index + 1}"
        rows.append({"model": "model", "subject": subject, **{name: value for name in NAMES}})
        rows.append({"model": "identity", "subject": subject, **{name: 20.0 for name in NAMES}})
        rows.append({"model": "lut", "subject": subject, **{name: 22.0 for name in NAMES}})
    write_rows(run_dir / "test_scores.csv", rows)
    (run_dir / "samples").mkdir()
    (run_dir / "samples" / "test_sub-001.png").write_bytes(b"png")  # only sub-001 has a montage
    logger = WandbLogger()
    loggers.log_test_results([object(), logger], rows, run_dir)
    summary = logger.experiment.summary
    assert summary["test/psnr_brain"] == pytest.approx(26.0) and summary["test/psnr_brain_sd"] == pytest.approx(
        1.414214, abs=1e-5
    )
    assert summary["test/lut/psnr_brain"] == pytest.approx(22.0) and "test/identity/mae" in summary
    key, columns, data = logger.tables[0]
    assert key == "test/scores" and columns == ["model", "subject", *NAMES] and len(data) == 6
    assert logger.images == [("test/montages", [str(run_dir / "samples" / "test_sub-001.png")], ["sub-001"])]


def test_summary_keeps_the_best_validation_value_in_each_scores_direction():
    from t7synth.training.wandb_logger import is_reference_key, summary_ops

    for name, column in COLUMNS.items():
        expected = (
            None
            if getattr(column, "ideal", None) is not None
            else ("max" if column.higher_is_better else "min") + ",last"
        )
        assert summary_ops(f"val/{name}") == expected
    assert summary_ops("val/mae") == "min,last" and summary_ops("val/psnr_brain") == "max,last"
    assert summary_ops("test/psnr_brain") is None and summary_ops("train/loss") is None
    assert is_reference_key("val/identity/psnr") and is_reference_key("test/lut/mae")
    assert not is_reference_key("val/psnr") and not is_reference_key("val/montage/_type")


def test_wandb_rows_keep_numbers_and_blank_missing_values():
    frame = pd.DataFrame(
        {
            "number": [0, 1],
            "value": [20.5, None],
            "rank": pd.array([1, None], dtype="Int64"),
            "state": ["complete", "pruned"],
        }
    )
    rows = loggers.wandb_rows(frame)
    assert rows == [[0, 20.5, 1, "complete"], [1, None, None, "pruned"]]
    assert type(rows[0][0]) is int and type(rows[0][1]) is float


def test_run_link_is_a_url_online_and_a_path_offline():
    run = type("Run", (), {"project_url": "https://wandb.ai/lab/t7synth", "entity": "lab", "project": "t7synth"})()
    assert loggers.run_link(run, "abc", "online") == "https://wandb.ai/lab/t7synth/runs/abc"
    assert loggers.run_link(run, "abc", "offline") == "lab/t7synth/abc"
    run.entity = ""
    assert loggers.run_link(run, "abc", "offline") == "t7synth/abc"


@pytest.mark.slow
def test_wandb_logger_offline_records(tmp_path, monkeypatch):
    """Lightning's hyperparameters are not sent (the config is in wandb.init), baselines
    go to the summary, val keys are defined on the epoch axis, and an interrupted run
    whose sweep pruned it is tagged and finishes cleanly (read back from its records)."""
    wandb = pytest.importorskip("wandb")
    from wandb_file import offline_run

    from t7synth.run_files import read_trial_record, write_trial_record
    from t7synth.training.wandb_logger import RunWandbLogger

    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    run_dir = tmp_path / "study" / "trial-0002" / "version_0"
    run_dir.mkdir(parents=True)
    write_trial_record(
        run_dir, {"study": "study", "number": 2, "state": "pruned", "epoch": 1, "summary_run": "sweep-0123456789ab"}
    )
    assert read_trial_record(run_dir)["state"] == "pruned"
    try:
        logger = RunWandbLogger(
            run_dir,
            project="t7synth-test",
            save_dir=str(run_dir),
            id="trial2",
            offline=True,
            config={"optim": {"lr": 0.01}},
        )
        logger.log_hyperparams({"config": {"optim": {"lr": 0.01}}})
        for epoch, (psnr, mae) in enumerate(((20.0, 0.3), (22.0, 0.2))):
            logger.log_metrics({"train/loss": 0.5, "epoch": epoch}, step=2 * epoch)
            logger.log_metrics(
                {"val/psnr_brain": psnr, "val/mae": mae, "val/identity/psnr_brain": 18.0, "epoch": epoch},
                step=2 * epoch + 1,
            )
        logger.log_metrics({"val/psnr_brain": 21.0, "val/mae": 0.25, "epoch": 2}, step=5)
        logger.finalize("failed")
    finally:
        wandb.teardown()
    recorded = offline_run(run_dir)
    assert recorded.config["optim"] == {"lr": 0.01} and "config" not in recorded.config
    # A sweep trial: its number a numeric key, its study's summary run linked (offline: the run path).
    assert recorded.config_updates == [
        {"trial/number": 2, "trial/study": "study", "trial/study_run": "t7synth-test/sweep-0123456789ab"}
    ]
    assert recorded.summary["trial/number"] == 2
    assert recorded.summary["val/psnr_brain"] == {"max": 22.0, "last": 21.0}
    assert recorded.summary["val/mae"] == {"min": 0.2, "last": 0.25}
    assert recorded.summary["val/identity/psnr_brain"] == 18.0
    assert not any("val/identity/psnr_brain" in row for row in recorded.history)
    assert recorded.metrics["val/psnr_brain"].step_metric == "epoch" and "train/loss" not in recorded.metrics
    assert "pruned" in recorded.tags
    assert recorded.summary["trial/state"] == "pruned" and recorded.summary["trial/pruned_after_epoch"] == 1
    assert recorded.exit_code == 0


@pytest.mark.slow
def test_interrupted_run_that_was_not_pruned_is_not_tagged(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from wandb_file import offline_run

    from t7synth.training.wandb_logger import RunWandbLogger

    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    try:
        logger = RunWandbLogger(
            tmp_path, project="t7synth-test", save_dir=str(tmp_path), id="plain", offline=True, config={}
        )
        logger.log_metrics({"val/psnr_brain": 20.0, "epoch": 0}, step=0)
        logger.finalize("failed")
        logger.experiment.finish()
    finally:
        wandb.teardown()
    recorded = offline_run(tmp_path)
    assert "pruned" not in recorded.tags and "trial/state" not in recorded.summary


def test_trial_record_round_trip_and_absence(tmp_path):
    from t7synth.run_files import TRIAL_FILE, read_trial_record, write_trial_record

    assert read_trial_record(tmp_path) == {}
    (tmp_path / TRIAL_FILE).write_text("{not json")
    assert read_trial_record(tmp_path) == {}
    write_trial_record(tmp_path / "run", {"state": "complete", "value": 21.5})
    assert json.loads((tmp_path / "run" / TRIAL_FILE).read_text()) == {"state": "complete", "value": 21.5}


def test_run_version_names_the_folder():
    from t7synth.training.callbacks import run_version

    assert run_version("runs/demo_unet/version_3") == 3
    assert run_version("runs/demo_unet/slurm_812") == "slurm_812"
    assert run_version("runs/x/version_a") == "version_a"
