"""Age and sex of a conditioned model's scans: found beside the scan or in its dataset, or refused."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import TINY_UNET, make_dataset

from t7synth import predict, registry
from t7synth.cli import run_main
from t7synth.data import naming
from t7synth.errors import UserError
from t7synth.inference import conditioning
from t7synth.inference.jobs import Job


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data")


@pytest.fixture
def conditioned_checkpoint(tmp_path):
    """An untrained tiny conditioned U-Net whose training set's median age is 61."""
    config = registry.resolve("unet", None, [*TINY_UNET, "model.residual=true"], {}).to_dict()
    torch.manual_seed(0)
    module = registry.get("unet")(config)
    assert module.uses_context()
    with torch.no_grad():  # the output convolution starts at zero: give every weight a value
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.1)
    module.train_age.fill_(61.0)
    path = tmp_path / "conditioned.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": config}}, path)
    return path


def test_lookup_reads_the_datasets_participants_and_a_sidecar_first(dataset):
    source = naming.source_path(dataset, "sub-002")  # participants.tsv: age 61, F
    found = conditioning.lookup(source)
    assert (found.age, found.sex) == (61.0, 1.0)
    sidecar = source.with_name(naming.nifti_stem(source) + ".json")
    sidecar.write_text(json.dumps({"PatientAge": "070Y"}))
    found = conditioning.lookup(source)
    assert (found.age, found.sex) == (70.0, 1.0)  # the sidecar's age, the table's sex


def test_resolve_refuses_a_conditioned_scan_without_age_or_sex(tmp_path):
    job = Job(source=tmp_path / "scan.nii.gz", output=tmp_path / "out.nii.gz", age=None, sex=None)
    with pytest.raises(UserError, match="give --age and --sex, or --unconditioned"):
        conditioning.resolve([job], conditioned=True, unconditioned=False, median_age=61.0)
    with pytest.raises(UserError, match="give --sex,"):
        conditioning.resolve([Job(job.source, job.output, age=50.0, sex=None)], True, False, 61.0)
    (filled,), note = conditioning.resolve([job], conditioned=True, unconditioned=True, median_age=61.0)
    assert (filled.age, filled.sex) == (61.0, 0.5)
    assert "median age 61" in note
    (plain,), note = conditioning.resolve([job], conditioned=False, unconditioned=False, median_age=61.0)
    assert (plain.age, plain.sex, note) == (0.0, 0.5, None)


def _predict(checkpoint, source, output, *extra):
    assert (
        run_main(
            predict.main,
            ["--ckpt", str(checkpoint), "--input", str(source), "--output", str(output), "--no-progress", *extra],
        )
        == 0
    )
    return np.asarray(nib.load(str(output)).dataobj)


def test_a_file_in_a_dataset_predicts_as_the_dataset_does(conditioned_checkpoint, dataset, tmp_path, capsys):
    """The subject's age and sex come from participants.tsv: the same volume as predicting
    the dataset's test split (what fit's test scores), and not the one of a wrong age."""
    source, mask = naming.source_path(dataset, "sub-004"), naming.mask_path(dataset, "sub-004")
    single = _predict(conditioned_checkpoint, source, tmp_path / "single.nii.gz", "--mask", str(mask))
    explicit = _predict(
        conditioned_checkpoint, source, tmp_path / "explicit.nii.gz", "--mask", str(mask), "--age", "63", "--sex", "F"
    )
    split = tmp_path / "split"
    assert (
        run_main(
            predict.main,
            [
                "--ckpt",
                str(conditioned_checkpoint),
                "--input",
                str(dataset),
                "--split",
                "test",
                "--output",
                str(split),
                "--no-progress",
            ],
        )
        == 0
    )
    from_dataset = np.asarray(nib.load(str(naming.synthetic_path(split, "sub-004"))).dataobj)
    np.testing.assert_array_equal(single, explicit)
    np.testing.assert_array_equal(single, from_dataset)
    wrong = _predict(
        conditioned_checkpoint, source, tmp_path / "wrong.nii.gz", "--mask", str(mask), "--age", "0", "--sex", "M"
    )
    assert np.abs(wrong - single).max() > 0  # the tokens matter, so finding them matters


def test_a_loose_file_is_refused_or_uses_the_median_when_asked(conditioned_checkpoint, dataset, tmp_path, capsys):
    loose = tmp_path / "loose" / "scan.nii.gz"
    loose.parent.mkdir()
    loose.write_bytes(naming.source_path(dataset, "sub-004").read_bytes())
    status = run_main(
        predict.main,
        ["--ckpt", str(conditioned_checkpoint), "--input", str(loose), "--output", str(tmp_path / "out.nii.gz")],
    )
    err = capsys.readouterr().err
    assert status == 2 and "give --age and --sex" in err
    assert not (tmp_path / "out.nii.gz").exists()
    median = _predict(conditioned_checkpoint, loose, tmp_path / "median.nii.gz", "--unconditioned")
    assert "training set's median age 61 and sex 0.5" in capsys.readouterr().err
    assert median.shape == (20, 24, 18)


def test_a_checkpoint_from_before_train_age_loads_and_says_the_age_is_not_recorded(
    conditioned_checkpoint, dataset, tmp_path, capsys
):
    old = torch.load(conditioned_checkpoint, weights_only=True)
    del old["state_dict"]["train_age"]
    torch.save(old, tmp_path / "old.ckpt")
    loose = tmp_path / "scan.nii.gz"
    loose.write_bytes(naming.source_path(dataset, "sub-004").read_bytes())
    _predict(tmp_path / "old.ckpt", loose, tmp_path / "out.nii.gz", "--unconditioned")
    assert "age 0 (this model does not record its training set's ages)" in capsys.readouterr().err


def test_the_model_card_says_which_inputs_the_model_needs():
    from t7synth.inference.export import conditioning_line

    assert "--age YEARS --sex F|M" in conditioning_line({"context_tokens": True, "train_median_age": 61.0})
    assert "median age (61 years)" in conditioning_line({"context_tokens": True, "train_median_age": 61.0})
    assert "not conditioned" in conditioning_line({"context_tokens": False})


def test_predict_help_names_the_conditioning_inputs(capsys):
    with pytest.raises(SystemExit):
        predict.build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--unconditioned" in text and "participants.tsv" in text
