"""``qc.tsv``: a model whose training record ``fit``'s data module measured on the demo's
training subjects flags an input with a doubled voxel size and one with inverted
contrast (T2-like), and flags none of the demo's held-out subjects."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import TINY_UNET

from t7synth import predict, registry
from t7synth.cli import run_main
from t7synth.data import naming
from t7synth.data import profile as training
from t7synth.data.datamodule import PairedDataModule
from t7synth.inference import qc


def read_rows(path):
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return header, [dict(zip(header, line.split("\t"))) for line in lines[1:]]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A 3 mm demo dataset (4 training subjects), its data module's training record in
    a checkpoint of a tiny U-Net, and the held-out subjects."""
    from t7synth.data.demo import simulate

    folder = tmp_path_factory.mktemp("qc")
    root = simulate.simulate_dataset(folder / "demo", n_subjects=8, seed=0, voxel_size=3.0, progress=False)
    config = registry.resolve("unet", None, [*TINY_UNET, f"data.root={root}"])
    datamodule = PairedDataModule(config, cache_dir=folder / "cache")
    datamodule.setup("fit")
    module = registry.get("unet")(config.to_dict())  # tiny, untrained: QC needs no skill
    module.voxel_size.copy_(torch.tensor(datamodule.voxel_size))
    module.input_profile.copy_(datamodule.input_profile)
    module.intensity_histogram.copy_(datamodule.intensity_histogram)
    ckpt = folder / "model.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": config.to_dict()}}, ckpt)
    held_out = [r.subject for recs in (datamodule.subjects["val"], datamodule.subjects["test"]) for r in recs]
    return {"root": root, "ckpt": ckpt, "profile": training.as_dict(datamodule.input_profile), "held_out": held_out}


@pytest.mark.slow
def test_fit_records_the_training_inputs(demo):
    profile = demo["profile"]
    assert profile["fitted"] == 1.0 and profile["subjects"] == 4.0
    # The demo's 3T is zero outside its mask: skull-stripped.
    assert profile["skull_stripped"] == training.YES and profile["n4"] == training.UNKNOWN
    assert 800 < profile["brain_volume_min_ml"] <= profile["brain_volume_max_ml"] < 2500
    assert 0 < profile["histogram_distance_limit"] < 0.1


def _predict(demo, source, mask, out, capsys):
    argv = ["--ckpt", str(demo["ckpt"]), "--input", str(source), "--mask", str(mask), "--output", str(out)]
    # A loose file (the demo's, or its resampled copies) has no participants.tsv above it
    # for a conditioned model: its age and sex are given.
    assert run_main(predict.main, [*argv, "--age", "60", "--sex", "F", "--no-progress"]) == 0
    return capsys.readouterr().err


@pytest.mark.slow
def test_held_out_demo_subjects_are_not_flagged(demo, tmp_path, capsys):
    for subject in demo["held_out"]:
        err = _predict(
            demo,
            naming.source_path(demo["root"], subject),
            naming.mask_path(demo["root"], subject),
            tmp_path / f"{subject}.nii.gz",
            capsys,
        )
        assert "warning" not in err, err
    header, rows = read_rows(tmp_path / naming.QC_TABLE)
    assert header[: len(qc.COLUMNS)] == list(qc.COLUMNS) and header[-1] == qc.FLAGS
    assert len(rows) == len(demo["held_out"]) == 4
    assert {row["flags"] for row in rows} == {qc.NO_FLAGS}
    for row in rows:
        assert float(row["histogram_distance"]) <= float(row["histogram_distance_limit"])
        assert row["fused_sd_mean"] == qc.MISSING


@pytest.mark.slow
def test_doubled_voxel_size_and_inverted_contrast_are_flagged(demo, tmp_path, capsys):
    subject = demo["held_out"][-1]
    image = nib.load(str(naming.source_path(demo["root"], subject)))
    mask_image = nib.load(str(naming.mask_path(demo["root"], subject)))
    array, mask = np.asarray(image.dataobj, dtype=np.float32), np.asarray(mask_image.dataobj) > 0
    # Every second voxel: the same brain at twice the voxel size.
    coarse = image.affine.copy()
    coarse[:3, :3] *= 2.0
    cases = {
        "coarse": (array[::2, ::2, ::2], mask[::2, ::2, ::2], coarse),
        "inverted": ((array.max() - array) * mask, mask, image.affine),
    }
    for name, (volume, inside, affine) in cases.items():
        nib.save(nib.Nifti1Image(volume, affine), tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(inside.astype(np.uint8), affine), tmp_path / f"{name}_mask.nii.gz")
        err = _predict(
            demo,
            tmp_path / f"{name}.nii.gz",
            tmp_path / f"{name}_mask.nii.gz",
            tmp_path / "out" / f"{name}_synth7T.nii.gz",
            capsys,
        )
        warnings = [line for line in err.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and f"{name}.nii.gz" in warnings[0], err
    _, rows = read_rows(tmp_path / "out" / naming.QC_TABLE)
    flags = {row["input"].rsplit("/", 1)[-1]: row["flags"].split(",") for row in rows}
    assert "voxel-size" in flags["coarse.nii.gz"] and "intensity-distribution" not in flags["coarse.nii.gz"]
    assert flags["inverted.nii.gz"] == ["intensity-distribution"]


def test_table_keeps_columns_by_name_and_rows_of_other_inputs(tmp_path):
    path = tmp_path / naming.QC_TABLE
    qc.write_table(path, [{"input": "a.nii.gz", "brain_volume_ml": 1500.0, "flags": ""}])
    qc.write_table(path, [{"input": "b.nii.gz", "cnr": 2.5, "flags": "voxel-size"}])
    qc.write_table(path, [{"input": "a.nii.gz", "brain_volume_ml": 1400.0, "flags": "brain-volume"}])
    header, rows = read_rows(path)
    assert header == [*qc.COLUMNS, "cnr", qc.FLAGS]
    assert [(r["input"], r["brain_volume_ml"], r["cnr"], r["flags"]) for r in rows] == [
        ("a.nii.gz", "1400", qc.MISSING, "brain-volume"),
        ("b.nii.gz", qc.MISSING, "2.5", "voxel-size"),
    ]
