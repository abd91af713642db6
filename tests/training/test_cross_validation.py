"""fit --fold I|all: one run folder per fold, finished folds skipped (t7synth.training.cross_validation)."""

from __future__ import annotations

import csv

import pytest
from helpers import TINY_UNET, make_sited_dataset

from t7synth import fit
from t7synth.cli import run_main
from t7synth.registry import resolve
from t7synth.run_files import TEST_SCORES_FILE
from t7synth.training import cross_validation
from t7synth.training.cross_validation import fit_folds
from t7synth.training.trainer import FitResult


def sets(*items):
    return [x for item in (*TINY_UNET, *items) for x in ("--set", item)]


def test_fold_by_site_holds_out_exactly_one_site(tmp_path, capsys):
    data, runs = make_sited_dataset(tmp_path / "data"), tmp_path / "runs"
    argv = ["--model", "unet", "--data", str(data), *sets(f"runs_dir={runs}", "data.folds=0", "data.fold_by=site")]
    assert run_main(fit.main, [*argv, "--name", "cv", "--fold", "1", "--fast-dev-run", "--wandb", "disabled"]) == 0
    run = runs / "cv" / "fold_1" / "version_0"
    with open(run / "split.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    test = {r["subject"] for r in rows if r["split"] == "test"}
    assert test == {"sub-004", "sub-005", "sub-006"}  # every subject of siteB, and only those
    assert {r["site"] for r in rows if r["split"] != "test"} == {"siteA", "siteC"}
    assert len(rows) == 8
    assert run_main(fit.main, [*argv, "--fold", "3", "--fast-dev-run"]) == 2
    assert "3 folds (0..2)" in capsys.readouterr().err


def test_fold_needs_a_cross_validation(tmp_path, capsys):
    data = make_sited_dataset(tmp_path / "data")
    argv = ["--model", "unet", "--data", str(data), *sets(f"runs_dir={tmp_path / 'runs'}"), "--fold", "0"]
    assert run_main(fit.main, argv) == 2
    assert "data.folds" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_fold_all_skips_finished_folds_and_resumes_a_killed_one(tmp_path, monkeypatch):
    data = make_sited_dataset(tmp_path / "data")
    config = resolve("unet", None, [*TINY_UNET, f"runs_dir={tmp_path / 'runs'}", "data.folds=3", "name=cv"])
    config.data.root = str(data)
    calls = []

    def fake_fit(folded, options, callbacks, init_weights):
        calls.append((folded.name, folded.data.fold, options.resume, folded.wandb.group))
        run = tmp_path / "runs" / folded.name / "version_0"
        if folded.data.fold == 2 and options.resume is None:  # killed mid-training
            (run / "checkpoints").mkdir(parents=True)
            (run / "checkpoints" / "last.ckpt").write_bytes(b"")
            return FitResult(run)
        run.mkdir(parents=True, exist_ok=True)
        (run / TEST_SCORES_FILE).write_text("model,subject\n")
        return FitResult(run)

    monkeypatch.setattr(cross_validation, "fit", fake_fit)
    said = []
    fit_folds(config, "all", say=said.append)
    assert calls == [("cv/fold_0", 0, None, "cv"), ("cv/fold_1", 1, None, "cv"), ("cv/fold_2", 2, None, "cv")]
    calls.clear()
    fit_folds(config, "all", say=said.append)
    assert calls == [("cv/fold_2", 2, "last", "cv")]
    assert len(said) == 2 and "fold 0: finished" in said[0]
    calls.clear()
    fit_folds(config, "all", say=said.append)
    assert calls == []
    fit_folds(config, "1", say=said.append)  # an explicit fold runs again
    assert calls == [("cv/fold_1", 1, None, "cv")]


@pytest.mark.parametrize("fold", ["x", "-1"])
def test_bad_fold_is_one_line(tmp_path, fold):
    from t7synth.errors import UserError

    data = make_sited_dataset(tmp_path / "data")
    config = resolve("unet", None, [*TINY_UNET, "data.folds=2", "name=cv"])
    config.data.root = str(data)
    with pytest.raises(UserError, match="--fold"):
        fit_folds(config, fold)


@pytest.mark.slow
def test_demo_three_fold_cross_validation_end_to_end(tmp_path, capsys):
    """The demo U-Net (tiny) in a 3-fold cross-validation of the embedded demo data, then
    compare: every subject held out once, the pooled row counts them all."""
    from t7synth import compare

    runs = tmp_path / "runs"
    demo = ("data.demo_subjects=6", "data.demo_voxel_size=6", "data.folds=3", "geometry.inplane=null")
    argv = ["--config", "experiments/demo_unet.yaml", *sets(f"runs_dir={runs}", *demo), "--max-epochs", "1"]
    argv = [*argv, "--precision", "32-true", "--name", "cv", "--wandb", "disabled", "--fold", "all"]
    from helpers import REPO

    argv[1] = str(REPO / argv[1])
    assert run_main(fit.main, argv) == 0
    held, pool = [], set()
    for fold in range(3):
        with open(runs / "cv" / f"fold_{fold}" / "version_0" / "split.tsv") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        held += [r["subject"] for r in rows if r["split"] == "test"]
        pool |= {r["subject"] for r in rows}
    # every subject of the folds (the demo's own test subjects stay out) held out exactly once
    assert sorted(held) == sorted(pool) and len(pool) >= 3
    capsys.readouterr()
    assert run_main(fit.main, argv) == 0  # all finished: nothing runs again
    assert capsys.readouterr().out.count("finished in") == 3
    assert not (runs / "cv" / "fold_0" / "version_1").exists()
    assert run_main(compare.main, [str(runs / "cv"), "--out", str(tmp_path / "cmp")]) == 0
    pooled = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| pooled | "))
    assert pooled.split("|")[3].strip() == str(len(pool))
