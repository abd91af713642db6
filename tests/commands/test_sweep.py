"""Sweeps: every shipped sweep file, the trial process, and a real two-trial study."""

from __future__ import annotations

import functools
import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from helpers import REPO, TINY_UNET, make_dataset

from t7synth import sweep
from t7synth.cli import run_main
from t7synth.run_files import read_trial_record
from t7synth.tuning import report as report_module
from t7synth.tuning import storage as storage_module
from t7synth.tuning import study as study_module
from t7synth.tuning.sweep_file import SweepConfig

SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))


def dotted(config, key: str):
    return functools.reduce(dict.__getitem__, key.split("."), config.to_dict())


def test_sweep_files_exist():
    assert {p.stem for p in SWEEP_FILES} >= {"demo_unet", "unet", "gan_unet"}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_sweep_file_parameters_reach_the_config(path, monkeypatch):
    """Each parameter is a real config key: a sampled value lands where fit reads it."""
    monkeypatch.chdir(REPO)
    spec = SweepConfig.load(path)
    assert set(spec.distributions()) == set(spec.params)
    for key, options in spec.params.items():
        value = options["choices"][-1] if options["type"] == "categorical" else options["high"]
        assert dotted(spec.resolve({key: value}), key) == value
    for key, value in spec.set.items():
        assert dotted(spec.resolve({}), key) == value


