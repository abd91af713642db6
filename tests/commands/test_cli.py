"""Console scripts: every ``[project.scripts]`` entry exists and errors like ``python -m``."""

from __future__ import annotations

import importlib
import sys

import pytest
from helpers import REPO

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
        ("convert", ["--official"]),
        ("export", []),
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


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_answers_without_importing_torch(name):
    """``--help`` of every command (``predict --help`` among them) imports neither torch
    nor Lightning: it answers at once, also where importing torch takes seconds."""
    import subprocess

    module = SCRIPTS[name].partition(":")[0]
    probe = (
        "import runpy, sys\n"
        f"sys.argv = [{module!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_module({module!r}, run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
        "heavy = sorted(m for m in ('torch', 'pytorch_lightning', 'wandb', 'monai', 'torchio') if m in sys.modules)\n"
        "print('IMPORTED:' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "IMPORTED:"
