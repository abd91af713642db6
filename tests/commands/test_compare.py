"""``python -m t7synth.compare`` on hand-written run folders, and W&B test logging."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from t7synth import compare
from t7synth.cli import run_main
from t7synth.config import Config, save_yaml
from t7synth.evaluation import runs as runs_module
from t7synth.evaluation.metrics import NAMES

BASELINES = {"identity": 20.0, "lut": 22.0}


def _write_run(folder: Path, name: str, model: str, psnr_brain: list[float], ssim_brain: list[float]) -> Path:
    """A run folder as ``fit`` leaves it: config.yaml and test_scores.csv."""
    config = Config().to_dict()
    config["name"], config["model"]["name"] = name, model
    save_yaml(config, folder / "config.yaml")
    with open(folder / "test_scores.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["model", "subject", *NAMES])
        writer.writeheader()
        for index, (p, s) in enumerate(zip(psnr_brain, ssim_brain)):
            subject = f"sub-00{index + 1}"
            writer.writerow({"model": "model", "subject": subject, "psnr": p - 1, "ssim": s - 0.01, "psnr_brain": p, "ssim_brain": s, "mae": 0.1 / p})
            for baseline, value in BASELINES.items():
                writer.writerow({"model": baseline, "subject": subject, "psnr": value - 1, "ssim": 0.7, "psnr_brain": value, "ssim_brain": 0.75, "mae": 0.1 / value})
    return folder


@pytest.fixture
def runs(tmp_path):
    first = _write_run(tmp_path / "runs" / "demo_unet" / "version_0", "demo_unet", "unet", [25.0, 27.0], [0.90, 0.92])
    second = _write_run(tmp_path / "runs" / "demo_vnet" / "version_3", "demo_vnet", "vnet", [24.0, 24.5], [0.93, 0.95])
    return first, second


def test_two_runs_side_by_side(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run_main(compare.main, [str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    markdown = (out / "comparison.md").read_text()
    assert markdown.strip() in printed
    lines = markdown.strip().splitlines()
    assert len(lines) == 2 + 2 + 2  # header, rule, two runs, identity and LUT once
    unet = next(line for line in lines if "demo_unet/version_0" in line)
    vnet = next(line for line in lines if "demo_vnet/version_3" in line)
    assert "**26.00 ± 1.41**" in unet  # best in-brain PSNR is bold
    assert "**0.9400 ± 0.0141**" in vnet  # best in-brain SSIM is the other run's
    assert sum("identity (3T input)" in line for line in lines) == 1 and sum("intensity LUT" in line for line in lines) == 1

    with open(out / "comparison.csv") as handle:
        rows = list(csv.DictReader(handle))
    by_run = {r["run"]: r for r in rows}
    assert by_run["demo_unet/version_0"]["model"] == "unet" and by_run["demo_vnet/version_3"]["model"] == "vnet"
    assert "psnr_brain" in by_run["demo_unet/version_0"]["best"].split(";")
    assert "ssim_brain" in by_run["demo_vnet/version_3"]["best"].split(";")
    assert float(by_run["identity (3T input)"]["psnr_brain_mean"]) == pytest.approx(20.0)
    assert float(by_run["demo_unet/version_0"]["psnr_brain_sd"]) == pytest.approx(1.414214, abs=1e-5)
    assert (out / "comparison.png").stat().st_size > 1000


def test_run_without_test_scores_is_one_line(runs, tmp_path, capsys):
    unfinished = tmp_path / "runs" / "demo_unet" / "version_1"
    unfinished.mkdir(parents=True)
    out = tmp_path / "cmp"
    assert run_main(compare.main, [str(runs[0]), str(unfinished), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(unfinished) in err[0] and "test_scores.csv" in err[0]
    assert not out.exists()


def test_wandb_table_and_chart(runs, tmp_path, monkeypatch):
    """``--wandb offline`` logs one Table and the chart to a ``compare`` run."""
    wandb = pytest.importorskip("wandb")
    calls = {}

    class FakeRun:
        def log(self, data):
            calls["log"] = data

        def finish(self):
            calls["finished"] = True

    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.update(init=kwargs) or FakeRun())
    out = tmp_path / "cmp"
    assert run_main(compare.main, [str(runs[0]), str(runs[1]), "--out", str(out), "--wandb", "offline"]) == 0
    assert calls["init"]["mode"] == "offline" and calls["init"]["job_type"] == "compare" and calls["finished"]
    table, chart = calls["log"]["comparison/table"], calls["log"]["comparison/chart"]
    assert isinstance(table, wandb.Table) and isinstance(chart, wandb.Image)
    assert table.columns == runs_module.table_columns() and len(table.data) == 4


class WandbLogger:
    """Stands in for Lightning's WandbLogger (matched by class name)."""

    def __init__(self):
        self.tables, self.images = [], []
        self.experiment = type("Experiment", (), {"summary": {}})()

    def log_table(self, key, columns, data):
        self.tables.append((key, columns, data))

    def log_image(self, key, images, caption):
        self.images.append((key, images, caption))


def test_log_test_results_fills_summary_table_and_montages(runs, tmp_path):
    from t7synth.training.loggers import log_test_results

    run_dir = runs[0]
    (run_dir / "samples").mkdir()
    (run_dir / "samples" / "test_sub-001.png").write_bytes(b"png")  # only sub-001 has a montage
    with open(run_dir / "test_scores.csv") as handle:
        rows = [{k: (v if k in ("model", "subject") else float(v)) for k, v in r.items()} for r in csv.DictReader(handle)]
    logger = WandbLogger()
    log_test_results([object(), logger], rows, run_dir)
    summary = logger.experiment.summary
    assert summary["test/psnr_brain"] == pytest.approx(26.0) and summary["test/psnr_brain_sd"] == pytest.approx(1.414214, abs=1e-5)
    assert summary["test/lut/psnr_brain"] == pytest.approx(22.0) and "test/identity/mae" in summary
    key, columns, data = logger.tables[0]
    assert key == "test/scores" and columns == ["model", "subject", *NAMES] and len(data) == 6
    assert logger.images == [("test/montages", [str(run_dir / "samples" / "test_sub-001.png")], ["sub-001"])]
