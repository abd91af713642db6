"""``python -m t7synth.export`` and model packages: what they hold, that they predict
exactly what their checkpoint predicts, and that reading one never runs its code."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import TINY_UNET, make_dataset, make_pair, write_nifti

from t7synth import evaluate, export, fit, predict, registry
from t7synth.cli import run_main
from t7synth.inference import package
from t7synth.training.checkpoint import checkpoint_config

TINY_GAN = [*TINY_UNET, "model.discriminator.channels=4", "model.discriminator.num_layers=2"]
TINY_VNET = [
    "model.net.channels=[2,4,8,8,8]",
    "geometry.patch=[16,16,16]",
    "geometry.overlap=4",
    "data.inference_batch_size=4",
]
TINY_WATNET = ["model.net.features=16", "geometry.inplane=[16,16]", "data.inference_batch_size=8"]


def write_checkpoint(path: Path, name: str, overrides: list[str], seed: int = 0) -> Path:
    """A checkpoint of ``name`` with random (not initial) weights, a fitted-looking LUT
    and voxel size, in the layout ``fit`` writes (no optimizer state)."""
    config = registry.resolve(name, None, overrides)
    module = registry.get(name)(config.to_dict())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Zero-initialised output heads would make every model the identity.
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.05 * torch.randn(tensor.shape, generator=generator))
        module.lut.copy_(torch.linspace(0, 1, module.lut.numel()) ** 1.2)
        module.voxel_size.fill_(1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": {"config": config.to_dict()},
            "epoch": 3,
            "global_step": 42,
        },
        path,
    )
    return path


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def rewrite(
    source: Path, target: Path, replace: dict[str, bytes] | None = None, extra: list[tuple[str, bytes]] = ()
) -> Path:
    """A copy of a package with members replaced or added; a replaced ``weights.pt``
    gets its SHA-256 into the manifest, so only the content itself can be refused."""
    content = {**members(source), **(replace or {})}
    target.parent.mkdir(parents=True, exist_ok=True)
    if replace and package.WEIGHTS in replace:
        manifest = json.loads(content[package.MANIFEST])
        manifest["weights"]["sha256"] = hashlib.sha256(replace[package.WEIGHTS]).hexdigest()
        content[package.MANIFEST] = json.dumps(manifest).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in [*content.items(), *extra]:
            archive.writestr(name, data)
    return target


@pytest.fixture
def unet_package(tmp_path) -> tuple[Path, Path]:
    """``(checkpoint, package)`` of a tiny U-Net with random weights."""
    ckpt = write_checkpoint(tmp_path / "unet.ckpt", "unet", TINY_UNET)
    out = tmp_path / "unet.zip"
    assert run_main(export.main, [str(ckpt), "--out", str(out)]) == 0
    return ckpt, out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# --- what a package holds ---------------------------------------------------------------


def test_package_holds_weights_config_and_card(unet_package):
    ckpt, out = unet_package
    content = members(out)
    assert set(content) == {package.MANIFEST, package.WEIGHTS, package.CONFIG, package.CARD}
    manifest = json.loads(content[package.MANIFEST])
    assert manifest["format"] == package.FORMAT and manifest["model"] == "unet"
    assert manifest["source"]["epoch"] == 3 and manifest["source"]["global_step"] == 42
    assert manifest["preprocessing"]["voxel_size_mm"] == [1.5, 1.5, 1.5]
    weights = torch.load(io.BytesIO(content[package.WEIGHTS]), weights_only=True)
    stored = torch.load(ckpt, weights_only=True)["state_dict"]
    assert set(weights) == set(stored)  # a U-Net has nothing training-only
    assert all(torch.equal(weights[key], stored[key]) for key in stored)
    assert manifest["weights"]["sha256"] == hashlib.sha256(content[package.WEIGHTS]).hexdigest()
    assert package.package_config(out).to_dict() == checkpoint_config(ckpt).to_dict()
    card = content[package.CARD].decode()
    assert "--model model.zip" in card and "No test scores" in card  # no run folder here


def test_gan_package_leaves_the_discriminator_out(tmp_path):
    ckpt = write_checkpoint(tmp_path / "gan.ckpt", "gan_unet", TINY_GAN)
    out = package.export_package(ckpt, tmp_path / "gan.zip").path
    weights = torch.load(io.BytesIO(members(out)[package.WEIGHTS]), weights_only=True)
    stored = torch.load(ckpt, weights_only=True)["state_dict"]
    assert any(key.startswith("discriminator.") for key in stored)
    assert not any(key.startswith("discriminator.") for key in weights)
    assert {key for key in stored if not key.startswith("discriminator.")} == set(weights)

    from t7synth.training.checkpoint import load_model

    original, loaded = load_model(ckpt), package.load_package(out)
    x, context = torch.rand(2, 3, 20, 18), torch.rand(2, 3, 1)
    with torch.no_grad():
        assert torch.equal(original(x, context), loaded(x, context))
    assert torch.equal(original.lut, loaded.lut) and torch.equal(original.voxel_size, loaded.voxel_size)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("unet", TINY_UNET),
        pytest.param("vnet", TINY_VNET, marks=pytest.mark.slow),
        pytest.param("watnet", TINY_WATNET, marks=pytest.mark.slow),
    ],
    ids=["slab-conditioned", "patch", "slab-all"],
)
def test_torchscript_net_matches_the_model(tmp_path, name, overrides):
    ckpt = write_checkpoint(tmp_path / f"{name}.ckpt", name, overrides)
    result = package.export_package(ckpt, tmp_path / f"{name}.zip", torchscript=True)
    assert result.torchscript and "TorchScript" in result.summary()
    traced = torch.jit.load(io.BytesIO(members(result.path)[package.TORCHSCRIPT]))
    model = package.load_package(result.path)
    # Another input than the trace's examples: a 2.5D net sees whole slices of any size
    # (with sides that are multiples of what the card says).
    inputs = package.example_inputs(model, grow=2)
    manifest = json.loads(members(result.path)[package.MANIFEST])
    multiple = manifest["torchscript"]["side_multiple"]
    assert all(side % multiple == 0 for side in inputs[0].shape[2:])
    card = members(result.path)[package.CARD].decode()
    assert (f"multiples of {multiple}" if name != "vnet" else "patches of exactly [16, 16, 16]") in card
    with torch.no_grad():
        expected = model(*inputs)
        assert expected.abs().max() > 0
        assert torch.allclose(traced(*inputs), expected, atol=1e-5, rtol=0)


def test_trace_that_does_not_reproduce_the_model_is_refused(tmp_path, monkeypatch, capsys):
    ckpt = write_checkpoint(tmp_path / "unet.ckpt", "unet", TINY_UNET)
    monkeypatch.setattr(package, "TORCHSCRIPT_TOLERANCE", -1.0)  # nothing passes
    assert run_main(export.main, [str(ckpt), "--out", str(tmp_path / "m.zip"), "--torchscript"]) == 2
    assert "export without --torchscript" in one_line_error(capsys)
    assert not (tmp_path / "m.zip").exists()


def test_trace_that_only_holds_for_its_example_size_is_refused(tmp_path, monkeypatch, capsys):
    """Odd in-plane sides make the U-Net pad, a branch its trace (at even sides) lacks:
    the second check input must catch it."""
    ckpt = write_checkpoint(tmp_path / "unet.ckpt", "unet", TINY_UNET)
    monkeypatch.setattr(package, "side_multiple", lambda model: 1)  # 48x40, then 49x41
    assert run_main(export.main, [str(ckpt), "--out", str(tmp_path / "m.zip"), "--torchscript"]) == 2
    assert "(3, 3, 49, 41)" in one_line_error(capsys)


def test_weights_that_do_not_fit_the_config_are_one_line(unet_package, tmp_path, capsys):
    import yaml

    config = yaml.safe_load(members(unet_package[1])[package.CONFIG])
    config["model"]["net"]["channels"] = 16  # the weights are of an 8-channel net
    bad = rewrite(unet_package[1], tmp_path / "bad.zip", {package.CONFIG: yaml.safe_dump(config).encode()})
    assert _predict(bad, tmp_path) == 2
    assert "does not fit model 'unet'" in one_line_error(capsys)


def test_card_has_test_scores_only_for_the_tested_checkpoint(tmp_path, capsys):
    run = tmp_path / "runs" / "unet" / "version_0"
    best = write_checkpoint(run / "checkpoints" / "best.ckpt", "unet", TINY_UNET)
    (run / "checkpoints" / "last.ckpt").write_bytes(best.read_bytes())
    with open(run / "test_scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "subject", "psnr", "ssim", "psnr_brain", "ssim_brain", "mae"])
        writer.writerow(["model", "sub-001", 25.0, 0.8, 20.0, 0.7, 0.05])
        writer.writerow(["model", "sub-002", 27.0, 0.9, 22.0, 0.8, 0.04])
        writer.writerow(["identity", "sub-001", 20.0, 0.6, 15.0, 0.5, 0.09])
        writer.writerow(["identity", "sub-002", 20.0, 0.6, 15.0, 0.5, 0.09])

    assert run_main(export.main, [str(run)]) == 0  # a run folder: its best.ckpt, into the run
    assert "test scores in README.md" in capsys.readouterr().out
    content = members(run / "model.zip")
    card = content[package.CARD].decode()
    assert "21.00 ± 1.41" in card and "2 held-out subjects" in card  # psnr_brain mean ± SD
    assert "In-brain PSNR gain over identity (3T input): +6.00 dB" in card
    assert content[package.SCORES] == (run / "test_scores.csv").read_bytes()

    out = tmp_path / "last.zip"
    assert run_main(export.main, [str(run / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 0
    card = members(out)[package.CARD].decode()
    assert "21.00" not in card and "tested checkpoints/best.ckpt, not last.ckpt" in card
    assert package.SCORES not in members(out)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["{tmp}/nowhere"], "nowhere"),
        (["{tmp}/unet.ckpt", "--out", "{tmp}/model.tar"], ".zip"),
        (["{tmp}/runs"], "version_0"),  # the experiment folder, not a run
        (["{tmp}/unet.zip"], "already a model package"),
    ],
    ids=["missing", "not-zip", "experiment-folder", "package"],
)
def test_export_mistakes_are_one_line(unet_package, tmp_path, capsys, argv, named):
    (tmp_path / "runs" / "version_0").mkdir(parents=True)
    capsys.readouterr()
    assert run_main(export.main, [a.format(tmp=tmp_path) for a in argv]) == 2
    assert named in one_line_error(capsys)


def test_dataset_predictions_are_a_bids_derivative_dataset(unet_package, dataset, tmp_path, capsys):
    """``predict`` on a dataset writes OUT/sub-XXX/anat/sub-XXX_desc-synth7T_T1w.nii.gz and
    dataset_description.json; ``evaluate --model`` finds the predictions by subject."""
    pred = tmp_path / "pred"
    argv = [
        "--model",
        str(unet_package[1]),
        "--input",
        str(dataset),
        "--split",
        "test",
        "--output",
        str(pred),
        "--no-progress",
    ]
    assert run_main(predict.main, argv) == 0
    from t7synth.data import naming

    assert sorted(p.relative_to(pred) for p in pred.rglob("*.nii.gz")) == [naming.synthetic_path(Path(), "sub-004")]
    description = json.loads((pred / naming.DATASET_DESCRIPTION).read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "t7synth"
    assert "unet" in description["GeneratedBy"][0]["Description"]
    assert description["SourceDatasets"] == [{"URL": dataset.resolve().as_uri()}]

    capsys.readouterr()
    argv = ["--model", str(unet_package[1]), "--input", str(dataset), "--output", str(dataset), "--no-progress"]
    assert run_main(predict.main, argv) == 2
    assert "is the dataset folder itself" in one_line_error(capsys)
    assert not (dataset / naming.DATASET_DESCRIPTION).exists()

    argv = [
        "--pred",
        str(pred),
        "--data",
        str(dataset),
        "--split",
        "test",
        "--model",
        str(unet_package[1]),
        "--out",
        str(tmp_path / "eval"),
        "--no-progress",
    ]
    assert run_main(evaluate.main, argv) == 0
    with open(tmp_path / "eval" / "subject_scores.csv", newline="") as handle:
        assert [row["subject"] for row in csv.DictReader(handle)] == ["sub-004"]


# --- loading never runs code from the package --------------------------------------------


class _Payload:
    """Unpickling this creates ``marker``: what a hostile weights file would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _predict(model: Path, tmp_path: Path) -> int:
    scan = write_nifti(tmp_path / "scan.nii.gz", make_pair((20, 24, 18))[0], np.diag([1.5, 1.5, 1.5, 1]))
    return run_main(
        predict.main, ["--model", str(model), "--input", str(scan), "--output", str(tmp_path / "out.nii.gz")]
    )


