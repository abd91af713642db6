"""One way to score a subject: fit's test and ``evaluate`` build their rows through the same function."""

from __future__ import annotations

import types

import pytest
import torch
from helpers import constant_module, make_dataset

from t7synth.config import Config
from t7synth.data import batches
from t7synth.data.intensity_lut import DEFAULT_BINS
from t7synth.evaluation.evaluator import Evaluator
from t7synth.measures import subject
from t7synth.measures.structure import StructureScorer


@pytest.fixture
def scored(tmp_path, monkeypatch):
    """One test subject scored by fit's test step and by evaluate, with the same prediction and LUT."""
    root = make_dataset(tmp_path / "data", n_subjects=4)
    config = Config()
    lut = torch.linspace(0, 1, DEFAULT_BINS) ** 1.5  # not the identity, so the LUT row differs from it
    evaluator = Evaluator(root, config, cache_dir=tmp_path / "cache", lut=lut)
    record = evaluator.splits["test"][0]
    data = evaluator.preprocessed(record)

    module = constant_module(config.to_dict(), value=0.55)
    module.lut.copy_(lut)
    module._trainer = types.SimpleNamespace(is_global_zero=False)  # a module under a trainer, scoring only
    batch = {"subject": [record.subject], **{k: data[k][None] for k in ("source", "target", "mask")}}
    batch.update({key: torch.zeros(1) for key in batches.SUBJECT_KEYS})
    calls = []
    original = subject.subject_rows

    def spy(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr("t7synth.models.base.subject_rows", spy)
    monkeypatch.setattr("t7synth.evaluation.evaluator.subject_rows", spy)
    monkeypatch.setattr(subject, "subject_rows", spy)
    module._score_batch(batch, "test")
    prediction = module.predict_subject(data["source"], {k: 0.0 for k in batches.SUBJECT_KEYS}, data["mask"])
    monkeypatch.setattr(evaluator, "prediction_on_grid", lambda record, path, data: prediction)
    rows = evaluator.score(record, tmp_path / "unused.nii.gz")
    return module._rows, rows, calls, data, prediction, lut


def test_fit_and_evaluate_give_identical_rows_through_one_function(scored):
    fit_rows, evaluate_rows, calls, *_ = scored
    assert len(calls) == 2  # fit's test step and evaluate each called subject_rows once
    assert [r["model"] for r in fit_rows] == ["model", "identity", "lut"]
    assert fit_rows == evaluate_rows  # same keys, same values, bit for bit


def test_the_rows_are_the_measures_of_each_guess(scored):
    fit_rows, _, _, data, prediction, lut = scored
    from t7synth.data.intensity_lut import apply_lut
    from t7synth.measures import metrics

    source, target, mask = data["source"], data["target"], data["mask"]
    structure = StructureScorer(target, mask)
    guesses = {"model": prediction, "identity": source, "lut": apply_lut(lut, source, mask)}
    for row, (kind, guess) in zip(fit_rows, guesses.items()):
        assert row["model"] == kind
        assert row["psnr_brain"] == metrics.volume_scores(guess, target, mask)["psnr_brain"]
        assert row["gmsd"] == structure(guess)["gmsd"]
    assert fit_rows[0]["psnr_brain"] != fit_rows[1]["psnr_brain"] != fit_rows[2]["psnr_brain"]


def test_known_scores_are_reused_not_recomputed():
    target = torch.rand(1, 6, 6, 6)
    mask = torch.ones(1, 6, 6, 6, dtype=torch.uint8)
    rows = subject.subject_rows(
        "sub-001", {"model": target, "identity": None}, target, mask, known={"identity": {"mae": 9.0}}
    )
    assert rows[0]["mae"] == 0.0 and rows[1] == {"model": "identity", "subject": "sub-001", "mae": 9.0}
    extra = subject.subject_rows(
        "sub-001", {"model": target}, target, mask, extra=lambda kind, guess: {"perceptual": 0.5}
    )
    assert extra[0]["perceptual"] == 0.5  # evaluate's opt-in scores join the same row
