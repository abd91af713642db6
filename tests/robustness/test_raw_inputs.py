"""Bad inputs to ``predict --skull-strip`` and ``predict --bids``: one ``error:`` line,
exit 2, no traceback, nothing written."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_UNET, make_pair, write_nifti
from robust_helpers import assert_refused, snapshot

from t7synth import predict
from t7synth.cli import run_main
from t7synth.registry import resolve


def _checkpoint(path: Path) -> Path:
    from t7synth.models.unet import UNetModule

    config = resolve("unet", None, TINY_UNET)
    torch.save(
        {"state_dict": UNetModule(config.to_dict()).state_dict(), "hyper_parameters": {"config": config.to_dict()}},
        path,
    )
    return path


@pytest.mark.parametrize("case", ["empty-file", "2d", "4d", "extraction-empty"])
def test_skull_strip_refuses_in_one_line(tmp_path, capsys, monkeypatch, case):
    ckpt = _checkpoint(tmp_path / "model.ckpt")
    scan = tmp_path / "in" / "scan.nii.gz"
    expected = {
        "empty-file": "cannot read",
        "2d": "a 3D volume is expected",
        "4d": "a 3D volume is expected",
        "extraction-empty": "brain extraction found no brain in",
    }[case]
    if case == "empty-file":
        scan.parent.mkdir()
        scan.write_bytes(b"")
    elif case == "2d":
        write_nifti(scan, np.random.default_rng(0).random((20, 24)).astype(np.float32))
    elif case == "4d":
        write_nifti(scan, np.random.default_rng(0).random((12, 14, 10, 3)).astype(np.float32))
    else:
        write_nifti(scan, make_pair((16, 18, 14))[0])
        from t7synth.data import skullstrip

        bet = skullstrip.extractor("cpu")
        # deepbet's networks finding nothing: an all-zero probability map.
        monkeypatch.setattr(bet, "run_model", lambda x: np.zeros(x.shape, dtype=np.float32))
        bet.bbox = (slice(0, 16), slice(0, 18), slice(0, 14))
    before = snapshot(tmp_path)
    status = run_main(
        predict.main,
        # Age and sex given: the conditioning refusal would otherwise come first.
        ["--ckpt", str(ckpt), "--input", str(scan), "--output", str(tmp_path / "out.nii.gz"), "--skull-strip"]
        + ["--age", "60", "--sex", "F"],
    )
    assert_refused(status, capsys.readouterr().err, expected, str(scan))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["no-t1w", "unknown-participant", "read-only-derivatives"])
def test_bids_refuses_in_one_line(tmp_path, capsys, monkeypatch, case):
    ckpt = _checkpoint(tmp_path / "model.ckpt")
    raw = tmp_path / "raw"
    (raw / "sub-01" / "anat").mkdir(parents=True)
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "raw", "BIDSVersion": "1.10.0"}))
    write_nifti(raw / "sub-01" / "anat" / "sub-01_T2w.nii.gz", make_pair((16, 18, 14))[0])
    out = tmp_path / "deriv"
    extra: list[str] = []
    expected = {
        "no-t1w": f"no T1w scan in {raw}",
        "unknown-participant": "--participant-label: no sub-07",
        "read-only-derivatives": "Permission denied",
    }[case]
    if case == "unknown-participant":
        extra = ["--participant-label", "07"]
    elif case == "read-only-derivatives":
        import tempfile

        import t7synth.files

        write_nifti(raw / "sub-01" / "anat" / "sub-01_T1w.nii.gz", make_pair((16, 18, 14))[0])
        out.mkdir()

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve().is_relative_to(out.resolve()):
                raise OSError(errno.EACCES, "Permission denied")
            return real(*args, dir=dir, **kwargs)

        real = tempfile.mkstemp
        monkeypatch.setattr(t7synth.files.tempfile, "mkstemp", refuse)
    before = snapshot(tmp_path)
    status = run_main(predict.main, ["--ckpt", str(ckpt), "--bids", str(raw), "--output", str(out), *extra])
    assert_refused(status, capsys.readouterr().err, expected)
    assert snapshot(tmp_path) == before
