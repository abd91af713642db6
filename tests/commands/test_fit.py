"""``python -m t7synth.fit`` end to end on tiny datasets, in-process."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml
from helpers import TINY_UNET, make_dataset

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

    net = ConditionedUNet(
        in_channels=3, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), norm_groups=4
    )
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
    assert "best.ckpt" in out and "last.ckpt" not in out  # trainer.test_checkpoint: best
    with open(run / "test_scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["model"] for r in rows} == {"model", "identity", "lut"}
    with open(run / "metrics.csv") as handle:
        header = next(csv.reader(handle))
    assert {"train/loss", "val/psnr_brain", "val/identity/psnr_brain", "val/lut/psnr_brain"} <= set(header)

    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["epoch"] == 0
    # The training subjects' median age (sub-001 60, sub-002 61), for predict --unconditioned.
    assert float(first["state_dict"]["train_age"]) == 60.5
    # The training inputs' record (data/profile.py): the tiny dataset's 3T is zero outside its masks.
    from t7synth.data import profile

    record = profile.as_dict(first["state_dict"]["input_profile"])
    assert record["fitted"] == 1.0 and record["skull_stripped"] == profile.YES and record["subjects"] == 2.0
    assert torch.isclose(first["state_dict"]["intensity_histogram"].sum(), torch.tensor(1.0))
    steps = first["global_step"]
    assert run_main(fit.main, _args(dataset, runs, "--max-epochs", "2", "--wandb", "disabled", "--resume", "last")) == 0
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert not (runs / "unet" / "version_1").exists()  # continued in the same folder
    assert resumed["epoch"] == 1
    assert resumed["global_step"] == 2 * steps
    adam = resumed["optimizer_states"][0]["state"][0]
    assert int(adam["step"]) == 2 * steps  # the optimizer state continued, not restarted
    assert resumed["lr_schedulers"][0]["last_epoch"] == 2


def test_test_checkpoint_last_tests_the_final_epoch(dataset, tmp_path, capsys):
    """``trainer.test_checkpoint: last`` (the paper configs: the authors released the
    final epoch) tests last.ckpt even when validation picked another epoch as best."""
    runs = tmp_path / "runs"
    extra = ["--max-epochs", "2", "--wandb", "disabled", "--set", "trainer.test_checkpoint=last"]
    assert run_main(fit.main, _args(dataset, runs, *extra)) == 0
    out = capsys.readouterr().out
    assert "last.ckpt" in out and "best.ckpt" not in out
    checkpoints = runs / "unet" / "version_0" / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1


def test_resume_last_without_checkpoint_is_one_line(tmp_path, capsys):
    status = run_main(fit.main, ["--model", "unet", "--resume", "last", "--set", f"runs_dir={tmp_path}"])
    assert status == 2
    assert "no checkpoints/last.ckpt" in capsys.readouterr().err


@pytest.mark.slow
def test_offline_wandb_run_read_back_with_wandbs_records(dataset, tmp_path, monkeypatch):
    """An offline run, replayed from its own ``.wandb`` file: the config once, epoch as
    the x-axis of every val/test series, the best validation value of each score in
    the summary, the baselines there and not as series, montages once, and the run's
    files (and, asked for, its checkpoint) as artifacts."""
    wandb = pytest.importorskip("wandb")
    from wandb_file import offline_run

    from t7synth.scores import COLUMNS, REFERENCES

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "")
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    from t7synth import plotting

    titles = []
    draw = plotting.save_montage
    monkeypatch.setattr(
        plotting, "save_montage", lambda *args, **kwargs: titles.append(args[5]) or draw(*args, **kwargs)
    )
    runs = tmp_path / "runs"
    try:
        extra = ["--max-epochs", "2", "--wandb", "offline", "--set", "wandb.log_checkpoint=true"]
        assert run_main(fit.main, _args(dataset, runs, *extra)) == 0
    finally:
        wandb.teardown()
    run = runs / "unet" / "version_0"
    recorded = offline_run(run)
    assert next(run.glob("wandb/offline-run-*")).name.endswith((run / "wandb_id.txt").read_text().strip())

    # One config: the resolved config.yaml, at the top level, and never again under "config".
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert {key: recorded.config[key] for key in config} == config
    assert "config" not in recorded.config and not any("config" in update for update in recorded.config_updates)

    with open(run / "metrics.csv") as handle:
        csv_rows = list(csv.DictReader(handle))
    validations = [r for r in csv_rows if r.get("val/psnr_brain")]
    assert len(validations) == 2
    for name, column in COLUMNS.items():
        key = f"val/{name}"
        if not validations[0].get(key):
            continue
        definition = recorded.metrics[key]
        assert definition.step_metric == "epoch"
        values = [float(r[key]) for r in validations]
        best = "max" if column.higher_is_better else "min"
        assert getattr(definition.summary, best) and definition.summary.last
        assert recorded.summary[key][best] == pytest.approx(max(values) if column.higher_is_better else min(values))
        assert recorded.summary[key]["last"] == pytest.approx(values[-1])
    assert recorded.metrics["test/psnr_brain"].step_metric == "epoch"
    for row in recorded.history:
        if any(key.startswith(("val/", "test/")) for key in row):
            assert "epoch" in row  # every val/test point sits on the epoch axis
        assert not [key for key in row if key.count("/") >= 2 and key.split("/")[1] in REFERENCES]  # no baseline series
    best_epoch = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["epoch"]
    tested = [row for row in recorded.history if "test/psnr_brain" in row]
    assert len(tested) == 1 and tested[0]["epoch"] == best_epoch  # the epoch of the weights tested
    # Montage titles name the epoch of the weights shown: best.ckpt's, not the trainer's count (2).
    assert [t.split("  ")[1] for t in titles] == [
        "validation, epoch 0",
        "validation, epoch 1",
        f"test, checkpoint best.ckpt (epoch {best_epoch})",
    ]
    assert recorded.summary["val/identity/psnr_brain"] == pytest.approx(
        float(validations[-1]["val/identity/psnr_brain"])
    )
    assert recorded.summary["test/lut/psnr_brain"] == pytest.approx(
        float(next(r for r in csv_rows if r.get("test/lut/psnr_brain"))["test/lut/psnr_brain"])
    )
    assert sum("test/montages/_type" in row for row in recorded.history) == 1
    assert not any("test/montage/_type" in row for row in recorded.history)  # the per-subject duplicate is gone
    assert sum("val/montage/_type" in row for row in recorded.history) == 2  # one per validation

    run_id = (run / "wandb_id.txt").read_text().strip()
    files = recorded.artifact_files("run-files")
    assert files == {
        f"run-{run_id}-files": {"config.yaml", "environment.yaml", "metrics.csv", "test_scores.csv", "progress.png"}
    }
    assert recorded.artifact_files("model") == {f"model-{run_id}": {"best.ckpt"}}


def test_print_config_prints_the_resolved_config_and_exits(tmp_path, capsys):
    argv = [
        "--model",
        "unet",
        "--out",
        str(tmp_path / "elsewhere"),
        "--set",
        "optim.lr=0.003",
        "--max-epochs",
        "7",
        "--print-config",
    ]
    assert run_main(fit.main, argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == fit.resolve_config(fit.build_parser().parse_args(argv)).to_dict()
    assert printed["runs_dir"] == str(tmp_path / "elsewhere") and printed["optim"]["lr"] == 0.003
    assert printed["trainer"]["max_epochs"] == 7 and printed["model"]["name"] == "unet"
    assert not (tmp_path / "elsewhere").exists()  # nothing ran


@pytest.mark.slow
def test_dataset_without_test_split_says_so(tmp_path, capsys):
    """A run whose dataset has no test subjects ends with a line saying so; ``--out``
    places the run; the progress bar shows the run folder's version; Lightning's
    adverts are not printed."""
    import logging

    data = make_dataset(tmp_path / "data")
    participants = data / "participants.tsv"
    participants.write_text(participants.read_text().replace("\ttest", "\ttrain"))
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    lightning = logging.getLogger("pytorch_lightning")
    lightning.addHandler(handler)
    try:
        assert (
            run_main(
                fit.main,
                _args(
                    data,
                    tmp_path / "ignored",
                    "--out",
                    str(tmp_path / "out"),
                    "--max-epochs",
                    "1",
                    "--wandb",
                    "disabled",
                ),
            )
            == 0
        )
    finally:
        lightning.removeHandler(handler)
    captured = capsys.readouterr()
    run = tmp_path / "out" / "unet" / "version_0"
    assert "no test subjects" in captured.out and str(run) in captured.out
    assert (run / "checkpoints" / "best.ckpt").is_file() and not (run / "test_scores.csv").exists()
    assert not (tmp_path / "ignored").exists()  # --out wins over the runs_dir given with --set before it
    assert "v_num=0" in captured.out and "v_num=on_0" not in captured.out
    assert any("GPU available" in message for message in records)  # the handler sees Lightning's info lines...
    assert not any("Tip" in message for message in records)  # ...but not its adverts
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/epoch_time" in header
    assert (run / "progress.png").stat().st_size > 10_000
