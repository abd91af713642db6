"""``python -m t7synth.predict``: identity networks must give back their (normalised)
input on the input's own grid, whatever its orientation, obliquity or voxel size."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import make_pair, write_nifti
from torch import nn

from t7synth import predict, registry
from t7synth.cli import run_main
from t7synth.config import Config
from t7synth.data.preprocess import normalise
from t7synth.models.base import SynthesisModule


class _CentreSlice(nn.Module):
    """2.5D identity: the centre channel of the k-slice window."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        middle = x.shape[1] // 2
        return x[:, middle : middle + 1]


class IdentityModule(SynthesisModule):
    """A registered-like model whose net copies its input: centre slice or patch."""

    def build_net(self) -> nn.Module:
        return _CentreSlice() if self.geometry.mode == "slab" else nn.Identity()


@pytest.fixture
def identity_checkpoint(tmp_path, monkeypatch):
    """``make(mode, voxel_size=None, precision=None, shape=None, normalisation="clip")``
    writes a checkpoint of the identity model with those training settings."""
    monkeypatch.setitem(registry.MODELS, "identity", f"{__name__}:IdentityModule")

    def make(mode: str, voxel_size=None, precision=None, shape=None, normalisation="clip"):
        config = Config().to_dict()
        config["model"]["name"] = "identity"
        config["trainer"]["precision"] = precision
        config["data"]["shape"] = shape
        config["data"]["normalisation"] = normalisation
        if mode == "patch":
            config["geometry"].update(mode="patch", patch=[8, 8, 8], overlap=4)
        else:
            config["geometry"].update(mode="slab", slices=3, axis=1, target="center")
        module = IdentityModule(config)
        if voxel_size is not None:
            module.voxel_size.copy_(torch.tensor(voxel_size))
        path = tmp_path / f"identity-{mode}.ckpt"
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": config}}, path)
        return path

    return make