def test_pickled_code_in_the_weights_never_runs(unet_package, tmp_path, capsys):
    marker = tmp_path / "marker"
    buffer = io.BytesIO()
    torch.save({"net.weight": _Payload(marker)}, buffer)
    # The payload is live: a full unpickler runs it.
    torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert marker.exists()
    marker.unlink()

    hostile = rewrite(unet_package[1], tmp_path / "hostile.zip", {package.WEIGHTS: buffer.getvalue()})
    assert _predict(hostile, tmp_path) == 2
    assert "weights.pt was refused" in one_line_error(capsys)
    assert not marker.exists() and not (tmp_path / "out.nii.gz").exists()


def test_yaml_tags_in_the_config_never_run(unet_package, tmp_path, capsys):
    import yaml

    marker = tmp_path / "marker"
    config = f"!!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w').close()\"]\n".encode()
    yaml.unsafe_load(config)  # the payload is live
    assert marker.exists()
    marker.unlink()

    hostile = rewrite(unet_package[1], tmp_path / "hostile.zip", {package.CONFIG: config})
    assert _predict(hostile, tmp_path) == 2
    assert "config.yaml is not plain YAML" in one_line_error(capsys)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "sub/../../evil", "..\\evil", "C:evil"])
def test_unsafe_member_names_are_refused(unet_package, tmp_path, capsys, name):
    hostile = rewrite(unet_package[1], tmp_path / "pkg" / "hostile.zip", extra=[(name, b"x")])
    assert _predict(hostile, tmp_path) == 2
    assert f"unsafe member name {name!r}" in one_line_error(capsys)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "pkg" / "evil").exists()


