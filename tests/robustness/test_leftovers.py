"""What a killed or half-failed command leaves, and results that must not pass silently.

* Hidden temporaries a killed ``predict``, ``prepare`` or ``demo`` left are removed by
  the next run (and only those of processes that have ended).
* A write that fails for lack of space (``RLIMIT_FSIZE`` in a child process, the
  kernel's "File too large", as a full disk fails a write) is one line and leaves no
  output, temporaries included.
* ``prepare`` flags a 7T that is pure noise.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, TINY_UNET, make_dataset, write_nifti
from robust_helpers import assert_refused, dead_pid, snapshot

from t7synth import demo, predict, prepare
from t7synth.cli import run_main
from t7synth.data import naming
from t7synth.files import temporary_prefix
from t7synth.registry import resolve


def _stale(folder: Path, name: str, suffix: str = "", directory: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{temporary_prefix(name, dead_pid())}x1y2z3{suffix}"
    path.mkdir() if directory else path.write_bytes(b"half a file")
    return path


def test_predict_removes_what_a_killed_predict_left(dataset, tmp_path, capsys):
    from t7synth.models.unet import UNetModule

    config = resolve("unet", None, TINY_UNET)
    ckpt = tmp_path / "model.ckpt"
    torch.save(
        {"state_dict": UNetModule(config.to_dict()).state_dict(), "hyper_parameters": {"config": config.to_dict()}},
        ckpt,
    )
    out = tmp_path / "out"
    stale = _stale(out, "sub-001_acq-3T_T1w_synth7T", ".nii.gz")
    live = out / f"{temporary_prefix('other')}abc.nii.gz"  # this process's: still being written
    live.write_bytes(b"")
    source = naming.source_path(dataset, "sub-001")
    assert run_main(predict.main, ["--ckpt", str(ckpt), "--input", str(source), "--output", str(out)]) == 0
    assert not stale.exists() and live.exists()
    assert (out / "sub-001_acq-3T_T1w_synth7T.nii.gz").is_file()


@pytest.fixture
def _one_itk_thread():
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def test_prepare_removes_leftovers_and_flags_a_noise_7t(tmp_path, capsys, _one_itk_thread):
    raw = make_dataset(tmp_path / "raw", n_subjects=2, masks=False)
    noise = np.random.default_rng(0).normal(0.5, 0.2, (20, 24, 18)).astype(np.float32)
    write_nifti(naming.target_path(raw, "sub-002"), noise, np.diag([1.5, 1.5, 1.5, 1.0]))
    out = tmp_path / "prepared"
    (out / "qc").mkdir(parents=True)  # an earlier, killed prepare
    stale_subject = _stale(out, "sub-001", directory=True)
    stale_json = _stale(out / "qc", "sub-001", ".json")
    status = run_main(prepare.main, ["--raw", str(raw), "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert status == 0
    assert not stale_subject.exists() and not stale_json.exists()
    with open(out / "prepare.tsv", newline="") as handle:
        qc = {row["subject"]: row for row in csv.DictReader(handle, delimiter="\t")}
    assert qc["sub-001"]["qc"] == "ok"
    assert "agree poorly" in qc["sub-002"]["qc"] and "look at qc/sub-002.png" in printed
    assert float(qc["sub-002"]["corr_after"]) < 0.5


def test_qc_verdicts():
    from t7synth.data.prepare import qc_verdict

    assert qc_verdict(0.30, 0.92) == "ok"  # a large motion, registered well
    assert qc_verdict(0.85, 0.86) == "ok"  # already aligned
    assert "lowered" in qc_verdict(0.80, 0.70)
    assert "agree poorly" in qc_verdict(0.02, 0.04)  # noise: no gain, low agreement
    assert qc_verdict(0.10, 0.45) == "ok"  # low, but registration clearly helped


def test_demo_removes_the_temporary_folder_of_a_killed_generation(tmp_path, capsys):
    out = tmp_path / "demo"
    stale = _stale(tmp_path, "demo", directory=True)
    (stale / "sub-001").mkdir()
    assert run_main(demo.main, ["--out", str(out), "--subjects", "3", "--voxel-size", "6", "--no-progress"]) == 0
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["demo"]


# -- a full disk, in a child process ---------------------------------------------------
FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    from t7synth.cli import run_main
    from t7synth import {command} as command
    sys.exit(run_main(command.main, sys.argv[1:]))
    """
)


def run_with_file_limit(command: str, args: list[str], limit: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", FULL_DISK.format(command=command, limit=limit), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _scored_run(folder: Path, psnr: float) -> Path:
    folder.mkdir(parents=True)
    rows = "".join(f"model,sub-{i},{psnr + i},0.9,30,0.95,0.01\n" for i in range(3))
    (folder / "test_scores.csv").write_text("model,subject,psnr_brain,ssim_brain,psnr,ssim,mae\n" + rows)
    return folder


def test_compare_on_a_full_disk_writes_nothing(tmp_path):
    first, second = _scored_run(tmp_path / "a", 25.0), _scored_run(tmp_path / "b", 24.0)
    out = tmp_path / "cmp"
    # Room for the table and the CSV (about 1 kB each), not for the chart (about 30 kB).
    result = run_with_file_limit("compare", [str(first), str(second), "--out", str(out)], limit=8_000)
    assert_refused(result.returncode, result.stderr, "cannot write", "File too large")
    assert snapshot(out) == {}


@pytest.mark.slow
def test_fit_on_a_full_disk_is_one_line_and_leaves_no_run_folder(dataset, tmp_path):
    runs = tmp_path / "runs"
    sets = [x for item in TINY_UNET for x in ("--set", item)]
    args = [
        "--model",
        "unet",
        "--data",
        str(dataset),
        "--set",
        f"runs_dir={runs}",
        *sets,
        "--wandb",
        "disabled",
        "--max-epochs",
        "1",
    ]
    result = run_with_file_limit("fit", args, limit=600)
    assert_refused(result.returncode, result.stderr, "cannot write", "File too large")
    assert not runs.exists() or not any(runs.rglob("*"))