def _rotation(degrees: float) -> np.ndarray:
    a, b = np.deg2rad(degrees), np.deg2rad(degrees / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


AFFINES = {
    "LPS": np.array([[-1.2, 0, 0, 30.0], [0, -1.2, 0, 20.0], [0, 0, 1.2, -10.0], [0, 0, 0, 1]]),
    "oblique": np.vstack([np.hstack([_rotation(20) * 1.3, [[5.0], [-7.0], [3.0]]]), [0, 0, 0, 1]]),
    "anisotropic": np.array([[0, 0, 2.0, 1.0], [-1.0, 0, 0, 2.0], [0, 1.0, 0, 3.0], [0, 0, 0, 1]]),  # PLS-like axes too
}


def _expected(source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``normalise`` of the input on its own grid: what an identity net must give back."""
    return normalise(torch.from_numpy(source[None]), torch.from_numpy(mask[None].astype(np.uint8)))[0].numpy()


@pytest.mark.parametrize("mode", ["slab", "patch"])
@pytest.mark.parametrize("name", sorted(AFFINES))
def test_identity_reproduces_input_on_its_grid(identity_checkpoint, tmp_path, mode, name):
    source, _, mask = make_pair((14, 16, 12), seed=3)
    affine = AFFINES[name]
    scan = write_nifti(tmp_path / "scan.nii.gz", source, affine)
    # Anisotropic input, isotropic model: predict resamples there and back (ratio 2).
    voxel = (1.0, 1.0, 1.0) if name == "anisotropic" else None
    out = tmp_path / "out" / "synth.nii.gz"
    assert (
        run_main(
            predict.main,
            [
                "--ckpt",
                str(identity_checkpoint(mode, voxel)),
                "--input",
                str(scan),
                "--output",
                str(out),
                "--no-progress",
            ],
        )
        == 0
    )
    image = nib.load(str(out))
    assert image.get_data_dtype() == np.float32
    np.testing.assert_array_equal(image.affine, nib.load(str(scan)).affine)
    data = np.asarray(image.dataobj)
    assert data.shape == source.shape
    np.testing.assert_allclose(data, _expected(source, source > 0), atol=1e-5)
    assert not list(out.parent.glob(".*"))  # no temporary left behind


@pytest.mark.parametrize("mode", ["slab", "patch"])
def test_training_shape_is_cropped_padded_and_undone(identity_checkpoint, tmp_path, mode):
    """A model trained on a fixed shape sees that shape (crop one axis, pad another),
    and the prediction comes back on the input grid; bf16 autocast leaves copies exact."""
    source, _, _ = make_pair((14, 16, 12), seed=4)
    scan = write_nifti(tmp_path / "scan.nii.gz", source, AFFINES["LPS"])
    out = tmp_path / "synth.nii.gz"
    ckpt = identity_checkpoint(mode, precision="bf16-mixed", shape=[12, 20, 11])
    assert (
        run_main(predict.main, ["--ckpt", str(ckpt), "--input", str(scan), "--output", str(out), "--batch-size", "3"])
        == 0
    )
    np.testing.assert_allclose(np.asarray(nib.load(str(out)).dataobj), _expected(source, source > 0), atol=1e-5)


def test_mask_file_zeroes_outside_and_drives_normalisation(identity_checkpoint, tmp_path):
    source, _, mask = make_pair((14, 16, 12), seed=1)
    source = source + 0.05  # a background that is not 0: only the mask says where the brain is
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    scan = write_nifti(tmp_path / "scan.nii", source, affine)
    mask_file = write_nifti(tmp_path / "mask.nii.gz", mask, affine)
    out = tmp_path / "synth.nii.gz"
    argv = [
        "--ckpt",
        str(identity_checkpoint("slab")),
        "--input",
        str(scan),
        "--mask",
        str(mask_file),
        "--output",
        str(out),
        "--no-progress",
    ]
    assert run_main(predict.main, argv) == 0
    data = np.asarray(nib.load(str(out)).dataobj)
    np.testing.assert_allclose(data, _expected(source, mask > 0), atol=1e-5)
    assert (data[mask == 0] == 0).all()


def test_input_is_normalised_as_the_checkpoint_was_trained(identity_checkpoint, tmp_path):
    """A model trained with ``data.normalisation: authors`` gets its input scaled that
    way (percentiles of the brain's positive voxels, unclipped); the output is written
    on the [0, 1] scale, zero outside the brain."""
    source, _, mask = make_pair((14, 16, 12), seed=2)
    box = np.zeros_like(mask)
    box[1:-1, 1:-1, 1:-1] = 1  # a mask wider than the brain: background voxels inside it
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    scan = write_nifti(tmp_path / "scan.nii.gz", source, affine)
    mask_file = write_nifti(tmp_path / "mask.nii.gz", box, affine)
    out = tmp_path / "synth.nii.gz"
    argv = [
        "--ckpt",
        str(identity_checkpoint("slab", normalisation="authors")),
        "--input",
        str(scan),
        "--mask",
        str(mask_file),
        "--output",
        str(out),
        "--no-progress",
    ]
    assert run_main(predict.main, argv) == 0
    data = np.asarray(nib.load(str(out)).dataobj)
    authors = normalise(torch.from_numpy(source[None]), torch.from_numpy(box[None]), mode="authors")[0].numpy()
    np.testing.assert_allclose(data, np.clip(authors, 0, 1) * box, atol=1e-5)
    assert np.abs(data - _expected(source, box > 0)).max() > 0.05  # not what clip would give


def test_folder_with_a_corrupt_file(identity_checkpoint, tmp_path, capsys):
    folder = tmp_path / "scans"
    for seed in range(2):
        write_nifti(folder / f"sub-00{seed + 1}_T1w.nii.gz", make_pair((10, 12, 10), seed=seed)[0], np.eye(4))
    corrupt = folder / "sub-003_T1w.nii.gz"
    corrupt.write_bytes((folder / "sub-001_T1w.nii.gz").read_bytes()[:200])  # truncated gzip
    out = tmp_path / "out"
    status = run_main(
        predict.main,
        ["--ckpt", str(identity_checkpoint("slab")), "--input", str(folder), "--output", str(out), "--no-progress"],
    )
    assert status != 0
    assert sorted(p.name for p in out.iterdir()) == [
        "qc.tsv",
        "sub-001_T1w_synth7T.nii.gz",
        "sub-002_T1w_synth7T.nii.gz",
    ]
    err = capsys.readouterr().err.splitlines()
    naming = [line for line in err if str(corrupt) in line]
    assert len(naming) == 1 and naming[0].startswith("error: cannot read")
    # The precision the model runs in here, said once before the volumes.
    assert [line for line in err if line.startswith("precision: ")] == [err[0]]


def test_bad_checkpoint_is_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    scan = write_nifti(tmp_path / "scan.nii.gz", make_pair((8, 8, 8))[0])
    out = tmp_path / "out" / "synth.nii.gz"
    for ckpt in (bad, tmp_path / "missing.ckpt"):
        assert run_main(predict.main, ["--ckpt", str(ckpt), "--input", str(scan), "--output", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(ckpt) in err[0]
    assert not out.parent.exists()


def test_missing_input_is_one_line(identity_checkpoint, tmp_path, capsys):
    argv = [
        "--ckpt",
        str(identity_checkpoint("slab")),
        "--input",
        str(tmp_path / "nope.nii.gz"),
        "--output",
        str(tmp_path / "o.nii.gz"),
    ]
    assert run_main(predict.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input not found" in err[0]
    assert not (tmp_path / "o.nii.gz").exists()


def test_checkpoint_with_pickled_code_is_refused(tmp_path, capsys):
    """weights_only=True: a checkpoint holding an arbitrary object never runs it."""
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"config": {}}, "payload": _Payload()}, path)
    scan = write_nifti(tmp_path / "scan.nii.gz", make_pair((8, 8, 8))[0])
    assert (
        run_main(predict.main, ["--ckpt", str(path), "--input", str(scan), "--output", str(tmp_path / "o.nii.gz")]) == 2
    )
    assert "cannot read checkpoint" in capsys.readouterr().err


class _Payload:
    pass


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["slab", "patch"])
def test_identity_on_gpu(identity_checkpoint, tmp_path, mode):
    source, _, _ = make_pair((14, 16, 12), seed=5)
    scan = write_nifti(tmp_path / "scan.nii.gz", source, AFFINES["LPS"])
    out = tmp_path / "synth.nii.gz"
    argv = [
        "--ckpt",
        str(identity_checkpoint(mode)),
        "--input",
        str(scan),
        "--output",
        str(out),
        "--gpus",
        "1",
        "--batch-size",
        "4",
    ]
    assert run_main(predict.main, argv) == 0
    np.testing.assert_allclose(np.asarray(nib.load(str(out)).dataobj), _expected(source, source > 0), atol=1e-5)


def test_plan_refuses_unsafe_or_contradictory_requests(tmp_path, dataset):
    from t7synth.errors import UserError
    from t7synth.inference.jobs import plan_jobs

    scan = write_nifti(tmp_path / "scans" / "a.nii.gz", make_pair((8, 8, 8))[0])
    with pytest.raises(UserError, match="overwrite an input"):
        plan_jobs(scan, scan)
    with pytest.raises(UserError, match="--age and --sex"):
        plan_jobs(scan.parent, tmp_path / "out", age=60.0)
    with pytest.raises(UserError, match="--split needs a dataset"):
        plan_jobs(scan.parent, tmp_path / "out", split="test", config=Config())
    jobs = plan_jobs(dataset, tmp_path / "out", split="test", config=Config())
    assert [(j.output.name, j.age, j.sex, j.mask is not None) for j in jobs] == [
        ("sub-004_desc-synth7T_T1w.nii.gz", 63.0, 1.0, True)
    ]


def test_split_of_an_external_test_set(identity_checkpoint, tmp_path):
    # A dataset whose subjects are all "test" (an external site): no training subjects needed.
    from helpers import make_dataset

    root = make_dataset(tmp_path / "external", n_subjects=2)
    table = root / "participants.tsv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0]] + [line.rsplit("\t", 1)[0] + "\ttest" for line in lines[1:]]) + "\n")
    out = tmp_path / "synth"
    argv = [
        "--ckpt",
        str(identity_checkpoint("slab")),
        "--input",
        str(root),
        "--split",
        "test",
        "--output",
        str(out),
        "--no-progress",
    ]
    assert run_main(predict.main, argv) == 0
    assert sorted(p.name for p in out.rglob("*_desc-synth7T_T1w.nii.gz")) == [
        "sub-001_desc-synth7T_T1w.nii.gz",
        "sub-002_desc-synth7T_T1w.nii.gz",
    ]


def test_qc_table_holds_the_outputs_and_inputs_no_reference_quality(identity_checkpoint, tmp_path):
    """MRIQC's CNR, CJV and SNR in qc.tsv: an identity model's output is its normalised
    input, so both sets of columns equal the measure called on that volume directly."""
    import csv

    from t7synth.measures.quality import NAMES, no_reference_quality

    source, _, mask = make_pair((20, 22, 18), seed=3)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    scan = write_nifti(tmp_path / "scan.nii.gz", source, affine)
    mask_file = write_nifti(tmp_path / "mask.nii.gz", mask, affine)
    out = tmp_path / "synth.nii.gz"
    argv = ["--ckpt", str(identity_checkpoint("slab")), "--input", str(scan), "--mask", str(mask_file)]
    assert run_main(predict.main, [*argv, "--output", str(out), "--no-progress"]) == 0
    with open(tmp_path / "qc.tsv", newline="") as handle:
        (row,) = list(csv.DictReader(handle, delimiter="\t"))
    expected = no_reference_quality(_expected(source, mask > 0), mask > 0)
    for name in NAMES:
        assert float(row[name]) == pytest.approx(expected[name], rel=1e-3)
        assert float(row[f"input_{name}"]) == pytest.approx(expected[name], rel=1e-3)
    assert float(row["cnr"]) > 0
