"""Bad inputs to every command: one ``error:`` line, exit 2, no traceback, nothing written.

Each case runs the command in-process (``run_main``, as ``python -m t7synth.<command>``
does) and checks, with :mod:`robust_helpers`, that the folders it would write to are
exactly as before. The fit cases also check that the error comes before Lightning's
start-up banner ("GPU available: ..."), where a user sees it. Cases that need a
trained checkpoint are in ``test_hostile_resume.py``.
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_UNET, make_dataset, make_pair, write_nifti
from robust_helpers import assert_refused, malicious_checkpoint, snapshot

from t7synth import compare, evaluate, fit, predict, prepare, sweep
from t7synth.cli import run_main
from t7synth.data import naming
from t7synth.registry import resolve

BANNER = "GPU available"


def fit_args(data: Path, runs: Path, *extra: str) -> list[str]:
    sets = [x for item in TINY_UNET for x in ("--set", item)]
    wandb = [] if "--wandb" in extra else ["--wandb", "disabled"]
    return ["--model", "unet", "--data", str(data), "--set", f"runs_dir={runs}", *sets, *wandb, *extra]


def run_fit(capfd, data: Path, runs: Path, *extra: str) -> tuple[int, str]:
    before = snapshot(runs)
    status = run_main(fit.main, fit_args(data, runs, *extra))
    captured = capfd.readouterr()
    assert snapshot(runs) == before, "a refused fit wrote to the runs folder"
    assert BANNER not in captured.out + captured.err, "the error came after Lightning's banner"
    return status, captured.err


# -- config values, refused when the config is resolved -----------------------------------
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--max-epochs", "0"], "trainer.max_epochs must be at least 1"),
        (["--set", "data.samples_per_volume=0"], "data.samples_per_volume must be at least 1"),
        (["--set", "data.batch_size=0"], "data.batch_size must be at least 1"),
        (["--set", "data.inference_batch_size=-2"], "data.inference_batch_size must be at least 1"),
        (["--set", "optim.lr=0"], "optim.lr must be a positive number"),
        (["--set", "optim.lr=.nan"], "optim.lr must be a finite number"),
        (["--set", "optim.d_lr=.inf"], "optim.d_lr must be a finite number"),
        (["--set", "data.num_workers=-1"], "data.num_workers must not be negative"),
        (["--set", "optim.step_every=0"], "optim.step_every must be at least 1"),
        (["--precision", "17-mixed"], "trainer.precision must be one of"),
        (["--set", "data.samples_per_volume=8", "--set", "data.queue_length=4"], "must not exceed data.queue_length"),
        (
            ["--set", "data.shape=[16,16,16]", "--set", "geometry.mode=patch", "--set", "geometry.patch=[32,16,16]"],
            "does not fit in the 16x16x16 volume of data.shape",
        ),
        (["--set", "data.shape=[16,16,16]", "--set", "geometry.slices=17"], "does not fit in the 16x16x16 volume"),
        (["--set", "data.percentiles=[1,50,99]"], "data.percentiles must be [low, high]"),
        (["--set", "data.val_fraction=0.5", "--set", "data.test_fraction=0.5"], "must be below 1"),
        (["--set", "data.augment.flip=2"], "data.augment.flip is a probability"),
        (["--set", "seed=-3"], "seed must not be negative"),
    ],
    ids=lambda value: value if isinstance(value, str) else " ".join(value),
)
def test_bad_values_are_refused_when_the_config_is_resolved(dataset, tmp_path, capfd, extra, expected):
    status, err = run_fit(capfd, dataset, tmp_path / "runs", *extra)
    assert_refused(status, err, expected)


def test_precision_names_are_lightnings():
    import typing

    from lightning_fabric.connector import _PRECISION_INPUT_STR

    from t7synth.config import PRECISIONS

    assert set(typing.get_args(PRECISIONS)) == set(typing.get_args(_PRECISION_INPUT_STR))


# -- the data, checked before anything is written ------------------------------------------
def _partial_split(root: Path) -> None:
    table = root / naming.PARTICIPANTS
    lines = table.read_text().splitlines()
    lines[2] = lines[2].rsplit("\t", 1)[0] + "\t"  # sub-002's split emptied
    table.write_text("\n".join(lines) + "\n")


def _unlisted_folder(root: Path) -> None:
    source, target, mask = make_pair(seed=9)
    write_nifti(naming.source_path(root, "sub-099"), source, np.diag([1.5, 1.5, 1.5, 1.0]))
    write_nifti(naming.target_path(root, "sub-099"), target, np.diag([1.5, 1.5, 1.5, 1.0]))


def _other_shape(root: Path) -> None:
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    source, target, mask = make_pair(shape=(22, 24, 18), seed=3)
    for name_of, array in ((naming.source_path, source), (naming.target_path, target), (naming.mask_path, mask)):
        write_nifti(name_of(root, "sub-002"), array, affine)


def _tiny_mask(root: Path) -> None:
    # One brain voxel in a corner: no slab or patch centred in the mask fits the volume.
    mask = np.zeros((20, 24, 18), np.uint8)
    mask[0, 0, 0] = 1
    write_nifti(naming.mask_path(root, "sub-001"), mask, np.diag([1.5, 1.5, 1.5, 1.0]))


def _no_validation_subject(root: Path) -> None:
    table = root / naming.PARTICIPANTS
    table.write_text(table.read_text().replace("\tval\n", "\ttrain\n"))


@pytest.mark.parametrize(
    ("damage", "extra", "expected"),
    [
        (_partial_split, [], "the split column is empty for sub-002"),
        (None, ["--set", "data.batch_size=8"], "an epoch would have no training batch: 2 training subject(s)"),
        (_no_validation_subject, [], "data.val_fraction 0.15 asks for validation, but the split has no validation"),
        (_unlisted_folder, [], "sub-099 in"),
        (_other_shape, [], "set data.shape"),
        (_tiny_mask, [], "training subject sub-001: its brain mask leaves no place"),
        (None, ["--set", "geometry.inplane=[40,40]"], "does not fit in the 20x24x18 volume of training subject"),
        (
            None,
            ["--set", "geometry.mode=patch", "--set", "geometry.patch=[32,12,12]"],
            "does not fit in the 20x24x18 volume",
        ),
        (None, ["--cpus", "3"], "2 training subjects cannot be shared by 3 processes"),
    ],
    ids=[
        "partial-split",
        "no-training-batch",
        "no-validation-subject",
        "unlisted-folder",
        "different-shapes",
        "tiny-mask",
        "slab-too-wide",
        "patch-too-long",
        "more-ranks-than-subjects",
    ],
)
def test_bad_data_is_one_line_before_the_trainer_and_leaves_no_run_folder(tmp_path, capfd, damage, extra, expected):
    data = make_dataset(tmp_path / "data")
    if damage is not None:
        damage(data)
    status, err = run_fit(capfd, data, tmp_path / "runs", "--max-epochs", "1", *extra)
    assert_refused(status, err, expected)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("version_*"))


def test_a_participants_table_with_a_byte_order_mark_is_read(tmp_path):
    from t7synth.data.layout import discover

    data = make_dataset(tmp_path / "data")
    table = data / naming.PARTICIPANTS
    table.write_bytes(b"\xef\xbb\xbf" + table.read_bytes())
    assert [r.split for r in discover(data)] == ["train", "train", "val", "test"]


def test_a_fully_empty_split_column_lets_t7synth_split(tmp_path):
    from t7synth.data.layout import assign_splits, discover

    data = make_dataset(tmp_path / "data", n_subjects=5, splits=False)
    table = data / naming.PARTICIPANTS
    header, *rows = table.read_text().splitlines()
    table.write_text("\n".join([header + "\tsplit", *(row + "\t" for row in rows)]) + "\n")
    splits = assign_splits(discover(data), 0.2, 0.2, 0)
    assert sum(len(v) for v in splits.values()) == 5 and splits["test"]


@pytest.mark.parametrize(
    ("extra", "environment", "expected"),
    [
        (["--wandb", "online"], {"WANDB_API_KEY": ""}, "W&B mode online needs credentials"),
        (["--nodes", "2"], {}, "--nodes 2: nothing starts the other 1 node(s)"),
        (["--gpus", "-1"], {}, "--gpus must be >= 0"),
    ],
    ids=["wandb-online-without-key", "nodes-without-launcher", "negative-gpus"],
)
def test_launch_settings_are_one_line(dataset, tmp_path, capfd, monkeypatch, extra, environment, expected):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials either
    before = snapshot(tmp_path / "runs")
    status = run_main(fit.main, fit_args(dataset, tmp_path / "runs", *extra))
    assert_refused(status, capfd.readouterr().err, expected)
    assert snapshot(tmp_path / "runs") == before


def test_runs_folder_under_a_file_is_one_line(dataset, tmp_path, capfd):
    (tmp_path / "taken").write_text("not a folder")
    status, err = run_fit(capfd, dataset, tmp_path / "taken" / "runs", "--max-epochs", "1")
    assert_refused(status, err, "taken")
    assert (tmp_path / "taken").read_text() == "not a folder"


# -- predict ----------------------------------------------------------------------------
def _untrained_checkpoint(path: Path, channels: int | None = None) -> Path:
    from t7synth.models.unet import UNetModule

    config = resolve("unet", None, TINY_UNET)
    state = UNetModule(config.to_dict()).state_dict()
    stored = config.to_dict()
    if channels is not None:
        stored["model"]["net"]["channels"] = channels
    torch.save({"state_dict": state, "hyper_parameters": {"config": stored}}, path)
    return path


@pytest.mark.parametrize(
    "case",
    [
        "hostile",
        "huge",
        "empty",
        "output-under-a-file",
        "read-only-output",
        "full-disk",
        "bad-age",
        "broken-sidecar",
        "sidecar-age-not-a-number",
        "loose-file-without-age",
    ],
)
def test_predict_refuses_in_one_line(dataset, tmp_path, capsys, monkeypatch, case):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code-ran"
    ckpt = _untrained_checkpoint(tmp_path / "model.ckpt")
    output = tmp_path / "out"
    extra: list[str] = []
    expected = {
        "hostile": "cannot read checkpoint",
        "huge": "does not fit model 'unet'",
        "empty": "the file is empty",
        "output-under-a-file": "is not a folder",
        "read-only-output": "Permission denied",
        "full-disk": "No space left on device",
        "bad-age": "--age -4.0",
        "broken-sidecar": "is not valid JSON",
        "sidecar-age-not-a-number": "age 'old' is not a number of years",
        "loose-file-without-age": "give --age and --sex, or --unconditioned",
    }[case]
    source = naming.source_path(dataset, "sub-001")
    sidecar = source.with_name(naming.nifti_stem(source) + ".json")
    if case == "hostile":
        ckpt = malicious_checkpoint(tmp_path / "hostile.ckpt", marker)
    elif case == "huge":
        ckpt = _untrained_checkpoint(tmp_path / "huge.ckpt", channels=2048)
    elif case == "empty":
        ckpt = tmp_path / "empty.ckpt"
        ckpt.write_bytes(b"")
    elif case == "output-under-a-file":
        (tmp_path / "taken").write_text("x")
        output = tmp_path / "taken" / "out"
    elif case in ("read-only-output", "full-disk"):
        import tempfile

        output.mkdir()  # an existing folder the user cannot write to (or a full disk)

        import t7synth.files

        code, reason = (
            (errno.EACCES, "Permission denied")
            if case == "read-only-output"
            else (errno.ENOSPC, "No space left on device")
        )

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve().is_relative_to(tmp_path.resolve() / "out"):
                raise OSError(code, reason)
            return real(*args, dir=dir, **kwargs)

        real = tempfile.mkstemp
        monkeypatch.setattr(t7synth.files.tempfile, "mkstemp", refuse)
    elif case == "bad-age":
        extra = ["--age", "-4"]
    elif case == "broken-sidecar":
        sidecar.write_text("{not json")
    elif case == "sidecar-age-not-a-number":
        sidecar.write_text('{"Age": "old"}')
    elif case == "loose-file-without-age":
        source = tmp_path / "loose.nii.gz"
        source.write_bytes(naming.source_path(dataset, "sub-001").read_bytes())
    before = snapshot(tmp_path)
    status = run_main(
        predict.main,
        [
            "--ckpt",
            str(ckpt),
            "--input",
            str(source if case != "read-only-output" else dataset),
            "--output",
            str(output),
            *extra,
        ],
    )
    assert_refused(status, capsys.readouterr().err, expected)
    assert not marker.exists()
    assert snapshot(tmp_path) == before


# -- prepare ----------------------------------------------------------------------------
def _raw(tmp_path: Path) -> Path:
    raw = make_dataset(tmp_path / "raw", n_subjects=3)
    return raw


@pytest.mark.parametrize("case", ["out-is-a-file", "partial-split", "unlisted-folder", "read-only-out"])
def test_prepare_refuses_in_one_line(tmp_path, capsys, monkeypatch, case):
    raw = _raw(tmp_path)
    out = tmp_path / "prepared"
    expected = {
        "out-is-a-file": "exists and is not a folder",
        "partial-split": "the split column is empty for sub-002",
        "unlisted-folder": "sub-099 in",
        "read-only-out": "Permission denied",
    }[case]
    if case == "out-is-a-file":
        out.write_text("a file")
    elif case == "partial-split":
        _partial_split(raw)
    elif case == "unlisted-folder":
        _unlisted_folder(raw)
    elif case == "read-only-out":
        import t7synth.files

        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(t7synth.files.tempfile, "mkstemp", refuse)
    before = snapshot(tmp_path)
    status = run_main(prepare.main, ["--raw", str(raw), "--out", str(out), "--no-register", "--no-progress"])
    assert_refused(status, capsys.readouterr().err, expected)
    assert snapshot(tmp_path) == before


# -- evaluate ---------------------------------------------------------------------------
def test_evaluate_output_under_a_file_is_one_line(dataset, tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "sub-004_synth.nii.gz").write_bytes(naming.target_path(dataset, "sub-004").read_bytes())
    (tmp_path / "taken").write_text("x")
    before = snapshot(tmp_path)
    status = run_main(
        evaluate.main,
        ["--pred", str(pred), "--data", str(dataset), "--out", str(tmp_path / "taken" / "eval"), "--no-progress"],
    )
    assert_refused(status, capsys.readouterr().err, "taken")
    assert snapshot(tmp_path) == before


def _segmenter_script(folder: Path, body: str) -> str:
    import sys

    script = folder / "seg.py"
    script.write_text("import sys\n" + body)
    return f"{sys.executable} {script} {{input}} {{output}}"


@pytest.mark.parametrize(
    ("segmenter", "expected"),
    [
        ("seg-tool --i {input}", "needs {output}"),
        ("seg-tool --o {output}", "needs {input}"),
        ("no-such-segmenter --i {input} --o {output}", "command not found: no-such-segmenter"),
        ("seg-tool 'unclosed {input} {output}", "No closing quotation"),
        ("SCRIPT:sys.exit(7)", "failed (exit 7)"),
        ("SCRIPT:pass", "wrote no {output}"),
        ("SCRIPT:open(sys.argv[2], 'w').write('not a label map')", "cannot read the label map"),
    ],
    ids=["no output", "no input", "not installed", "bad quoting", "fails", "writes nothing", "writes garbage"],
)
def test_evaluate_bad_segmenter_is_one_line(dataset, tmp_path, capsys, segmenter, expected):
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "sub-004_synth.nii.gz").write_bytes(naming.target_path(dataset, "sub-004").read_bytes())
    if segmenter.startswith("SCRIPT:"):
        segmenter = _segmenter_script(tmp_path, segmenter.removeprefix("SCRIPT:"))
    out = tmp_path / "eval"
    before = snapshot(pred)
    argv = ["--pred", str(pred), "--data", str(dataset), "--out", str(out), "--no-progress", "--segmenter", segmenter]
    line = assert_refused(run_main(evaluate.main, argv), capsys.readouterr().err, expected)
    assert "--segmenter" in line
    assert snapshot(pred) == before and not (out / "scores.csv").exists()


@pytest.mark.parametrize(
    ("extra", "scale", "expected"),
    [
        (["--pred-scale", "zscore"], 1.0, "--pred-scale"),
        ([], 300.0, "--pred-scale percentile"),
        ([], -1.0, "--pred-scale percentile"),
    ],
    ids=["unknown scale", "scanner intensities", "inverted"],
)
def test_evaluate_prediction_off_scale_is_one_line(dataset, tmp_path, capsys, extra, scale, expected):
    from t7synth.data.volumes import load_volume

    pred = tmp_path / "pred"
    target, _ = load_volume(naming.target_path(dataset, "sub-004"))
    import nibabel as nib

    affine = nib.load(str(naming.target_path(dataset, "sub-004"))).affine
    write_nifti(pred / "sub-004_synth.nii.gz", (target * scale).astype(np.float32), affine)
    out = tmp_path / "eval"
    argv = ["--pred", str(pred), "--data", str(dataset), "--out", str(out), "--no-progress", *extra]
    assert_refused(run_main(evaluate.main, argv), capsys.readouterr().err, expected)
    assert not (out / "scores.csv").exists()


# -- compare ----------------------------------------------------------------------------
SCORES = "model,subject,psnr_brain,ssim_brain,psnr,ssim,mae\n"


def _run(folder: Path, rows: str, config: str = "name: demo\nmodel:\n  name: unet\n") -> Path:
    folder.mkdir(parents=True)
    (folder / "test_scores.csv").write_text(SCORES + rows)
    (folder / "config.yaml").write_text(config)
    return folder


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("model,sub-1,25.0,0.9\n", "line 2: 7 cells expected"),
        ("model,sub-1,25.0,0.9,30,0.95,0.01,extra\n", "line 2: 7 cells expected"),
        ("model,sub-1,nan,0.9,30,0.95,0.01\n", "psnr_brain of sub-1 is not a number: 'nan'"),
        ("model,sub-1,25.0,high,30,0.95,0.01\n", "ssim_brain of sub-1 is not a number"),
        ("identity,sub-1,20.0,0.8,25,0.9,0.02\n", "has no rows of the model"),
    ],
    ids=["short-row", "long-row", "nan", "word", "no-model-row"],
)
def test_compare_refuses_malformed_scores(tmp_path, capsys, rows, expected):
    good = _run(tmp_path / "good", "model,sub-1,25.0,0.9,30,0.95,0.01\n")
    bad = _run(tmp_path / "bad", rows)
    status = run_main(compare.main, [str(good), str(bad), "--out", str(tmp_path / "cmp")])
    assert_refused(status, capsys.readouterr().err, expected)
    assert not (tmp_path / "cmp").exists()


def test_compare_takes_infinite_psnr_and_old_config_formats(tmp_path, capsys):
    perfect = _run(
        tmp_path / "perfect",
        "model,sub-1,inf,1.0,inf,1.0,0.0\nmodel,sub-2,inf,1.0,inf,1.0,0.0\n",
        config="name: old\nmodel: unet\nwandb: offline\n",
    )
    other = _run(tmp_path / "other", "model,sub-1,25.0,0.9,30,0.95,0.01\nmodel,sub-2,26.0,0.9,30,0.95,0.01\n")
    assert run_main(compare.main, [str(perfect), str(other), "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| old/perfect | unet | 2 | **inf ± 0.00**" in table  # a string model section still names the model
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 1000


def test_compare_writes_all_its_outputs_or_none(tmp_path, capsys, monkeypatch):
    from t7synth.evaluation import compare as runs_module

    first = _run(tmp_path / "a", "model,sub-1,25.0,0.9,30,0.95,0.01\n")
    second = _run(tmp_path / "b", "model,sub-1,24.0,0.9,30,0.95,0.01\n")
    out = tmp_path / "cmp"
    assert run_main(compare.main, [str(first), str(second), "--out", str(out)]) == 0
    before = snapshot(out)

    def disk_full(entries, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs_module, "bar_chart", disk_full)
    (first / "test_scores.csv").write_text(SCORES + "model,sub-1,29.0,0.9,30,0.95,0.01\n")
    capsys.readouterr()
    status = run_main(compare.main, [str(first), str(second), "--out", str(out)])
    assert_refused(status, capsys.readouterr().err, "No space left on device")
    assert snapshot(out) == before  # the old comparison.md and .csv were not replaced


# -- sweep ------------------------------------------------------------------------------
PARAMS = "model: unet\nparams:\n  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-3%s}\n"


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (", step: 0", "params.optim.lr.step must be positive"),
        (", step: -1.0e-4", "must be positive"),
        (", step: 1.0", "wider than the range"),
        (", step: abc", "step must be a float"),
    ],
    ids=["zero", "negative", "too-wide", "word"],
)
def test_sweep_step_must_be_positive(tmp_path, capsys, step, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(PARAMS % step)
    status = run_main(sweep.main, [str(path), "--set", f"runs_dir={tmp_path / 'runs'}"])
    assert_refused(status, capsys.readouterr().err, expected, str(path))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind", ["journal-is-a-folder", "sqlite-in-missing-folder", "sqlite-is-a-folder"])
def test_sweep_storage_paths_are_one_line(tmp_path, capsys, kind):
    path = tmp_path / "lr.yaml"
    path.write_text(PARAMS % "")
    folder = tmp_path / "store"
    folder.mkdir()
    storage, expected = {
        "journal-is-a-folder": (str(folder), "is a folder"),
        "sqlite-in-missing-folder": (f"sqlite:///{tmp_path / 'missing' / 'optuna.db'}", "does not exist"),
        "sqlite-is-a-folder": (f"sqlite:///{folder}", "is a folder"),
    }[kind]
    before = snapshot(tmp_path)
    status = run_main(
        sweep.main,
        [str(path), "--set", f"runs_dir={tmp_path / 'runs'}", "--storage", storage, "--set", "trainer.max_epochs=1"],
    )
    assert_refused(status, capsys.readouterr().err, expected)
    assert snapshot(tmp_path) == before


# -- demo -------------------------------------------------------------------------------
def test_regenerating_the_demo_never_deletes_what_it_did_not_write(tmp_path, capsys):
    from t7synth import demo

    out = tmp_path / "demo"
    assert run_main(demo.main, ["--out", str(out), "--subjects", "3", "--voxel-size", "6", "--no-progress"]) == 0
    notes = out / "notes.txt"
    notes.write_text("mine")
    (out / "sub-001" / "anat" / "my_seg.nii.gz").write_text("mine too")
    capsys.readouterr()
    before = snapshot(out)
    status = run_main(demo.main, ["--out", str(out), "--subjects", "4", "--voxel-size", "6", "--no-progress"])
    err = assert_refused(status, capsys.readouterr().err, "files the demo did not write", "notes.txt")
    assert "my_seg.nii.gz" in err
    assert snapshot(out) == before


# -- text encodings and W&B credentials, for the other commands -------------------------
def test_experiment_yaml_with_a_byte_order_mark_is_read_and_latin1_is_one_line(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_bytes(b"\xef\xbb\xbfname: bom\noptim:\n  lr: 0.002\n")
    assert resolve("unet", path).optim.lr == 0.002
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    status = run_main(fit.main, ["--config", str(path), "--summary"])
    assert_refused(status, capsys.readouterr().err, str(path), "is not UTF-8")


def test_online_wandb_without_credentials_is_one_line_in_compare_and_sweep(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    first = _run(tmp_path / "a", "model,sub-1,25.0,0.9,30,0.95,0.01\n")
    status = run_main(compare.main, [str(first), "--out", str(tmp_path / "cmp"), "--wandb", "online"])
    assert_refused(status, capsys.readouterr().err, "W&B mode online needs credentials")
    assert not (tmp_path / "cmp").exists()
    path = tmp_path / "lr.yaml"
    path.write_text(PARAMS % "")
    status = run_main(sweep.main, [str(path), "--set", f"runs_dir={tmp_path / 'runs'}", "--wandb", "online"])
    assert_refused(status, capsys.readouterr().err, "W&B mode online needs credentials")
    assert not (tmp_path / "runs").exists()
