"""``predict`` with several checkpoints (multi-view fusion): the output is the voxel-wise
mean of the single predictions and the SD map beside it their voxel-wise SD."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import make_pair, write_nifti

from t7synth import evaluate, predict
from t7synth.cli import run_main
from t7synth.config import Config
from t7synth.data import naming
from t7synth.errors import UserError
from t7synth.inference.jobs import plan_jobs
from t7synth.models.unet import UNetModule

TINY_NET = {
    "channels": 8,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "attention_levels": [1],
    "norm_groups": 4,
    "context_dim": 1,
}


#: The scan's age and sex: the models are conditioned, and predict never guesses them.
CONDITIONS = ["--age", "60", "--sex", "F"]


def _checkpoint(path, axis: int, seed: int):
    """A tiny residual U-Net slicing along ``axis`` with random weights (the zero-initialised
    output layers would otherwise make it the identity)."""
    config = Config().to_dict()
    config["model"].update(name="unet", net=TINY_NET, residual=True)
    config["geometry"].update(mode="slab", slices=3, axis=axis, target="center")
    torch.manual_seed(seed)
    module = UNetModule(config)
    with torch.no_grad():
        for parameter in module.net.parameters():
            if parameter.ndim > 1:
                parameter.normal_(0, 0.6 / parameter[0].numel() ** 0.5)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": config}}, path)
    return path


def _read(path):
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)


def test_fused_volume_is_the_mean_and_the_sd_map_the_sd(tmp_path):
    ckpts = [_checkpoint(tmp_path / f"axis{axis}.ckpt", axis, seed) for seed, axis in enumerate((0, 2))]
    source, _, _ = make_pair((16, 18, 14), seed=2)
    scan = write_nifti(tmp_path / "scan.nii.gz", source, np.diag([1.2, 1.2, 1.2, 1.0]))
    singles = []
    for index, ckpt in enumerate(ckpts):
        out = tmp_path / f"single{index}.nii.gz"
        assert (
            run_main(
                predict.main,
                ["--ckpt", str(ckpt), "--input", str(scan), "--output", str(out), "--no-progress", *CONDITIONS],
            )
            == 0
        )
        singles.append(_read(out))
    assert np.abs(singles[0] - singles[1]).max() > 0.05  # two views that disagree

    fused = tmp_path / "fused.nii.gz"
    argv = [
        "--ckpt",
        str(ckpts[0]),
        "--ckpt",
        str(ckpts[1]),
        "--input",
        str(scan),
        "--output",
        str(fused),
        "--no-progress",
        *CONDITIONS,
    ]
    assert run_main(predict.main, argv) == 0
    sd_file = tmp_path / "fused_sd.nii.gz"
    assert sorted(p.name for p in tmp_path.glob("fused*")) == ["fused.nii.gz", "fused_sd.nii.gz"]
    np.testing.assert_allclose(_read(fused), np.mean(singles, axis=0), atol=1e-6)
    np.testing.assert_allclose(_read(sd_file), np.std(singles, axis=0), atol=1e-6)
    sd_image = nib.load(str(sd_file))
    np.testing.assert_array_equal(sd_image.affine, nib.load(str(scan)).affine)
    assert sd_image.get_data_dtype() == np.float32


def test_dataset_outputs_are_named_and_evaluate_skips_the_sd_maps(tmp_path, dataset):
    ckpts = [_checkpoint(tmp_path / f"axis{axis}.ckpt", axis, seed) for seed, axis in enumerate((1, 2))]
    pred = tmp_path / "pred"
    argv = [
        "--ckpt",
        str(ckpts[0]),
        "--ckpt",
        str(ckpts[1]),
        "--input",
        str(dataset),
        "--split",
        "test",
        "--output",
        str(pred),
        "--no-progress",
    ]
    assert run_main(predict.main, argv) == 0
    assert sorted(p.name for p in pred.glob("sub-004/anat/*")) == [
        "sub-004_desc-synth7T_T1w.nii.gz",
        "sub-004_desc-synth7Tsd_T1w.nii.gz",
    ]
    out = tmp_path / "eval"
    assert (
        run_main(
            evaluate.main,
            ["--pred", str(pred), "--data", str(dataset), "--split", "test", "--out", str(out), "--no-progress"],
        )
        == 0
    )
    assert (
        len((out / "subject_scores.csv").read_text().splitlines()) == 2
    )  # one subject, the SD map not a second prediction


def test_sd_map_names_and_collisions(tmp_path):
    assert (
        naming.uncertainty_path(tmp_path / "sub-01_desc-synth7T_T1w.nii.gz").name == "sub-01_desc-synth7Tsd_T1w.nii.gz"
    )
    assert naming.uncertainty_path(tmp_path / "scan_synth7T.nii.gz").name == "scan_synth7T_sd.nii.gz"
    assert naming.uncertainty_path(tmp_path / "out.nii").name == "out_sd.nii"
    scan = write_nifti(tmp_path / "scan_sd.nii.gz", make_pair((8, 8, 8))[0])
    plan_jobs(scan, tmp_path / "scan.nii.gz")  # one model: no SD map, no collision
    with pytest.raises(UserError, match="would overwrite an input"):
        plan_jobs(scan, tmp_path / "scan.nii.gz", uncertainty=True)


def test_models_that_split_differently_cannot_fuse_a_split(tmp_path, dataset, capsys):
    first = _checkpoint(tmp_path / "a.ckpt", 1, 0)
    config = torch.load(first, weights_only=True)
    config["hyper_parameters"]["config"]["data"]["split_seed"] = 7
    torch.save(config, tmp_path / "b.ckpt")
    argv = [
        "--ckpt",
        str(first),
        "--ckpt",
        str(tmp_path / "b.ckpt"),
        "--input",
        str(dataset),
        "--split",
        "test",
        "--output",
        str(tmp_path / "p"),
    ]
    assert run_main(predict.main, argv) == 2
    assert "split the dataset differently" in capsys.readouterr().err
