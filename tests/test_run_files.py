"""The run folder's files: one module names them, and its readers and writers round-trip."""

from __future__ import annotations

import ast
import re

import pytest
from helpers import REPO

from t7synth import run_files
from t7synth.errors import UserError

PACKAGE = REPO / "t7synth"
#: Every file (and folder) of a run folder that run_files names.
NAMES = (
    run_files.CONFIG_FILE,
    run_files.ENVIRONMENT_FILE,
    run_files.METRICS_FILE,
    run_files.PROGRESS_FILE,
    run_files.TEST_SCORES_FILE,
    run_files.TEST_SPECTRA_FILE,
    run_files.LAST_CHECKPOINT,
    run_files.BEST_CHECKPOINT,
    run_files.WANDB_ID_FILE,
    run_files.TRIAL_FILE,
    run_files.EVALUATE_SCORES_FILE,
    run_files.EVALUATE_SUBJECTS_FILE,
    run_files.STUDY_TABLE_FILE,
)


def _docstrings(tree: ast.AST) -> set[int]:
    """``id``s of the docstring constants (prose may name a file; code may not spell it)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def spelled_run_files(source: str) -> list[str]:
    """The run-folder file names ``source`` spells in a string (docstrings aside)."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            # A whole name: "test_scores.csv" is not also evaluate's "scores.csv".
            hits += [name for name in NAMES if re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", node.value)]
            if node.value in (run_files.CHECKPOINTS_DIR, run_files.SAMPLES_DIR):
                hits.append(node.value)
    return hits


def test_run_folder_file_names_are_spelled_in_run_files_only():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "run_files.py" and path.parent == PACKAGE:
            continue
        hits = spelled_run_files(path.read_text())
        if hits:
            offenders[str(path.relative_to(REPO))] = hits
    assert not offenders


def test_the_spelling_check_sees_code_and_f_strings_but_not_docstrings():
    source = '"""Writes metrics.csv."""\nx = f"{run}/test_scores.csv"\ny = "checkpoints"\n'
    assert sorted(spelled_run_files(source)) == ["checkpoints", "test_scores.csv"]


def test_checkpoint_paths(tmp_path):
    assert run_files.last_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
    assert run_files.best_checkpoint(tmp_path) == tmp_path / "checkpoints" / "best.ckpt"
    assert run_files.run_of_checkpoint(tmp_path / "checkpoints" / "x.ckpt") == tmp_path
    assert run_files.run_of_checkpoint(tmp_path / "elsewhere.ckpt") is None


def test_montage_paths(tmp_path):
    assert run_files.montage_path(tmp_path, "val", "sub-001", 7) == tmp_path / "samples" / "val_epoch007_sub-001.png"
    assert run_files.montage_path(tmp_path, "test", "sub-001", 7) == tmp_path / "samples" / "test_sub-001.png"


def test_config_round_trip_and_absence(tmp_path):
    assert run_files.read_config(tmp_path) is None
    run_files.write_config(tmp_path, {"name": "demo", "model": {"name": "unet"}})
    assert run_files.read_config(tmp_path) == {"name": "demo", "model": {"name": "unet"}}
    (tmp_path / run_files.CONFIG_FILE).write_text("- a list\n")
    with pytest.raises(UserError, match="config.yaml"):
        run_files.read_config(tmp_path)


def test_evaluate_tables_are_not_named_like_a_runs_history():
    assert run_files.EVALUATE_SUBJECTS_FILE != run_files.METRICS_FILE
    assert len(set(NAMES)) == len(NAMES)
