"""Console scripts: every ``[project.scripts]`` entry exists and errors like ``python -m``."""

from __future__ import annotations

import importlib
import sys

import pytest
from conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PYPROJECT = REPO / "pyproject.toml"
SCRIPTS = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_target_exists(name):
    module, _, attribute = SCRIPTS[name].partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))


def test_console_script_user_error_is_one_line(monkeypatch, capsys):
    from t7synth import fit

    monkeypatch.setattr(sys, "argv", ["t7synth-fit", "--model", "unet", "--set", "optim.learning_rate=1", "--summary"])
    with pytest.raises(SystemExit) as exit_info:
        fit.console()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "optim.learning_rate" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("fit", ["--gpus", "two"]),
        ("sweep", ["sweeps/demo_unet.yaml", "--n-trials", "many"]),
        ("demo", ["--subjects", "ten"]),
        ("prepare", []),
        ("predict", []),
        ("evaluate", ["--bogus"]),
        ("compare", []),
    ],
)
def test_bad_arguments_are_one_line(command, argv, capsys):
    from t7synth.cli import run_main

    module = importlib.import_module(f"t7synth.{command}")
    assert run_main(module.main, argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: python -m t7synth.{command}:")
    assert "usage:" not in captured.err