def write_sweep(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (
            "model: unet\nparams:\n  optim.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-3}\n",
            "optim.learning_rate",
        ),
        ("model: unet\nparams:\n  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-4}\n", "params.optim.lr"),
        ("model: unet\nparams:\n  optim.lr: {type: float, low: 0.0, high: 1.0e-3, log: true}\n", "params.optim.lr"),
        ("model: unet\nparams:\n  optim.lr: {type: uniform, low: 0.0, high: 1.0}\n", "params.optim.lr"),
        (
            "model: unet\nmetrics: val/psnr\nparams:\n  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-3}\n",
            "'metrics'",
        ),
        ("model: unet\nmetric: test/psnr\nparams:\n  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-3}\n", "val/"),
        ("config: nowhere.yaml\nparams:\n  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-3}\n", "nowhere.yaml"),
        (
            "model: unet\nparams:\n  model.net.channels: {type: int, low: 8, high: 16.5}\n",
            "params.model.net.channels.high",
        ),
        ("model: unet\nparams:\n  model.net.chanels: {type: int, low: 8, high: 16}\n", "model.net.chanels"),
        (
            "model: unet\nset:\n  optim.schedule: onecycle\nparams:\n  optim.step_gamma: {type: float, low: 0.3, "
            "high: 0.9}\n",
            "optim.step_gamma has no effect: optim.schedule is onecycle",
        ),
        (
            "model: unet\nparams:\n  optim.d_lr: {type: float, low: 1.0e-4, high: 1.0e-3}\n",
            "optim.d_lr has no effect: model unet has no discriminator",
        ),
    ],
    ids=[
        "unknown-config-key",
        "low-above-high",
        "log-of-zero",
        "unknown-type",
        "unknown-sweep-key",
        "test-metric",
        "missing-config",
        "int-bound",
        "unknown-net-key",
        "steplr-key-under-onecycle",
        "gan-key-for-a-unet",
    ],
)
def test_bad_sweep_file_is_one_line(tmp_path, capsys, body, named):
    path = write_sweep(tmp_path / "bad.yaml", body)
    assert run_main(sweep.main, [str(path), "--set", f"runs_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and str(path) in err
    assert not (tmp_path / "runs").exists()  # nothing written for a file that does not parse


# --- the trial process, with a stand-in for fit that writes metrics.csv --------------

FAKE_FIT = """
import csv, os, sys, time
run = os.environ["T7SYNTH_RUN_DIR"]
os.makedirs(run, exist_ok=True)
values = [float(v) for v in sys.argv[1].split(",")]
with open(os.path.join(run, "metrics.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["epoch", "step", "train/loss", "val/psnr_brain"])
    for epoch, value in enumerate(values):
        w.writerow([epoch, epoch * 10, 0.1, ""])
        w.writerow([epoch, epoch * 10 + 9, "", value])
        f.flush()
        time.sleep(0.2)
time.sleep(float(sys.argv[2]))
sys.exit(int(sys.argv[3]))
"""


def fake_trial(tmp_path, pruner, values: str, linger: float, status: int, direction="maximize"):
    import optuna

    script = tmp_path / "fake_fit.py"
    script.write_text(FAKE_FIT)
    study = optuna.create_study(direction=direction, pruner=pruner)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    run_dir = tmp_path / "study" / "trial-0000" / "version_0"
    command = [sys.executable, str(script), values, str(linger), str(status)]
    return study, study_module.run_trial(study, trial, command, run_dir, "val/psnr_brain", poll=0.2)


def test_complete_trial_scores_its_best_validation(tmp_path):
    import optuna

    study, (state, value, _) = fake_trial(tmp_path, optuna.pruners.NopPruner(), "20.0,23.5,22.0", 0, 0)
    assert (state, value) == ("complete", 23.5)
    frozen = study.trials[0]
    assert frozen.state == optuna.trial.TrialState.COMPLETE and frozen.value == 23.5
    assert frozen.intermediate_values == {0: 20.0, 1: 23.5, 2: 22.0}
    record = read_trial_record(tmp_path / "study" / "trial-0000" / "version_0")
    assert (record["state"], record["value"], record["epoch"], record["number"]) == ("complete", 23.5, 2, 0)


def test_minimised_metric_takes_the_lowest(tmp_path):
    import optuna

    _, (state, value, _) = fake_trial(tmp_path, optuna.pruners.NopPruner(), "0.3,0.1,0.2", 0, 0, direction="minimize")
    assert (state, value) == ("complete", 0.1)


def test_pruned_trial_is_stopped(tmp_path):
    """A trial the pruner rejects is killed at once, not left to finish its minute."""
    import time

    import optuna

    started = time.monotonic()
    study, (state, value, detail) = fake_trial(
        tmp_path, optuna.pruners.ThresholdPruner(lower=30.0), "20.0,21.0", 120, 0
    )
    assert state == "pruned" and value is None and "epoch 0" in detail
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    # Written before the trial was stopped: what its W&B run tags itself from.
    record = read_trial_record(tmp_path / "study" / "trial-0000" / "version_0")
    assert (record["state"], record["epoch"]) == ("pruned", 0)
    assert time.monotonic() - started < 60  # the fake fit would have lingered 120 s


def test_failed_trial_reports_its_log(tmp_path):
    import optuna

    study, (state, value, detail) = fake_trial(tmp_path, optuna.pruners.NopPruner(), "20.0", 0, 3)
    assert state == "failed" and value is None and "exit 3" in detail and "fit.log" in detail
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert read_trial_record(tmp_path / "study" / "trial-0000" / "version_0")["state"] == "fail"


# --- a real study: two fit runs on a tiny dataset ------------------------------------


@pytest.mark.slow
def test_two_trial_study_end_to_end(tmp_path, capsys, monkeypatch):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    data = make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    fixed = dict(item.split("=", 1) for item in TINY_UNET)
    fixed.update({"trainer.max_epochs": "2", "trainer.val_every": "1", "runs_dir": str(runs)})
    spec = {
        "study": "tiny",
        "model": "unet",
        "n_trials": 2,
        "set": {key: yaml.safe_load(value) for key, value in fixed.items()},
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "params": {"optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert run_main(sweep.main, [str(path), "--data", str(data), "--poll", "0.5", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "best: trial" in out
    assert "t7synth.compare " + str(runs / "tiny" / "trial-000") in out  # complete runs, named

    storage = JournalStorage(JournalFileBackend(str(runs / "tiny" / "optuna.journal")))
    study = optuna.load_study(study_name="tiny", storage=storage)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 2 and trials[0].params["optim.lr"] != trials[1].params["optim.lr"]
    for trial in trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir == runs / "tiny" / f"trial-{trial.number:04d}" / "version_0"
        ran = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert ran["optim"]["lr"] == pytest.approx(trial.params["optim.lr"])
        assert ran["wandb"]["group"] == "tiny" and ran["wandb"]["job_type"] == "trial"
        import pandas as pd

        history = pd.read_csv(run_dir / "metrics.csv")["val/psnr_brain"].dropna()
        assert len(history) == 2 and trial.value == pytest.approx(history.max())
    table = (runs / "tiny" / "trials.csv").read_text().splitlines()
    assert len(table) == 3  # header + two trials
    for plot in ("history", "curves"):
        assert (runs / "tiny" / f"{plot}.png").stat().st_size > 0
    assert not (runs / "tiny" / "importances.png").exists() and "importances.png not drawn: 2 complete trials" in out

    # Running the command again continues the study: it already holds two trials.
    assert run_main(sweep.main, [str(path), "--data", str(data), "--poll", "0.5"]) == 0
    assert len(optuna.load_study(study_name="tiny", storage=storage).trials) == 2


def _study_with_trials(tmp_path):
    """An in-memory study as a sweep leaves it: two complete trials, a pruned and a
    failed one, each with its run folder (and, for two, a W&B run id)."""
    import optuna

    study = optuna.create_study(study_name="lr", direction="maximize")
    distributions = {"optim.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)}
    specs = [
        (optuna.trial.TrialState.COMPLETE, 21.0, 1e-3),
        (optuna.trial.TrialState.PRUNED, None, 1e-5),
        (optuna.trial.TrialState.COMPLETE, 23.5, 3e-3),
        (optuna.trial.TrialState.FAIL, None, 1e-2),
    ]
    for number, (state, value, lr) in enumerate(specs):
        run_dir = tmp_path / "lr" / f"trial-{number:04d}" / "version_0"
        run_dir.mkdir(parents=True)
        if number < 2:
            (run_dir / "wandb_id.txt").write_text(f"id{number}\n")
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value,
                params={"optim.lr": lr},
                distributions=distributions,
                intermediate_values={0: 18.0 + number, 1: 19.0 + number},
                user_attrs={"run_dir": str(run_dir)},
            )
        )
    return study


def test_trials_table_is_numeric_and_ranks_complete_trials(tmp_path):
    study = _study_with_trials(tmp_path)
    table = report_module.trials_table(study)
    assert list(table["state"]) == ["complete", "pruned", "complete", "fail"]
    assert table["value"].dtype.kind == "f" and table["params_optim.lr"].dtype.kind == "f"
    assert list(table["rank"].astype("object").where(table["rank"].notna(), None)) == [2, None, 1, None]
    assert list(table["epochs"]) == [2, 2, 2, 2]
    assert list(table["wandb_run"]) == ["id0", "id1", "", ""]
    import pandas as pd

    table.to_csv(tmp_path / "trials.csv", index=False)
    back = pd.read_csv(tmp_path / "trials.csv")
    assert back["value"].tolist()[::2] == [21.0, 23.5] and back["rank"].tolist()[2] == 1


def test_the_study_table_and_plots_show_the_identity_and_lut_baselines(tmp_path, monkeypatch):
    """A trial below the 3T input must show as such: both baselines in trials.csv and
    as lines in the plots' legends, inside their y-range."""
    import matplotlib.pyplot as plt

    study = _study_with_trials(tmp_path)
    for number in range(3):
        (tmp_path / "lr" / f"trial-{number:04d}" / "version_0" / "metrics.csv").write_text(
            "epoch,step,val/psnr_brain,val/identity/psnr_brain,val/lut/psnr_brain\n0,9,20.0,30.0,25.0\n"
        )
    table = report_module.trials_table(study, "val/psnr_brain")
    assert table["identity"].tolist()[:3] == [30.0, 30.0, 30.0] and table["lut"].tolist()[:3] == [25.0] * 3
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda figure=None: figures.append(figure) or close(figure))
    report_module.plot_study(
        study, tmp_path / "lr", "val/psnr_brain", lambda line: None, {"identity": 30.0, "lut": 25.0}
    )
    for figure in figures:
        axes = figure.axes[0]
        labels = [text.get_text() for text in axes.get_legend().get_texts()]
        assert "identity (3T input)" in labels and "intensity LUT" in labels
        low, high = axes.get_ylim()
        assert low < 25.0 and high > 30.0  # the lines are drawn where the legend says


def test_study_plots_name_the_metric_and_skip_unstable_importances(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    study = _study_with_trials(tmp_path)
    root = tmp_path / "lr"
    (root / "importances.png").write_bytes(b"stale")
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda figure=None: figures.append(figure) or close(figure))
    lines = []
    written = report_module.plot_study(study, root, "val/psnr_brain", lines.append)
    assert [path.name for path in written] == ["history.png", "curves.png"]
    assert not (root / "importances.png").exists()  # a stale picture would describe another study
    assert lines == [
        f"importances.png not drawn: 2 complete trials, {report_module.MIN_TRIALS_FOR_IMPORTANCES} needed for a "
        "stable estimate"
    ]
    history, curves = (figure.axes[0] for figure in figures)
    assert history.get_ylabel() == "best validation PSNR brain (dB)"
    assert curves.get_xlabel() == "epoch" and curves.get_ylabel() == "validation PSNR brain (dB)"


@pytest.mark.slow
def test_sweep_summary_run_links_every_trial(tmp_path, monkeypatch):
    """The study's W&B run (offline here), read back from its records: a numeric
    trials table with each trial's state and a link to its run, the best trial in
    the summary, and the plots."""
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image
    from wandb_file import offline_run

    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    study = _study_with_trials(tmp_path)
    root = tmp_path / "lr"
    image = root / "history.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    spec = SimpleNamespace(study="lr", path=tmp_path / "lr.yaml", metric="val/psnr_brain", direction="maximize")
    base = SimpleNamespace(wandb=SimpleNamespace(project="t7synth-test", entity=None))
    import wandb

    try:
        report_module.log_summary_to_wandb(report_module.trials_table(study), [image], spec, root, "offline", base)
    finally:
        # wandb keeps process-wide settings (read from the environment, where the
        # tests set WANDB_MODE=disabled) until torn down; later tests start afresh.
        wandb.teardown()
    recorded = offline_run(root)
    assert recorded.config["metric"] == "val/psnr_brain" and recorded.config["direction"] == "maximize"
    assert recorded.summary["best/number"] == 2 and recorded.summary["best/value"] == 23.5
    assert recorded.summary["trials/pruned"] == 1 and recorded.summary["trials/complete"] == 2
    media = next(root.glob("wandb/offline-run-*/files/media"))
    assert list(media.glob("images/sweep/history_*.png"))
    table = json.loads(next(media.glob("table/sweep/trials_*.table.json")).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [row["state"] for row in rows] == ["complete", "pruned", "complete", "fail"]
    assert rows[0]["value"] == 21.0 and rows[1]["value"] is None and rows[2]["rank"] == 1  # numbers, not strings
    assert [row["wandb_link"] for row in rows] == ["t7synth-test/id0", "t7synth-test/id1", "", ""]
    assert rows[1]["run_dir"] == str(root / "trial-0001" / "version_0")


def test_orphans_of_a_killed_sweep_are_failed_and_their_fit_stopped(tmp_path):
    """A sweep killed outright leaves RUNNING trials and running fits; the next sweep ends them."""
    import os
    import socket
    import subprocess

    import optuna

    from t7synth.training.launch import RUN_DIR_ENV
    from t7synth.tuning.trial import owner_tag

    study = optuna.create_study(direction="maximize")
    dead_sweep = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_sweep.wait()
    gone = f"{socket.gethostname()}:{dead_sweep.pid}"
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]

    def trial_with(owner: str, name: str, environment: dict | None):
        trial = study.ask()
        run_dir = tmp_path / name / "version_0"
        trial.set_user_attr("owner", owner)
        trial.set_user_attr("run_dir", str(run_dir))
        process = None
        if environment is not None:
            env = dict(os.environ, **({RUN_DIR_ENV: str(run_dir)} if environment else {}))
            process = subprocess.Popen(sleeper, env=env, start_new_session=True)
            trial.set_user_attr("pid", process.pid)
        return process

    orphan_fit = trial_with(gone, "trial-0000", environment={"own": True})
    stranger = trial_with(gone, "trial-0001", environment={})  # pid of a process that is not this trial's fit
    trial_with(owner_tag(), "trial-0002", environment=None)  # this (live) process
    trial_with("another-host:1", "trial-0003", environment=None)  # cannot be judged from here
    try:
        lines = storage_module.fail_orphaned_trials(study)
        assert len(lines) == 2 and "trial 0" in lines[0] and "stopped" in lines[0]
        assert "trial 1" in lines[1] and "stopped" not in lines[1]
        assert orphan_fit.wait(timeout=40) is not None
        assert stranger.poll() is None  # never signal a process that is not the trial's
        states = [trial.state for trial in study.get_trials()]
        running, failed = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL
        assert states == [failed, failed, running, running]
    finally:
        for process in (orphan_fit, stranger):
            if process.poll() is None:
                process.kill()
