"""The callbacks that hold a run's side effects (t7synth.training.callbacks): what a
validation or test step scored is drawn and written by them, on rank 0 only."""

from __future__ import annotations

import types

import torch

from t7synth.run_files import TEST_SCORES_FILE, montage_path
from t7synth.scores import read_rows
from t7synth.training.callbacks import Montages, TestScores


def _trainer(tmp_path, rank_zero=True):
    return types.SimpleNamespace(is_global_zero=rank_zero, loggers=[], default_root_dir=tmp_path)


def _module(rows=()):
    config = types.SimpleNamespace(model=types.SimpleNamespace(name="unet"))
    return types.SimpleNamespace(
        current_epoch=3, scored_weights=lambda: "final weights (epoch 3)", test_rows=list(rows), config=config
    )


def _scored(subject="sub-001"):
    generator = torch.Generator().manual_seed(0)
    volumes = {k: torch.rand(8, 10, 6, generator=generator) for k in ("source", "prediction", "target")}
    return {**volumes, "mask": torch.ones(8, 10, 6), "subject": subject, "row": {"psnr_brain": 20.0, "ssim_brain": 0.5}}


def test_validation_draws_the_first_subject_of_each_epoch_only(tmp_path):
    montages, trainer, module = Montages(), _trainer(tmp_path), _module()
    montages.on_validation_batch_end(trainer, module, _scored("sub-002"), None, 1)
    assert not montage_path(tmp_path, "val", "sub-002", 3).exists()
    montages.on_validation_batch_end(trainer, module, _scored("sub-001"), None, 0)
    assert montage_path(tmp_path, "val", "sub-001", 3).is_file()


def test_test_draws_every_subject_on_rank_zero_only(tmp_path):
    montages, module = Montages(), _module()
    montages.on_test_batch_end(_trainer(tmp_path, rank_zero=False), module, _scored("sub-001"), None, 0)
    assert not montage_path(tmp_path, "test", "sub-001", 3).exists()
    for index, subject in enumerate(("sub-001", "sub-002")):
        montages.on_test_batch_end(_trainer(tmp_path), module, _scored(subject), None, index)
        assert montage_path(tmp_path, "test", subject, 3).is_file()


def test_test_scores_are_written_by_rank_zero_after_the_test(tmp_path):
    scores = {"psnr": 20.0, "ssim": 0.7, "mae": 0.1, "ssim_brain": 0.75}
    rows = [
        {"model": "model", "subject": "sub-001", **scores, "psnr_brain": 21.5},
        {"model": "identity", "subject": "sub-001", **scores, "psnr_brain": 18.25},
    ]
    TestScores().on_test_end(_trainer(tmp_path, rank_zero=False), _module(rows))
    assert not (tmp_path / TEST_SCORES_FILE).exists()
    TestScores().on_test_end(_trainer(tmp_path), _module(rows))
    written = read_rows(tmp_path / TEST_SCORES_FILE)
    assert [(r["model"], float(r["psnr_brain"])) for r in written] == [("model", 21.5), ("identity", 18.25)]
