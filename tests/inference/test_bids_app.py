"""``predict --bids``: every T1w of a raw BIDS dataset (with or without sessions) in,
exactly the expected BIDS derivative files out, found by pybids by entity; a rerun
skips complete outputs; a BIDS validator passes where one is installed."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from helpers import TINY_UNET, make_pair, write_nifti

from t7synth import predict, registry
from t7synth.cli import run_main
from t7synth.data import naming

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def tiny_checkpoint(path, seed: int = 0):
    """A tiny U-Net with random weights (no training record: nothing is extracted)."""
    torch.manual_seed(seed)
    config = registry.resolve("unet", None, TINY_UNET)
    module = registry.get("unet")(config.to_dict())
    with torch.no_grad():  # zero-initialised output heads would make every seed alike
        for parameter in module.net.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": config.to_dict()}}, path)
    return str(path)


def raw_dataset(root, sessions: bool):
    """sub-01 and sub-02, one T1w each (per session ``1`` and ``2`` with sessions), plus a
    derivatives folder holding a T1w that must be ignored."""
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "raw", "BIDSVersion": "1.10.0"}))
    for index, subject in enumerate(("sub-01", "sub-02")):
        for session in ("ses-1", "ses-2") if sessions else (None,):
            folder = root / subject / (session or "") / "anat"
            name = "_".join(p for p in (subject, session) if p) + "_T1w.nii.gz"
            write_nifti(folder / name, make_pair((16, 18, 14), seed=index)[0], AFFINE)
    write_nifti(root / "derivatives" / "other" / "sub-01" / "anat" / "sub-01_T1w.nii.gz", np.ones((4, 4, 4)), AFFINE)
    return root


def expected_files(sessions, fused: bool, participants=("01", "02"), session_labels=("1", "2")):
    files = {"dataset_description.json", naming.QC_TABLE, naming.BIDSIGNORE}
    for label in participants:
        for session in session_labels if sessions else (None,):
            folder = f"sub-{label}/" + (f"ses-{session}/" if session else "") + "anat/"
            stem = f"sub-{label}" + (f"_ses-{session}" if session else "")
            files |= {
                f"{folder}{stem}_desc-synth7T_T1w.nii.gz",
                f"{folder}{stem}_desc-synth7T_T1w.json",
                f"{folder}{stem}_desc-brain_mask.nii.gz",
            }
            if fused:
                files.add(f"{folder}{stem}_desc-synth7Tsd_T1w.nii.gz")
    return files


def written(folder):
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("sessions", [False, True], ids=["no-sessions", "sessions"])
def test_bids_derivatives_are_exactly_the_expected_files(tmp_path, sessions, capsys):
    raw = raw_dataset(tmp_path / "raw", sessions)
    out = tmp_path / "deriv"
    ckpt = tiny_checkpoint(tmp_path / "model.ckpt")
    assert run_main(predict.main, ["--ckpt", ckpt, "--bids", str(raw), "--output", str(out), "--no-progress"]) == 0
    assert written(out) == expected_files(sessions, fused=False)
    description = json.loads((out / naming.DATASET_DESCRIPTION).read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "t7synth"
    assert description["DatasetLinks"]["raw"] == raw.resolve().as_uri()
    stem = "sub-01_ses-1" if sessions else "sub-01"
    folder = out / "sub-01" / ("ses-1" if sessions else "") / "anat"
    sidecar = json.loads((folder / f"{stem}_desc-synth7T_T1w.json").read_text())
    source = f"sub-01/{'ses-1/' if sessions else ''}anat/{stem}_T1w.nii.gz"
    assert sidecar["Sources"] == [f"bids:raw:{source}"]
    assert sidecar["SkullStripped"] is True  # the inputs are brains already (zero outside)
    from t7synth.inference.bids_app import sha256

    assert sidecar["Models"] == [{"Name": "unet", "File": "model.ckpt", "SHA256": sha256(ckpt)}]
    rows = (out / naming.QC_TABLE).read_text().splitlines()
    assert len(rows) == 1 + (4 if sessions else 2)

    # A rerun skips what is complete and leaves it untouched.
    times = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    capsys.readouterr()
    assert run_main(predict.main, ["--ckpt", ckpt, "--bids", str(raw), "--output", str(out), "--no-progress"]) == 0
    assert "0 of 0 volumes written" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == times
    assert (out / naming.QC_TABLE).read_text().splitlines() == rows


def test_labels_select_and_fusion_adds_the_sd_map(tmp_path):
    raw = raw_dataset(tmp_path / "raw", sessions=True)
    out = tmp_path / "deriv"
    models = ["--ckpt", tiny_checkpoint(tmp_path / "a.ckpt", 0), "--ckpt", tiny_checkpoint(tmp_path / "b.ckpt", 1)]
    argv = [*models, "--bids", str(raw), "--output", str(out), "--participant-label", "sub-02"]
    assert run_main(predict.main, [*argv, "--session-label", "2", "--no-progress"]) == 0
    assert written(out) == expected_files(True, fused=True, participants=("02",), session_labels=("2",))
    header, row = (out / naming.QC_TABLE).read_text().splitlines()
    assert float(dict(zip(header.split("\t"), row.split("\t")))["fused_sd_mean"]) > 0


def test_pybids_finds_the_derivatives_by_entity(tmp_path):
    bids = pytest.importorskip("bids", reason="pybids (the test extra) is not installed")
    raw = raw_dataset(tmp_path / "raw", sessions=True)
    out = tmp_path / "deriv"
    ckpt = tiny_checkpoint(tmp_path / "model.ckpt")
    assert run_main(predict.main, ["--ckpt", ckpt, "--bids", str(raw), "--output", str(out), "--no-progress"]) == 0
    layout = bids.BIDSLayout(str(raw), derivatives=str(out), validate=False)
    found = layout.get(scope="derivatives", desc="synth7T", suffix="T1w", extension=".nii.gz")
    assert sorted((f.entities["subject"], f.entities["session"]) for f in found) == [
        ("01", "1"),
        ("01", "2"),
        ("02", "1"),
        ("02", "2"),
    ]
    masks = layout.get(scope="derivatives", desc="brain", suffix="mask", subject="02", session="1")
    assert [m.filename for m in masks] == ["sub-02_ses-1_desc-brain_mask.nii.gz"]
    assert (
        layout.get(scope="derivatives", desc="synth7T", suffix="T1w", extension=".nii.gz", subject="01")[
            0
        ].get_metadata()["SkullStripped"]
        is True
    )


def _validator() -> list[str] | None:
    """The BIDS validator's command: the schema-based one (``bids-validator-deno``, the
    test extra: the TypeScript validator with the Deno runtime, both from PyPI), else the
    npm ``bids-validator`` (1.x: it knows raw datasets only, so it is not used here)."""
    import sys
    from pathlib import Path

    beside = Path(sys.executable).with_name("bids-validator-deno")
    found = str(beside) if beside.is_file() else shutil.which("bids-validator-deno")
    return [found] if found else None


@pytest.mark.skipif(
    _validator() is None,
    reason="bids-validator-deno (the test extra) is not installed; the npm bids-validator 1.x and the Python "
    "bids-validator 1.x know raw datasets only and reject every derivative file name",
)
def test_bids_validator_passes_on_the_derivatives(tmp_path):
    raw = raw_dataset(tmp_path / "raw", sessions=True)
    out = tmp_path / "deriv"
    ckpt = tiny_checkpoint(tmp_path / "model.ckpt")
    assert run_main(predict.main, ["--ckpt", ckpt, "--bids", str(raw), "--output", str(out), "--no-progress"]) == 0
    # The validator reads its schema from its own files: no network.
    result = subprocess.run(
        [*_validator(), str(out), "--format", "json", "--datasetTypes", "derivative"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(result.stdout)
    errors = [issue for issue in report["issues"]["issues"] if issue.get("severity") == "error"]
    assert not errors, json.dumps(errors[:5])[-3000:]