def test_damaged_or_foreign_packages_are_one_line(unet_package, tmp_path, monkeypatch, capsys):
    ckpt, good = unet_package
    content = members(good)
    tampered = bytearray(content[package.WEIGHTS])
    tampered[-100] ^= 0xFF  # the manifest's SHA-256 no longer matches
    with zipfile.ZipFile(tmp_path / "tampered.zip", "w") as archive:
        for name, data in content.items():
            archive.writestr(name, bytes(tampered) if name == package.WEIGHTS else data)
    manifest = json.loads(content[package.MANIFEST])
    with pytest.warns(UserWarning, match="Duplicate name"):
        twice = rewrite(good, tmp_path / "twice.zip", extra=[(package.CARD, b"again")])
    cases = {
        "SHA-256": tmp_path / "tampered.zip",
        "upgrade t7synth": rewrite(
            good, tmp_path / "newer.zip", {package.MANIFEST: json.dumps({**manifest, "format_version": 99}).encode()}
        ),
        "appears twice": twice,
        "use --ckpt": ckpt,
        "not a zip file": write_nifti(tmp_path / "scan.nii.gz", np.ones((4, 4, 4), np.float32)),
    }
    for needle, path in cases.items():
        assert _predict(path, tmp_path) == 2, needle
        assert needle in one_line_error(capsys)
    # A member that declares more than a package's text members may hold (a zip bomb).
    monkeypatch.setattr(package, "MAX_TEXT_BYTES", 5000)
    bomb = rewrite(good, tmp_path / "bomb.zip", {package.CARD: b"0" * 6000})
    assert _predict(bomb, tmp_path) == 2
    assert "declares 6000 bytes" in one_line_error(capsys)


