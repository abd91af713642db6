"""Options Lightning and W&B users expect: tags and notes, early stopping (fit's command line and config)."""

from __future__ import annotations

import pytest
from helpers import TINY_UNET, make_dataset

from t7synth import fit
from t7synth.cli import run_main
from t7synth.registry import resolve
from t7synth.training.loggers import build_loggers
from t7synth.training.trainer import early_stopping


def test_tags_and_notes_reach_the_wandb_run(tmp_path):
    args = fit.build_parser().parse_args(["--model", "unet", "--tags", "ablation", "unet", "--notes", "no flips"])
    config = fit.resolve_config(args)
    assert config.wandb.tags == ["ablation", "unet"] and config.wandb.notes == "no flips"
    (_, wandb_logger) = build_loggers(config, tmp_path / "run", "offline")
    assert wandb_logger._wandb_init["tags"] == ["unet", "ablation"]  # the model name once, then the user's
    assert wandb_logger._wandb_init["notes"] == "no flips"


def test_early_stopping_watches_validation_psnr_with_the_patience():
    assert early_stopping(resolve("unet", None, [])) == []
    (callback,) = early_stopping(resolve("unet", None, ["trainer.early_stopping_patience=3"]))
    assert (callback.monitor, callback.mode, callback.patience) == ("val/psnr_brain", "max", 3)
    assert callback._check_on_train_epoch_end is False


def test_early_stopping_without_validation_is_one_line(tmp_path, capfd):
    data = make_dataset(tmp_path / "data")
    table = data / "participants.tsv"
    table.write_text(table.read_text().replace("\tval\n", "\ttrain\n"))
    sets = [x for item in TINY_UNET for x in ("--set", item)]
    status = run_main(
        fit.main,
        [
            "--model",
            "unet",
            "--data",
            str(data),
            "--set",
            f"runs_dir={tmp_path / 'runs'}",
            *sets,
            "--wandb",
            "disabled",
            "--set",
            "data.val_fraction=0",
            "--set",
            "trainer.early_stopping_patience=2",
        ],
    )
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(lines) == 1 and "trainer.early_stopping_patience 2 watches val/psnr_brain" in lines[0]
    assert not any((tmp_path / "runs").rglob("version_*"))


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_patience_below_one_is_refused(value):
    from t7synth.errors import UserError

    with pytest.raises(UserError, match="trainer.early_stopping_patience must be at least 1"):
        resolve("unet", None, [f"trainer.early_stopping_patience={value}"])
