"""``python -m t7synth.compare`` over scored folders: fit runs, evaluate outputs, sweep studies."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import make_dataset

from t7synth import compare, evaluate
from t7synth.cli import run_main
from t7synth.config import Config, save_yaml
from t7synth.evaluation import compare as runs_module
from t7synth.scores import write_rows

BASELINES = {"identity": 20.0, "lut": 22.0}


def _rows(psnr_brain: list[float], ssim_brain: list[float]) -> list[dict]:
    rows = []
    for index, (p, s) in enumerate(zip(psnr_brain, ssim_brain)):
        subject = f"sub-00{index + 1}"
        rows.append(
            {
                "model": "model",
                "subject": subject,
                "psnr": p - 1,
                "ssim": s - 0.01,
                "psnr_brain": p,
                "ssim_brain": s,
                "mae": 0.1 / p,
            }
        )
        for baseline, value in BASELINES.items():
            rows.append(
                {
                    "model": baseline,
                    "subject": subject,
                    "psnr": value - 1,
                    "ssim": 0.7,
                    "psnr_brain": value,
                    "ssim_brain": 0.75,
                    "mae": 0.1 / value,
                }
            )
    return rows


def _write_run(
    folder: Path, name: str, model: str, psnr_brain: list[float], ssim_brain: list[float], curve=None, **keys
) -> Path:
    """A run folder as ``fit`` leaves it: config.yaml, test_scores.csv and, given a
    ``curve`` of validation PSNRs, metrics.csv. ``keys`` are dotted config overrides."""
    config = Config().to_dict()
    config["name"], config["model"]["name"] = name, model
    for key, value in keys.items():
        section, field = key.split("__")
        config[section][field] = value
    save_yaml(config, folder / "config.yaml")
    write_rows(folder / "test_scores.csv", _rows(psnr_brain, ssim_brain))
    if curve:
        with open(folder / "metrics.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                [
                    "epoch",
                    "step",
                    "train/loss",
                    "val/psnr_brain",
                    "val/ssim_brain",
                    "val/identity/psnr_brain",
                    "val/lut/psnr_brain",
                ]
            )
            for epoch, value in enumerate(curve):
                writer.writerow([epoch, epoch * 4, 0.1, "", "", "", ""])
                writer.writerow([epoch, epoch * 4 + 3, "", value, 0.8, 20.0, 22.0])
    return folder


@pytest.fixture
def runs(tmp_path):
    first = _write_run(tmp_path / "runs" / "demo_unet" / "version_0", "demo_unet", "unet", [25.0, 27.0], [0.90, 0.92])
    second = _write_run(tmp_path / "runs" / "demo_vnet" / "version_3", "demo_vnet", "vnet", [24.0, 24.5], [0.93, 0.95])
    return first, second


def _table(markdown: str) -> list[str]:
    """The score table's lines: those before the first blank line."""
    return markdown.strip().split("\n\n")[0].splitlines()