def test_a_package_passed_as_checkpoint_says_use_model(unet_package, tmp_path, capsys):
    scan = write_nifti(tmp_path / "scan.nii.gz", make_pair((20, 24, 18))[0])
    assert (
        run_main(
            predict.main, ["--ckpt", str(unet_package[1]), "--input", str(scan), "--output", str(tmp_path / "o.nii.gz")]
        )
        == 2
    )
    assert f"--model {unet_package[1]}" in one_line_error(capsys)


# --- a trained run: the done-when of issue 12 -------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(dataset, run)``: one epoch of the tiny U-Net, with Adam state in its checkpoints."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("T7SYNTH_CACHE", str(root / "cache"))
        dataset = make_dataset(root / "data")
        sets = [x for item in TINY_UNET for x in ("--set", item)]
        argv = [
            "--model",
            "unet",
            "--data",
            str(dataset),
            "--set",
            f"runs_dir={root / 'runs'}",
            *sets,
            "--max-epochs",
            "1",
            "--wandb",
            "disabled",
        ]
        assert run_main(fit.main, argv) == 0
    return dataset, root / "runs" / "unet" / "version_0"


@pytest.mark.slow
def test_package_predicts_what_its_checkpoint_predicts(trained, tmp_path, capsys):
    dataset, run = trained
    ckpt = run / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    assert checkpoint["optimizer_states"][0]["state"]  # Adam's moments: the size to beat

    out = tmp_path / "model.zip"
    assert run_main(export.main, [str(run), "--out", str(out)]) == 0
    assert out.stat().st_size < ckpt.stat().st_size / 3
    assert "test scores in README.md" in capsys.readouterr().out

    outputs = {}
    for flag, path in (("--ckpt", ckpt), ("--model", out)):
        folder = tmp_path / flag.strip("-")
        argv = [flag, str(path), "--input", str(dataset), "--split", "test", "--output", str(folder), "--no-progress"]
        assert run_main(predict.main, argv) == 0
        outputs[flag] = {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.rglob("*.nii.gz"))}
    assert list(outputs["--ckpt"]) == list(outputs["--model"]) and outputs["--ckpt"]
    for name, array in outputs["--ckpt"].items():
        assert array.max() > 0
        np.testing.assert_allclose(outputs["--model"][name], array, atol=1e-6, rtol=0)

    # evaluate reads the same settings (split, preprocessing) from the package.
    argv = [
        "--pred",
        str(tmp_path / "model"),
        "--data",
        str(dataset),
        "--split",
        "test",
        "--model",
        str(out),
        "--out",
        str(tmp_path / "eval"),
        "--no-progress",
    ]
    assert run_main(evaluate.main, argv) == 0
    with open(run / "test_scores.csv", newline="") as handle:
        fit_rows = {(r["model"], r["subject"]): float(r["psnr_brain"]) for r in csv.DictReader(handle)}
    with open(tmp_path / "eval" / "subject_scores.csv", newline="") as handle:
        scored = {r["subject"]: float(r["psnr_brain"]) for r in csv.DictReader(handle)}
    assert scored and all(
        value == pytest.approx(fit_rows[("model", subject)], abs=0.05) for subject, value in scored.items()
    )