def test_two_runs_side_by_side(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run_main(compare.main, [str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    markdown = (out / "comparison.md").read_text()
    assert markdown.strip() in printed
    lines = _table(markdown)
    assert len(lines) == 2 + 2 + 2  # header, rule, two runs, identity and LUT once
    unet = next(line for line in lines if "demo_unet/version_0" in line)
    vnet = next(line for line in lines if "demo_vnet/version_3" in line)
    assert "**26.00 ± 1.41**" in unet  # best in-brain PSNR is bold
    assert "**0.9400 ± 0.0141**" in vnet  # best in-brain SSIM is the other run's
    assert (
        sum("identity (3T input)" in line for line in lines) == 1
        and sum("intensity LUT" in line for line in lines) == 1
    )
    # The configs differ in the model only; the experiment names are labels, not differences.
    assert "| model.name | unet | vnet |" in markdown
    assert "| name |" not in markdown and "runs_dir" not in markdown

    with open(out / "comparison.csv") as handle:
        rows = list(csv.DictReader(handle))
    by_run = {r["run"]: r for r in rows}
    assert by_run["demo_unet/version_0"]["model"] == "unet" and by_run["demo_vnet/version_3"]["model"] == "vnet"
    assert by_run["demo_unet/version_0"]["path"] == str(runs[0])
    assert "psnr_brain" in by_run["demo_unet/version_0"]["best"].split(";")
    assert "ssim_brain" in by_run["demo_vnet/version_3"]["best"].split(";")
    assert float(by_run["identity (3T input)"]["psnr_brain_mean"]) == pytest.approx(20.0)
    assert float(by_run["demo_unet/version_0"]["psnr_brain_sd"]) == pytest.approx(1.414214, abs=1e-5)
    assert (out / "comparison.png").stat().st_size > 1000
    assert not (out / "curves.png").exists() and "Curves: none" in printed  # neither run has a metrics.csv
    # Paired by subject: vnet minus unet is 24 - 25 and 24.5 - 27.
    assert "- demo_vnet/version_3: -1.75 dB, 95% CI -2.50 to -1.00, Wilcoxon p = 0.50, n = 2" in markdown


def test_identical_runs_differ_by_zero_inside_the_interval(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run_main(compare.main, [str(runs[0]), str(runs[0]), "--out", str(out)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("- demo_unet/version_0 (2)"))
    assert "+0.00 dB, 95% CI +0.00 to +0.00 (contains 0: no clear difference)" in line
    assert "every difference is 0" in line and "n = 2" in line


def test_same_configs_say_so(runs, tmp_path, capsys):
    twin = _write_run(tmp_path / "runs" / "demo_unet" / "version_1", "demo_unet", "unet", [26.0, 26.5], [0.9, 0.9])
    assert run_main(compare.main, [str(runs[0]), str(twin), "--out", str(tmp_path / "cmp")]) == 0
    assert "The runs' configs are the same" in capsys.readouterr().out


def test_run_without_test_scores_is_one_line(runs, tmp_path, capsys):
    unfinished = tmp_path / "runs" / "demo_unet" / "version_1"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text("name: demo_unet\n")
    out = tmp_path / "cmp"
    assert run_main(compare.main, [str(runs[0]), str(unfinished), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(unfinished) in err[0] and "test_scores.csv" in err[0]
    assert not out.exists()


def test_folder_without_scores_names_what_it_expects(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_main(compare.main, [str(tmp_path / "empty"), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert "test_scores.csv" in err and "scores.csv" in err and "trials.csv" in err


# -- every kind of scored folder in one table ----------------------------------------------


def _write_study(root: Path, values: dict[int, float | None], table_rank: bool = True) -> Path:
    """A sweep study folder as ``sweep`` leaves it: trials.csv (rank among complete
    trials) and one fit run folder per trial; ``None`` marks a pruned trial (no test)."""
    complete = sorted((n for n, v in values.items() if v is not None), key=lambda n: -values[n])
    ranks = {n: i + 1 for i, n in enumerate(complete)}
    lines = []
    for number, value in values.items():
        run = root / f"trial-{number:04d}" / "version_0"
        run.mkdir(parents=True)
        if value is not None:
            _write_run(
                run,
                f"trial-{number:04d}",
                "unet",
                [value, value + 1],
                [0.9, 0.91],
                curve=[value - 2, value],
                optim__lr=10.0 ** -(number + 2),
                wandb__group=root.name,
            )
            (run / "trial.json").write_text(json.dumps({"study": root.name, "number": number, "state": "complete"}))
        # As a sweep run with a relative runs_dir writes it: not a path from here.
        lines.append(
            {
                "number": number,
                "state": "complete" if value is not None else "pruned",
                "value": value or "",
                "rank": ranks.get(number, ""),
                "run_dir": f"runs/{root.name}/trial-{number:04d}/version_0",
            }
        )
    with open(root / "trials.csv", "w", newline="") as handle:
        fields = ["number", "state", "value", *(["rank"] if table_rank else []), "run_dir"]
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(lines)
    return root


@pytest.mark.slow
def test_fit_run_evaluate_output_and_study_in_one_table(tmp_path, capsys):
    """A fit run, a real ``evaluate`` output and the two best complete trials of a
    study, in one table (study trials in rank order, the pruned one left out), with
    the config keys that differ between them and their validation curves."""
    import nibabel as nib

    from t7synth.data.layout import discover
    from t7synth.data.preprocess import Preprocessing, preprocess_record

    data = make_dataset(tmp_path / "data")
    pred = tmp_path / "pred"
    pred.mkdir()
    for record in discover(data)[2:]:  # two subjects, the 3T input as the prediction: no model needed
        volumes = preprocess_record(record, Preprocessing())
        nib.save(
            nib.Nifti1Image(volumes["source"][0].numpy(), volumes["affine"].numpy()),
            str(pred / f"{record.subject}_synth.nii.gz"),
        )
    assert run_main(evaluate.main, ["--pred", str(pred), "--data", str(data), "--no-progress"]) == 0
    assert (pred / "evaluation" / "config.yaml").is_file()  # beside scores.csv, in the default --out

    fit_run = _write_run(
        tmp_path / "runs" / "demo_unet" / "version_0",
        "demo_unet",
        "unet",
        [25.0, 27.0],
        [0.9, 0.92],
        curve=[21.0, 24.0],
    )
    study = _write_study(tmp_path / "runs" / "lr_study", {0: 23.0, 1: 26.0, 2: None, 3: 24.0})
    out = tmp_path / "cmp"
    capsys.readouterr()
    status = run_main(
        compare.main, [str(fit_run), str(pred / "evaluation"), str(study), "--trials", "2", "--out", str(out)]
    )
    assert status == 0
    printed = capsys.readouterr().out
    labels = [line.split(" | ")[0].removeprefix("| ") for line in _table(printed)[2:]]
    assert labels == [
        "demo_unet/version_0",
        "pred/evaluation",
        "lr_study/trial-0001",
        "lr_study/trial-0003",
        "identity (3T input)",
        "intensity LUT",
    ]
    evaluate_row = next(line for line in _table(printed) if line.startswith("| pred/evaluation |"))
    assert evaluate_row.startswith("| pred/evaluation | ? | 2 |")  # no --ckpt or --config: the model is unknown

    markdown = (out / "comparison.md").read_text()
    differences = {
        line.split(" | ")[0].removeprefix("| "): line
        for line in markdown.split("## Config differences")[1].splitlines()
        if line.startswith("| ") and not line.startswith("| key")
    }
    assert set(differences) >= {"optim.lr", "data.root"}
    assert "0.001" in differences["optim.lr"] and "0.0001" in differences["optim.lr"]  # trial 1 (1e-3), trial 3 (1e-5)
    assert str(data.resolve()) in differences["data.root"]  # evaluate records the dataset it scored
    assert not any(key.startswith(("wandb.", "name", "runs_dir")) for key in differences)

    with open(out / "comparison.csv") as handle:
        paths = {r["run"]: r["path"] for r in csv.DictReader(handle)}
    assert Path(paths["lr_study/trial-0001"]) == study / "trial-0001" / "version_0"  # found inside the study folder
    assert (out / "curves.png").stat().st_size > 1000  # the fit run and both trials have curves


def test_study_without_complete_trials_is_one_line(tmp_path, capsys):
    study = _write_study(tmp_path / "runs" / "dead", {0: None, 1: None})
    assert run_main(compare.main, [str(study), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no trial of the study is complete" in err[0]


def test_study_table_of_an_older_sweep_asks_for_a_rerun(tmp_path, capsys):
    study = _write_study(tmp_path / "runs" / "old", {0: 23.0}, table_rank=False)
    assert run_main(compare.main, [str(study), "--out", str(tmp_path / "cmp")]) == 2
    assert "run the sweep command again" in capsys.readouterr().err


def test_config_differences_show_keys_one_config_lacks():
    first = runs_module.Run(Path("a"), "a", "unet", [], config={"optim": {"lr": 1e-3}, "data": {"root": None}})
    second = runs_module.Run(
        Path("b"), "b", "unet", [], config={"optim": {"lr": 1e-3}, "data": {"root": None, "shape": [8, 8, 8]}}
    )
    assert runs_module.config_differences([first, second]) == {"data.shape": [runs_module.NOT_SET, [8, 8, 8]]}


# -- W&B ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_wandb_run_links_the_compared_runs(runs, tmp_path, monkeypatch):
    """``--wandb offline``: a ``compare`` run whose config and table name each run's
    folder and W&B run, read back from the offline run's own records."""
    wandb = pytest.importorskip("wandb")
    from wandb_file import offline_run

    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    (runs[0] / "wandb_id.txt").write_text("abc123\n")
    out = tmp_path / "cmp"
    try:
        assert run_main(compare.main, [str(runs[0]), str(runs[1]), "--out", str(out), "--wandb", "offline"]) == 0
    finally:
        wandb.teardown()
    recorded = offline_run(out)
    linked = {entry["label"]: entry for entry in recorded.config["runs"]}
    assert linked["demo_unet/version_0"] == {
        "label": "demo_unet/version_0",
        "path": str(runs[0]),
        "wandb_run": "abc123",
    }
    assert linked["demo_vnet/version_3"]["wandb_run"] == ""
    assert recorded.config["config_differences"]["model.name"] == ['"unet"', '"vnet"']
    table = json.loads(
        next(out.glob("wandb/offline-run-*/files/media/table/comparison/table_*.table.json")).read_text()
    )
    link = table["columns"].index("wandb_link")
    assert table["data"][0][link] == "t7synth/abc123"  # offline: the run's path (entity unknown)
    assert list(out.glob("wandb/offline-run-*/files/media/images/comparison/chart_*.png"))


def test_comparison_chart_says_its_error_bars_are_sds_and_marks_a_cut_axis(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda figure=None: figures.append(figure) or close(figure))
    entries = [
        runs_module.Entry("a", "unet", "run", 2, {"psnr_brain": (24.0, 0.5), "ssim_brain": (0.86, 0.01)}),
        runs_module.Entry("b", "vnet", "run", 2, {"psnr_brain": (23.2, 0.4), "ssim_brain": (0.84, 0.01)}),
        runs_module.Entry(
            "identity (3T input)", "identity", "reference", 2, {"psnr_brain": (20.0, 0.1), "ssim_brain": (0.6, 0.01)}
        ),
    ]
    runs_module.bar_chart(entries, tmp_path / "comparison.png")
    for axis in figures[0].axes:
        assert "error bars: ±1 SD" in axis.get_title()
        notes = [text.get_text() for text in axis.texts]
        assert any(note.startswith("y-axis cut: starts at") for note in notes)  # bars do not start at 0
